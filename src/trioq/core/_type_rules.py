"""Per-type rules, stored in the queue state and enforced by the broker at claim time:
``paused`` (claims skip the type), ``max_in_progress`` (at most N jobs of the type in
progress across all workers) and ``max_per_second`` (at most R claims of the type a
second, a token bucket that holds one second's worth).

The rules are stored (so they hold across failovers and every worker); the token
buckets are not: a new leader starts with full buckets, so a takeover may let one
second's worth of claims through at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._errors import BrokerProtocolError
from .._wire import RULES
from ._jobs import valid_type

if TYPE_CHECKING:
    from .._wire import TypeRuleRequest
    from ._state import QueueState

MAX_TYPE_RULES = 1000
"""Types with rules one queue keeps at most."""


@dataclass(slots=True, eq=False)
class TypeRule:
    """One type's rule (see the module's docstring)."""

    type: str
    paused: bool = False
    max_in_progress: int | None = None
    max_per_second: float | None = None
    tokens: float = field(default=-1.0, repr=False)
    """Claims the bucket allows now (-1: not started: full)."""
    refilled_at: int = field(default=0, repr=False)

    @property
    def empty(self) -> bool:
        """No rule at all: not stored."""
        return not self.paused and self.max_in_progress is None and self.max_per_second is None

    def _refill(self, now: int) -> float:
        rate = self.max_per_second
        assert rate is not None
        capacity = max(1.0, rate)
        if self.tokens < 0:
            self.tokens, self.refilled_at = capacity, now
        elif now > self.refilled_at:
            self.tokens = min(capacity, self.tokens + (now - self.refilled_at) / 1000 * rate)
            self.refilled_at = now
        return self.tokens

    def has_token(self, now: int) -> bool:
        return self.max_per_second is None or self._refill(now) >= 1.0

    def take_token(self, now: int) -> None:
        if self.max_per_second is not None:
            self._refill(now)
            self.tokens -= 1.0

    def next_token_at(self, now: int) -> int:
        """When the bucket next holds a whole token (``now`` if it does)."""
        if self.max_per_second is None or self._refill(now) >= 1.0:
            return now
        return now + int((1.0 - self.tokens) / self.max_per_second * 1000) + 1

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "paused": self.paused}
        if self.max_in_progress is not None:
            body["maxInProgress"] = self.max_in_progress
        if self.max_per_second is not None:
            body["maxPerSecond"] = self.max_per_second
        return body

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TypeRule:
        job_type, paused = raw["type"], raw.get("paused", False)
        limit, rate = raw.get("maxInProgress"), raw.get("maxPerSecond")
        if not valid_type(job_type) or not isinstance(paused, bool):
            raise ValueError(f"a type rule with a bad type or paused: {raw!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise ValueError(f"maxInProgress is not an integer: {limit!r}")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)):
            raise ValueError(f"maxPerSecond is not a number: {rate!r}")
        return cls(job_type, paused, limit, None if rate is None else float(rate))


def put(state: QueueState, request: TypeRuleRequest) -> TypeRule:
    """Change a type's rule: the fields the request gives replace the stored ones
    (``null`` clears a limit), the others stay. A rule left empty is removed."""
    job_type = request.type
    if not valid_type(job_type):
        raise BrokerProtocolError(f"type must be {RULES['type']}")
    old = state.type_rules.get(job_type)
    if old is None and len(state.type_rules) >= MAX_TYPE_RULES:
        raise BrokerProtocolError(f"a queue keeps rules for at most {MAX_TYPE_RULES} types")
    rule = TypeRule(job_type) if old is None else old
    given = request.model_fields_set
    if "paused" in given:
        rule.paused = bool(request.paused)
    if "max_in_progress" in given:
        rule.max_in_progress = request.max_in_progress
    if "max_per_second" in given:
        rule.max_per_second = request.max_per_second
        rule.tokens = -1.0
    if rule.empty:
        state.type_rules.pop(job_type, None)
    else:
        state.type_rules[job_type] = rule
    state.note_rules()
    return rule


def blocked(state: QueueState, job_type: str, now: int) -> bool:
    """Whether a claim may not take a job of ``job_type`` now."""
    rule = state.type_rules.get(job_type)
    if rule is None:
        return False
    if rule.paused:
        return True
    limit = rule.max_in_progress
    if limit is not None and state.index.leased_by_type.get(job_type, 0) >= limit:
        return True
    return not rule.has_token(now)


def next_unblock_at(state: QueueState, now: int) -> int | None:
    """The soonest time a rate-limited type with unclaimed jobs gets a token (for
    the commit loop's wake-up while claims wait)."""
    soonest: int | None = None
    queued, leased = state.jobs.by_type, state.index.leased_by_type
    for rule in state.type_rules.values():
        if rule.max_per_second is None or rule.paused:
            continue
        if queued.get(rule.type, 0) - leased.get(rule.type, 0) <= 0:
            continue
        at = rule.next_token_at(now)
        if at > now and (soonest is None or at < soonest):
            soonest = at
    return soonest
