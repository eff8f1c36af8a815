"""What a remote backend (S3, GCS) does when a conditional write got no answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .._errors import StorageUnavailable, WriteOutcomeUnknown
from ._protocol import Versioned


async def read_back(
    read: Callable[[], Awaitable[Versioned | None]],
    data: bytes,
    *,
    where: str,
    request: str,
    cause: str,
) -> str:
    """The version of ``data`` if reading the object back finds exactly our bytes,
    else :class:`~trioq.WriteOutcomeUnknown` (our write may still land, or was lost).

    Used after a conditional write (``request``: "the PUT", "the upload") raised
    with no answer: the precondition means that if our bytes are there, our write
    put them there (trioq's payloads make each commit's bytes unique).
    """
    try:
        current = await read()
    except StorageUnavailable as read_exc:
        raise WriteOutcomeUnknown(
            f"{where}: {request} got no answer ({cause}) and reading the object back "
            f"failed too ({read_exc.message}); the write may or may not have landed"
        ) from None
    if current is not None and current.data == data:
        return current.version
    found = "no object" if current is None else "other bytes"
    raise WriteOutcomeUnknown(
        f"{where}: {request} got no answer ({cause}) and reading the object back "
        f"found {found}; the write may still land or may have been lost"
    )
