"""What a payload may be: JSON that round-trips exactly, nested at most 64 levels."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from ._limits import INT_MAX, INT_MIN, MAX_PAYLOAD_DEPTH


def kept(data: bytes) -> bytes:
    """``data`` in memory of its own size, for bytes kept as long as a job lives.

    orjson hands back the buffer it wrote into (4 KiB at least) with its length cut
    to fit, not its allocation: each cached record or payload would hold 4 KiB, 1 GB
    at 100,000 jobs (measured: ``docs/performance.md``). Copying a few hundred bytes
    costs well under a microsecond."""
    return memoryview(data).tobytes()


def encode_payload(payload: Any) -> bytes:
    """A payload's JSON encoding (pydantic models and dataclasses as plain values).

    Raises ValueError for what would not come back exactly: NaN and infinities (JSON
    has none; they would turn into ``null``), integers outside ``-2**63 .. 2**64-1``
    (beyond what the broker decodes exactly) and strings with lone surrogates; and
    TypeError for values JSON cannot hold (a set, a dict with non-string keys, ...).
    """
    value = payload
    if type(payload) not in _PLAIN:
        dump = getattr(payload, "model_dump", None)
        value = dump(mode="json") if callable(dump) else payload
    try:
        data = kept(orjson.dumps(value))
    except orjson.JSONEncodeError as exc:
        raise _encode_error(value, exc) from None
    # orjson writes NaN and the infinities as null: only a payload with a null in it
    # can hold one, so the walk that finds it stays off the common path
    if b"null" in data:
        where = _find(value, _non_finite)
        if where is not None:
            path, bad = where
            raise ValueError(
                f"payload is not JSON: {bad!r} at {path} (JSON has no NaN or Infinity; "
                "it would arrive as null)"
            )
    return data


_PLAIN = frozenset({dict, list, str, int, float, bool, type(None)})
"""Types that are JSON values as they are (no ``model_dump`` to look for)."""


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _int_out_of_range(value: Any) -> bool:
    return isinstance(value, int) and not INT_MIN <= value <= INT_MAX


def _find(value: Any, bad: Callable[[Any], bool], path: str = "$") -> tuple[str, Any] | None:
    """The first ``(path, item)`` in ``value`` for which ``bad(item)``, if any."""
    if bad(value):
        return path, value
    items: Iterable[tuple[str, Any]]
    if isinstance(value, dict):
        items = ((f"{path}[{k!r}]", v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = ((f"{path}[{f.name!r}]", getattr(value, f.name)) for f in dataclasses.fields(value))
    else:
        return None
    for child_path, child in items:
        found = _find(child, bad, child_path)
        if found is not None:
            return found
    return None


def _encode_error(value: Any, exc: orjson.JSONEncodeError) -> Exception:
    text = str(exc)
    if "Integer exceeds" in text:
        where = _find(value, _int_out_of_range)
        at = f"{where[1]} at {where[0]}" if where is not None else "an integer"
        return ValueError(
            f"payload is not JSON that round-trips: {at} is outside -2**63 .. 2**64-1 "
            "(send it as a string)"
        )
    if "not valid UTF-8" in text or "Recursion limit" in text:
        return ValueError(f"payload cannot be encoded as JSON: {text}")
    return TypeError(f"payload cannot be encoded as JSON: {text}")


def too_deep(data: bytes, value: Any) -> bool:
    """Whether the payload ``value`` (encoded as ``data``) nests containers more than
    :data:`MAX_PAYLOAD_DEPTH` deep. The length or a count of brackets (in C) settles
    nearly every payload; one with more brackets than the cap in total is walked."""
    if (
        len(data) <= 2 * MAX_PAYLOAD_DEPTH
        or data.count(b"[") + data.count(b"{") <= MAX_PAYLOAD_DEPTH
    ):
        return False  # each level takes two bytes; brackets in strings only add to the count
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_PAYLOAD_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False
