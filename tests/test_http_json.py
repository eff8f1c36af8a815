"""The broker's JSON decoding (``trioq.broker._json.loads``) against the stdlib parser:
it refuses exactly the documents holding an integer that orjson would turn into a
float, and otherwise returns what orjson returns. (The HTTP and WebSocket answers
to such documents are tested in test_http_errors.py and test_websocket.py.)"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioq._errors import BrokerProtocolError
from trioq.broker._json import INT_MAX, INT_MIN
from trioq.broker._json import loads as _loads

# numbers near and far beyond the 64-bit edges, floats printed with long digit
# runs, and strings made of digits
integers = st.one_of(
    st.integers(),
    st.integers(min_value=INT_MAX - 3, max_value=INT_MAX + 3),
    st.integers(min_value=INT_MIN - 3, max_value=INT_MIN + 3),
    st.integers(min_value=10**18, max_value=10**40).map(lambda n: n * st_sign(n)),
)
floats = st.floats(allow_nan=False, allow_infinity=False)
digit_strings = st.text(alphabet="0123456789-.e", min_size=15, max_size=30)
scalars = st.one_of(st.none(), st.booleans(), integers, floats, digit_strings, st.text())
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=20,
)


def st_sign(n: int) -> int:
    return -1 if n % 2 else 1


def holds_out_of_range(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return not INT_MIN <= value <= INT_MAX
    if isinstance(value, list):
        return any(holds_out_of_range(v) for v in value)
    if isinstance(value, dict):
        return any(holds_out_of_range(v) for v in value.values())
    return False


@settings(max_examples=500, deadline=None)
@given(documents, st.sampled_from([0, 2]))
def test_loads_refuses_exactly_the_integers_orjson_cannot_hold(doc: Any, indent: int) -> None:
    text = json.dumps(doc, indent=indent or None)
    for data in (text, text.encode()):
        if holds_out_of_range(doc):
            with pytest.raises(BrokerProtocolError, match="out of range"):
                _loads(data)
        else:
            assert _loads(data) == orjson.loads(data)


@pytest.mark.parametrize(
    "text",
    [
        "0.00012345678901234567890",
        "1.2e-1234567890123456789",
        "1E+0000000000000000001",
        "12345678901234567890.5",
        "[1234567890123456789e-3]",
        '"12345678901234567890123"',
        '{"12345678901234567890123": "x\\"12345678901234567890123"}',
        "[18446744073709551615, -9223372036854775808]",
    ],
)
def test_long_digit_runs_that_are_not_out_of_range_integers(text: str) -> None:
    assert _loads(text) == orjson.loads(text)
