"""The one retry delay every retrying part of trioq uses (client, worker, engine,
file storage)."""

from __future__ import annotations

import random

_RNG = random.Random()


def backoff_delay(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    ``base`` doubles with each attempt up to ``cap``, and is then multiplied by a
    random factor in [0.5, 1) ("equal jitter"): many callers failing at the same
    moment (every worker when a broker dies) spread their retries out, and no wait is
    shorter than half the nominal one. Pass a seeded ``rng`` for reproducible waits.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    nominal: float = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return nominal * (0.5 + (rng or _RNG).random() / 2)
