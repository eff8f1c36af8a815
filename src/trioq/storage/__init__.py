"""Storage backends: the protocol the engine writes through, and its implementations.

- :class:`Storage` / :class:`Versioned`: the protocol (read, version, write with a
  compare-and-set, create if absent, list keys by prefix, delete).
- :class:`MemoryStorage` (tests), :class:`FileStorage` (the embedded default),
  :class:`S3Storage` (boto3 in threads; imported on first use).
- :class:`ThrottledStorage` and :class:`FaultyStorage` wrap any of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._faulty import FaultyStorage as FaultyStorage
from ._file import FileStorage as FileStorage
from ._memory import MemoryStorage as MemoryStorage
from ._protocol import Storage as Storage
from ._protocol import Versioned as Versioned
from ._throttled import ThrottledStorage as ThrottledStorage

if TYPE_CHECKING:
    from ._s3 import S3Storage as S3Storage


def __getattr__(name: str) -> Any:
    # S3Storage imports boto3 (~150 ms): only when it is used, not for every worker
    if name == "S3Storage":
        from ._s3 import S3Storage

        return S3Storage
    raise AttributeError(f"module 'trioq.storage' has no attribute {name!r}")
