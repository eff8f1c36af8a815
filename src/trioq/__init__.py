"""trioq: a distributed job queue for Trio on one JSON document in object storage.

Producers and workers use :class:`Client` (trio or asyncio) and :class:`Worker`;
code that is not async submits with :class:`SyncClient`; the broker runs as
``python -m trioq.broker``; :mod:`trioq.testing` runs one in-process for tests.
Every error derives from :class:`TrioqError` and carries a stable ``tag``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import BrokerProtocolError as BrokerProtocolError
from ._errors import BrokerUnreachable as BrokerUnreachable
from ._errors import BucketNotFound as BucketNotFound
from ._errors import CASConflict as CASConflict
from ._errors import DeadlineExceeded as DeadlineExceeded
from ._errors import DocumentInvalid as DocumentInvalid
from ._errors import Forbidden as Forbidden
from ._errors import InternalError as InternalError
from ._errors import JobFailed as JobFailed
from ._errors import JobNotDead as JobNotDead
from ._errors import JobNotFound as JobNotFound
from ._errors import LeaseLost as LeaseLost
from ._errors import MethodNotAllowed as MethodNotAllowed
from ._errors import NotFound as NotFound
from ._errors import NotLeader as NotLeader
from ._errors import Overloaded as Overloaded
from ._errors import PayloadTooLarge as PayloadTooLarge
from ._errors import QueueFull as QueueFull
from ._errors import QueueNotFound as QueueNotFound
from ._errors import StorageAuthError as StorageAuthError
from ._errors import StorageUnavailable as StorageUnavailable
from ._errors import StorageUnreachable as StorageUnreachable
from ._errors import TrioqError as TrioqError
from ._errors import Unauthorized as Unauthorized
from ._errors import WriteOutcomeUnknown as WriteOutcomeUnknown
from ._sync import SyncClient as SyncClient
from .client import Claimed as Claimed
from .client import Client as Client
from .client import JobSpec as JobSpec
from .client import Submitted as Submitted
from .core._config import EngineConfig as EngineConfig
from .core._engine import Engine as Engine
from .core._state import Limits as Limits
from .storage._faulty import FaultyStorage as FaultyStorage
from .storage._file import FileStorage as FileStorage
from .storage._memory import MemoryStorage as MemoryStorage
from .storage._protocol import Storage as Storage
from .storage._protocol import Versioned as Versioned
from .storage._throttled import ThrottledStorage as ThrottledStorage
from .worker._handlers import Fatal as Fatal
from .worker._handlers import JobContext as JobContext
from .worker._handlers import JobTimeout as JobTimeout
from .worker._handlers import PayloadInvalid as PayloadInvalid
from .worker._handlers import Retry as Retry
from .worker._worker import Worker as Worker

if TYPE_CHECKING:
    from .storage._s3 import S3Storage as S3Storage

__version__ = "0.1.0"

__all__ = [
    "BrokerProtocolError",
    "BrokerUnreachable",
    "BucketNotFound",
    "CASConflict",
    "Claimed",
    "Client",
    "DeadlineExceeded",
    "DocumentInvalid",
    "Engine",
    "EngineConfig",
    "Fatal",
    "FaultyStorage",
    "FileStorage",
    "Forbidden",
    "InternalError",
    "JobContext",
    "JobFailed",
    "JobNotDead",
    "JobNotFound",
    "JobSpec",
    "JobTimeout",
    "LeaseLost",
    "Limits",
    "MemoryStorage",
    "MethodNotAllowed",
    "NotFound",
    "NotLeader",
    "Overloaded",
    "PayloadInvalid",
    "PayloadTooLarge",
    "QueueFull",
    "QueueNotFound",
    "Retry",
    "S3Storage",
    "Storage",
    "StorageAuthError",
    "StorageUnavailable",
    "StorageUnreachable",
    "Submitted",
    "SyncClient",
    "ThrottledStorage",
    "TrioqError",
    "Unauthorized",
    "Versioned",
    "Worker",
    "WriteOutcomeUnknown",
]
"""The public names (``S3Storage`` is imported on first use: it needs boto3)."""


def __getattr__(name: str) -> Any:
    # S3Storage imports boto3 (~150 ms): only when it is used, not for every worker
    if name == "S3Storage":
        from .storage._s3 import S3Storage

        return S3Storage
    raise AttributeError(f"module 'trioq' has no attribute {name!r}")
