"""The wire schema: every body the broker reads or writes, its limits, and how a
body that breaks them becomes a 400.

One definition serves everyone: the broker's REST routes and WebSocket methods
parse requests with these models, the queue model (:mod:`trioq.core._state`) checks
the :class:`NewJob` items a library caller hands it with the same ones,
:class:`~trioq.Client` builds its requests from them and reads its answers with them,
and ``GET /openapi.json`` is generated from them.

The models are pydantic (v2) models, strict: no coercion (``"3"`` is not an integer,
``true`` is not ``1``). Unknown fields are ignored (osqueue clients may send more);
an optional field sent as ``null`` counts as absent. :func:`parse` turns a
:class:`pydantic.ValidationError` into a :class:`~trioq.BrokerProtocolError` whose
message names the field and its rule (``jobs[3].maxAttempts must be an integer from
1 to 1000``); the rules are tabled in :data:`RULES`.

Two requests are read item by item (:func:`parse_bulk`, :func:`parse_exchange`): only
their outer shape is all-or-nothing, and an item that breaks its schema becomes that
item's own error (``jobs[3]: maxAttempts must be ...``), kept in :class:`Items`.

Four wire objects are plain (frozen) dataclasses annotated for pydantic, because the
queue model builds or takes them on its hot path: :class:`NewJob` (a job to
enqueue), :class:`ClaimedJob` (a job handed to a worker; ``trioq.Claimed``), and an
exchange's reports, :class:`JobReport` and :class:`FailReport`. A
:class:`NewJob` that passed the schema is *sealed*: its payload is encoded once, and
the queue model uses those bytes instead of checking and encoding it again.

Limits (one set: the queue model's :class:`~trioq.Limits` defaults are these):

======================  ==============================================
job id                  1-128 characters of ``A-Z a-z 0-9 . _ : -``
job type                1-128 characters, no control characters
``workerId``            1-256 characters
``maxAttempts``         1-1000
``attempt``             1-1,000,000
``delayMs``             0 to 365 days (ms)
``retryInMs``           0 to 365 days (ms)
batch, bulk             1-10,000 jobs
exchange report lists   0-10,000 reports each
claim ``max``           1-10,000
claim ``waitMs``        0-30,000
list ``limit``          1-1000
payload                 JSON nested at most 64 levels deep
integers (anywhere)     -2**63 .. 2**64-1 (the broker's JSON decoder)
======================  ==============================================
"""

from __future__ import annotations

from ._answers import BatchAnswer as BatchAnswer
from ._answers import BulkAnswer as BulkAnswer
from ._answers import BulkResult as BulkResult
from ._answers import ClaimMany as ClaimMany
from ._answers import DeadJobView as DeadJobView
from ._answers import DeadPage as DeadPage
from ._answers import EmptyClaim as EmptyClaim
from ._answers import ErrorBody as ErrorBody
from ._answers import ExchangeAnswer as ExchangeAnswer
from ._answers import FailAnswer as FailAnswer
from ._answers import FinishedJobView as FinishedJobView
from ._answers import Health as Health
from ._answers import JobsPage as JobsPage
from ._answers import JobStatus as JobStatus
from ._answers import JobView as JobView
from ._answers import QueuedJobView as QueuedJobView
from ._answers import Ready as Ready
from ._answers import ReportResult as ReportResult
from ._answers import ReportStatus as ReportStatus
from ._answers import RpcReply as RpcReply
from ._answers import Stats as Stats
from ._answers import SubmitAnswer as SubmitAnswer
from ._answers import ThrottleStats as ThrottleStats
from ._limits import CURSOR_PATTERN as CURSOR_PATTERN
from ._limits import DEFAULT_TYPE as DEFAULT_TYPE
from ._limits import ID_CHARS as ID_CHARS
from ._limits import ID_PATTERN as ID_PATTERN
from ._limits import INT_MAX as INT_MAX
from ._limits import INT_MIN as INT_MIN
from ._limits import MAX_ATTEMPT as MAX_ATTEMPT
from ._limits import MAX_ATTEMPTS as MAX_ATTEMPTS
from ._limits import MAX_BATCH as MAX_BATCH
from ._limits import MAX_CLAIM as MAX_CLAIM
from ._limits import MAX_DELAY_MS as MAX_DELAY_MS
from ._limits import MAX_ERROR_CHARS as MAX_ERROR_CHARS
from ._limits import MAX_ID_CHARS as MAX_ID_CHARS
from ._limits import MAX_LIST as MAX_LIST
from ._limits import MAX_PAYLOAD_DEPTH as MAX_PAYLOAD_DEPTH
from ._limits import MAX_TYPE_CHARS as MAX_TYPE_CHARS
from ._limits import MAX_WAIT_MS as MAX_WAIT_MS
from ._limits import MAX_WORKER_ID_CHARS as MAX_WORKER_ID_CHARS
from ._limits import RULES as RULES
from ._limits import TYPE_CHARS as TYPE_CHARS
from ._limits import TYPE_PATTERN as TYPE_PATTERN
from ._limits import JobId as JobId
from ._limits import WireModel as WireModel
from ._parse import JOB_ID as JOB_ID
from ._parse import WIRE_NEW_JOB as WIRE_NEW_JOB
from ._parse import WORKER_ID as WORKER_ID
from ._parse import Items as Items
from ._parse import ParsedExchange as ParsedExchange
from ._parse import adapter as adapter
from ._parse import checked_job as checked_job
from ._parse import describe as describe
from ._parse import job_id as job_id
from ._parse import parse as parse
from ._parse import parse_batch as parse_batch
from ._parse import parse_bulk as parse_bulk
from ._parse import parse_exchange as parse_exchange
from ._parse import parse_new_job as parse_new_job
from ._parse import seal as seal
from ._payload import encode_payload as encode_payload
from ._records import ClaimedJob as ClaimedJob
from ._records import FailReport as FailReport
from ._records import JobReport as JobReport
from ._records import NewJob as NewJob
from ._requests import SCHEDULE_NAME_PATTERN as SCHEDULE_NAME_PATTERN
from ._requests import CancelMatching as CancelMatching
from ._requests import ClaimRequest as ClaimRequest
from ._requests import CompleteCall as CompleteCall
from ._requests import CompleteRequest as CompleteRequest
from ._requests import ExchangeClaim as ExchangeClaim
from ._requests import ExchangeRequest as ExchangeRequest
from ._requests import FailCall as FailCall
from ._requests import FailRequest as FailRequest
from ._requests import HeldJob as HeldJob
from ._requests import HeldJobCall as HeldJobCall
from ._requests import JobRef as JobRef
from ._requests import ListQuery as ListQuery
from ._requests import NoBody as NoBody
from ._requests import PurgeDead as PurgeDead
from ._requests import ResultQuery as ResultQuery
from ._requests import RpcRequest as RpcRequest
from ._requests import ScheduleRequest as ScheduleRequest
from ._requests import SubmitBatch as SubmitBatch
from ._requests import SubmitBulk as SubmitBulk
from ._requests import TypeRuleRequest as TypeRuleRequest
