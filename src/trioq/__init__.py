"""trioq: a distributed job queue for Trio on one JSON document in object storage."""

from __future__ import annotations

from ._errors import BrokerProtocolError as BrokerProtocolError
from ._errors import BucketNotFound as BucketNotFound
from ._errors import CASConflict as CASConflict
from ._errors import DocumentInvalid as DocumentInvalid
from ._errors import JobNotFound as JobNotFound
from ._errors import LeaseLost as LeaseLost
from ._errors import NotLeader as NotLeader
from ._errors import PayloadTooLarge as PayloadTooLarge
from ._errors import QueueFull as QueueFull
from ._errors import StorageAuthError as StorageAuthError
from ._errors import StorageUnavailable as StorageUnavailable
from ._errors import StorageUnreachable as StorageUnreachable
from ._errors import TrioqError as TrioqError
from ._errors import Unauthorized as Unauthorized
from ._errors import WriteOutcomeUnknown as WriteOutcomeUnknown
from ._faulty_storage import FaultyStorage as FaultyStorage
from ._file_storage import FileStorage as FileStorage
from ._memory_storage import MemoryStorage as MemoryStorage
from ._s3_storage import S3Storage as S3Storage
from ._storage import Storage as Storage
from ._storage import Versioned as Versioned
from ._throttled_storage import ThrottledStorage as ThrottledStorage

__version__ = "0.1.0"
