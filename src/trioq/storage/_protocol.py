"""The storage protocol every backend implements.

A backend stores whole objects under string keys and supports compare-and-set:
``write`` succeeds only if the object's current version equals ``if_match``, and
``create`` only if the object is absent. A failed precondition raises
:class:`~trioq.CASConflict`; nothing else does. Versions are opaque strings.

``list_keys`` and ``delete_key`` exist for a log-structured layout (numbered log
objects created with ``create``, checkpoints, and garbage collection of the objects
no reader needs any more); the single-document layout does not use them.
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

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """The keys that start with ``prefix`` (``""``: every key), in ascending order.

        The order is the byte order of the keys' UTF-8 encodings (what S3's
        ``ListObjectsV2`` returns; for Python strings it is also the order of
        ``sorted``). Only keys strictly after ``start_after`` are returned when it
        is given, and at most ``limit`` keys when it is given (``None``: all of
        them; a backend that pages fetches every page). Continue a listing with
        ``start_after=`` the last key returned.

        A listing is not a snapshot: a key created or deleted while it runs may or
        may not be in it. A key whose object was created (or deleted) before the
        call started is (or is not) listed. Known deviations (docs/storage.md):
        :class:`~trioq.FileStorage` never lists keys of more than about 200 encoded
        characters, and SeaweedFS orders (and skips after ``start_after``) keys
        that hold a ``/`` below ``prefix`` in its own way. Raises :class:`ValueError` if
        ``limit`` is negative, and :class:`~trioq.StorageUnavailable` (or a
        subclass: :class:`~trioq.BucketNotFound`, :class:`~trioq.StorageAuthError`,
        :class:`~trioq.StorageUnreachable`) when the store cannot be used.
        """
        ...

    async def delete_key(self, key: str) -> None:
        """Remove the object at ``key``; a missing object is not an error.

        Unconditional, like S3's ``DeleteObject``: there is no ``if_match``. The log
        layout deletes only objects that are immutable and never created again,
        so no precondition is needed; a caller that deletes a key that someone may
        create again must order the two itself. Afterwards ``read`` and ``version``
        return ``None`` and ``create`` succeeds.

        Raises :class:`~trioq.StorageUnavailable` (or a subclass) when the store
        cannot be used; never :class:`~trioq.CASConflict`. After that error the
        object may or may not have been removed (a
        :class:`~trioq.WriteOutcomeUnknown` says the request went out and its
        answer was lost); deleting again is safe, since a delete is idempotent.
        """
        ...

    def describe(self) -> str:
        """A short human description (bucket, endpoint, directory) for messages and logs."""
        ...


def check_limit(limit: int | None) -> None:
    """Reject a negative ``limit`` for :meth:`Storage.list_keys` (every backend)."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, not {limit!r}")
