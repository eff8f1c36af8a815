"""The storage protocol every backend implements.

A backend stores whole objects under string keys and supports compare-and-set:
``write`` succeeds only if the object's current version equals ``if_match``, and
``create`` only if the object is absent. A failed precondition raises
:class:`~trioq.CASConflict`; nothing else does. Versions are opaque strings.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable


class Versioned(NamedTuple):
    """An object's bytes together with the version they were read at."""

    data: bytes
    version: str


@runtime_checkable
class Storage(Protocol):
    """A compare-and-set object store (S3, a local directory, memory, ...)."""

    async def read(self, key: str) -> Versioned | None:
        """The object's bytes and version, or ``None`` if it does not exist."""
        ...

    async def version(self, key: str) -> str | None:
        """The object's current version without its body (cheap), or ``None``."""
        ...

    async def write(self, key: str, data: bytes, *, if_match: str) -> str:
        """Replace the object if its version is ``if_match``; return the new version.

        Raises :class:`~trioq.CASConflict` if the version differs or the object is
        missing, :class:`~trioq.WriteOutcomeUnknown` if the write was sent but its
        outcome could not be established.
        """
        ...

    async def create(self, key: str, data: bytes) -> str:
        """Create the object only if it is absent; return its version.

        Raises :class:`~trioq.CASConflict` if it already exists.
        """
        ...

    def describe(self) -> str:
        """A short human description (bucket, endpoint, directory) for messages and logs."""
        ...
