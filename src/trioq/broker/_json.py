"""The broker's JSON decoding: orjson, refusing what it would not read exactly.

orjson refuses ``NaN``, ``Infinity`` and numbers that overflow a double by itself.
It reads an integer outside ``INT_MIN .. INT_MAX`` as a float, silently dropping
digits, and has no option to refuse it: :func:`loads` does. Such a literal has at
least 19 digits in a row, not after a ``.`` or an exponent mark and not before one.
Looking for that in C (every digit mapped to ``9``, then a substring search) costs a
fraction of the parse; only a hit (such an integer, or a long digit run inside a
string) pays for the exact check, a second parse with the stdlib.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from .._errors import BrokerProtocolError
from .._wire import INT_MAX as INT_MAX
from .._wire import INT_MIN as INT_MIN

_DIGITS_AS_NINES = bytes.maketrans(b"0123456789", b"9" * 10)
_LONG_RUN = b"9" * 19
_NINES = re.compile(rb"9*")
_RUNS_LOOKED_AT = 1000
"""Long digit runs looked at one by one (in Python) before the exact check decides."""


def loads(data: bytes | str) -> Any:
    """``orjson.loads``, refusing what it would not read exactly.

    NaN, Infinity and numbers that overflow a double are refused by orjson itself
    (``orjson.JSONDecodeError``); an integer beyond 64 bits raises
    :class:`~trioq.BrokerProtocolError`."""
    value = orjson.loads(data)
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if _may_hold_long_integer(raw):
        try:
            json.loads(raw, parse_int=_exact_int)
        except RecursionError:
            raise BrokerProtocolError("JSON nested too deeply") from None
        except ValueError as exc:  # orjson took it: not expected, but never a 500
            raise BrokerProtocolError(f"malformed JSON: {exc}") from None
    return value


def _may_hold_long_integer(raw: bytes) -> bool:
    nines = raw.translate(_DIGITS_AS_NINES)
    start = nines.find(_LONG_RUN)
    for _ in range(_RUNS_LOOKED_AT):
        if start == -1:
            return False
        run = _NINES.match(nines, start)  # always matches ("9*")
        end = run.end() if run else start
        before = raw[start - 1 : start]
        if before == b"-" and raw[start - 2 : start - 1] not in (b"e", b"E"):
            before = b""  # the sign of a number, not of an exponent
        if before not in (b".", b"e", b"E", b"+", b"-") and raw[end : end + 1] not in (
            b".",
            b"e",
            b"E",
        ):
            return True  # an integer, or digits in a string
        start = nines.find(_LONG_RUN, end)
    return start != -1


def _exact_int(literal: str) -> int:
    digits = literal.removeprefix("-")
    if len(digits) <= 20:
        value = int(literal)
        if INT_MIN <= value <= INT_MAX:
            return value
    shown = literal if len(literal) <= 40 else literal[:40] + "..."
    raise BrokerProtocolError(
        f"integer {shown} is out of range: integers must be from {INT_MIN} to {INT_MAX} "
        "(send larger ones as strings)"
    )


def decode_object(data: bytes | str, *, what: str, allow_empty: bool = False) -> dict[str, Any]:
    """``data`` as a JSON object (``{}`` for an empty body when ``allow_empty``);
    :class:`~trioq.BrokerProtocolError` otherwise, ``what`` naming the thing."""
    if allow_empty and not data.strip():
        return {}
    try:
        value = loads(data)
    except orjson.JSONDecodeError as exc:
        raise BrokerProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BrokerProtocolError(f"{what} must be a JSON object")
    return value
