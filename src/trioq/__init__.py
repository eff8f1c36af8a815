"""trioq: a distributed job queue for Trio on one JSON document in object storage.

Producers and workers use :class:`Client` and :class:`Worker`; the broker runs as
``python -m trioq.broker``; :mod:`trioq.testing` runs one in-process for tests.
Every error derives from :class:`TrioqError` and carries a stable ``tag``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._client import Claimed as Claimed
from ._client import Client as Client
from ._client import JobSpec as JobSpec
from ._config import EngineConfig as EngineConfig
from ._engine import Engine as Engine
from ._errors import BrokerProtocolError as BrokerProtocolError
from ._errors import BrokerUnreachable as BrokerUnreachable
from ._errors import BucketNotFound as BucketNotFound
from ._errors import CASConflict as CASConflict
from ._errors import DocumentInvalid as DocumentInvalid
from ._errors import InternalError as InternalError
from ._errors import JobNotDead as JobNotDead
from ._errors import JobNotFound as JobNotFound
from ._errors import LeaseLost as LeaseLost
from ._errors import MethodNotAllowed as MethodNotAllowed
from ._errors import NotFound as NotFound
from ._errors import NotLeader as NotLeader
from ._errors import PayloadTooLarge as PayloadTooLarge
from ._errors import QueueFull as QueueFull
from ._errors import QueueNotFound as QueueNotFound
from ._errors import StorageAuthError as StorageAuthError
from ._errors import StorageUnavailable as StorageUnavailable
from ._errors import StorageUnreachable as StorageUnreachable
from ._errors import TrioqError as TrioqError
from ._errors import Unauthorized as Unauthorized
from ._errors import WriteOutcomeUnknown as WriteOutcomeUnknown
from ._faulty_storage import FaultyStorage as FaultyStorage
from ._file_storage import FileStorage as FileStorage
from ._memory_storage import MemoryStorage as MemoryStorage
from ._state import Limits as Limits
from ._storage import Storage as Storage
from ._storage import Versioned as Versioned
from ._throttled_storage import ThrottledStorage as ThrottledStorage
from ._worker import JobContext as JobContext
from ._worker import JobTimeout as JobTimeout
from ._worker import PayloadInvalid as PayloadInvalid
from ._worker import Worker as Worker

if TYPE_CHECKING:
    from ._s3_storage import S3Storage as S3Storage

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # S3Storage imports boto3 (~150 ms): only when it is used, not for every worker
    if name == "S3Storage":
        from ._s3_storage import S3Storage

        return S3Storage
    raise AttributeError(f"module 'trioq' has no attribute {name!r}")
