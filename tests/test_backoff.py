import random

import pytest

from trioq._backoff import backoff_delay


def test_doubles_up_to_the_cap_with_equal_jitter() -> None:
    rng = random.Random(4)
    for attempt, nominal in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (60, 1.0)]:
        for _ in range(200):
            delay = backoff_delay(attempt, base=0.1, cap=1.0, rng=rng)
            assert nominal / 2 <= delay < nominal


def test_spreads_callers_out() -> None:
    rng = random.Random(1)
    delays = {backoff_delay(3, base=1, cap=10, rng=rng) for _ in range(50)}
    assert len(delays) == 50


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        backoff_delay(0, base=1, cap=1)
