"""A storage wrapper that injects faults, for testing what is built on the storage.

:class:`FaultyStorage` wraps any :class:`~trioq.Storage` and makes some of its calls
fail the ways a real object store fails. Faults come from two sources:

- **on demand**, with :meth:`FaultyStorage.inject`: "the next write lands and then
  reports an unknown outcome", "the next three reads find the store unreachable",
  "the store is down until I say otherwise";
- **at random**, at configured rates, drawn from a :class:`random.Random` seeded with
  ``seed``, so a run with the same seed and the same sequence of calls injects the
  same faults.

The fault kinds (:data:`FaultKind`):

``"conflict"``
    ``write`` / ``create`` (the calls with a precondition) raise :class:`~trioq.CASConflict` without calling the
    wrapped store, as if another writer had got there first. The store is untouched.
``"error"``
    Any call raises :class:`~trioq.StorageUnreachable` (or the configured
    :class:`~trioq.StorageUnavailable` subclass) without calling the wrapped store:
    the request never arrived.
``"ambiguous"``
    ``write`` / ``create`` / ``delete_key`` perform the call on the wrapped store, so
    the write (or delete) really lands, and *then* raise
    :class:`~trioq.WriteOutcomeUnknown`, as if the response had been lost on the way
    back. This is the case that turns into a false conflict when a caller retries a
    write blindly; resolve it by reading back. (If the wrapped store rejects the
    write with a conflict, or fails the call, that answer is lost too and the caller
    still sees :class:`~trioq.WriteOutcomeUnknown`.) A delete is idempotent, so
    deleting again resolves it.
``"ambiguous_lost"``
    ``write`` / ``create`` / ``delete_key`` raise :class:`~trioq.WriteOutcomeUnknown`
    without calling the wrapped store: the other half of an unknown outcome, the
    request was lost on the way out. Reading back finds the old document.
``"latency"``
    The call is delayed with :func:`trio.sleep` before it is passed on (or before
    another fault is raised). Under :class:`trio.testing.MockClock` the delay is
    exact virtual time. A *spike* (``spike_rate``, ``spike``) is an occasional long
    delay added on top, recorded as ``"latency"`` too and counted in
    :attr:`FaultyStorage.spikes`.

Every injected fault is counted in :attr:`FaultyStorage.injected` and recorded in
:attr:`FaultyStorage.faults`; every call that reached the wrapped store is counted in
:attr:`FaultyStorage.calls`.
"""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import trio

from .._errors import CASConflict, StorageUnavailable, StorageUnreachable, WriteOutcomeUnknown
from ._protocol import Storage, Versioned

FaultKind = Literal["conflict", "error", "ambiguous", "ambiguous_lost", "latency"]
"""The kinds of fault :class:`FaultyStorage` can inject (see the module docstring)."""

StorageOp = Literal["read", "version", "write", "create", "list_keys", "delete_key"]
"""The storage calls a fault can target."""

FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
STORAGE_OPS: tuple[StorageOp, ...] = get_args(StorageOp)
_CAS_OPS: tuple[StorageOp, ...] = ("write", "create")
"""The calls with a precondition: the only ones a ``"conflict"`` applies to."""
_WRITE_OPS: tuple[StorageOp, ...] = ("write", "create", "delete_key")
"""The calls that change the store: the ones an unknown outcome applies to."""
_KIND_OPS: dict[FaultKind, tuple[StorageOp, ...]] = {
    "conflict": _CAS_OPS,
    "ambiguous": _WRITE_OPS,
    "ambiguous_lost": _WRITE_OPS,
    "error": STORAGE_OPS,
    "latency": STORAGE_OPS,
}
"""The calls each fault kind applies to (and targets by default)."""


class InjectedFault(NamedTuple):
    """One fault that was injected: which call, on which key, of what kind."""

    op: StorageOp
    key: str
    kind: FaultKind
    source: Literal["inject", "rate"]
    """``"inject"`` for an on-demand fault, ``"rate"`` for a random one."""


@dataclass
class _Injection:
    kind: FaultKind
    ops: frozenset[StorageOp]
    remaining: int | None  # None: until cleared
    delay: float
    error: type[StorageUnavailable] | None


def _check_rate(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    return float(value)


def _check_delay(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _check_error_type(error: type[StorageUnavailable]) -> type[StorageUnavailable]:
    if not (isinstance(error, type) and issubclass(error, StorageUnavailable)):
        raise TypeError(f"error must be a StorageUnavailable subclass, got {error!r}")
    return error


class FaultyStorage:
    """A :class:`~trioq.Storage` that injects faults into the calls it passes on.

    Args:
        inner: the store to wrap.
        seed: seed of the random draws (``None``: unseeded, not reproducible).
        conflict_rate: probability that a ``write`` / ``create`` gets ``"conflict"``.
        error_rate: probability that any call gets ``"error"``.
        ambiguous_write_rate: probability that a ``write`` / ``create`` /
            ``delete_key`` gets ``"ambiguous"`` (lands, then reports an unknown
            outcome).
        ambiguous_lost_rate: probability that a ``write`` / ``create`` /
            ``delete_key`` gets ``"ambiguous_lost"`` (does not land, reports an
            unknown outcome).
        latency: seconds every call is delayed by, or a ``(low, high)`` range to draw
            each call's delay from uniformly (a seeded draw of its own, so latency does
            not change which faults the rates pick).
        spike_rate: probability that a call is delayed by ``spike`` seconds more (a
            latency spike; drawn on its own seeded stream, so spikes change neither
            the faults the rates pick nor the ``latency`` range's draws). A call that
            takes an on-demand ``"latency"`` injection gets that delay only.
        spike: seconds a spike adds to a call's delay.
        error_type: the :class:`~trioq.StorageUnavailable` subclass an ``"error"``
            fault raises; :class:`~trioq.StorageUnreachable` by default.

    The rates are exclusive: one draw per call picks at most one of them, so for writes
    their sum must not exceed 1. One draw is made per call whenever a rate is set, so
    the faults a seed produces depend only on the sequence of calls. An on-demand fault
    (see :meth:`inject`) takes precedence over the random one for that call.

    The rates, ``latency``, ``spike`` and ``error_type`` are plain attributes; a test may change
    them between calls (for example set the rates to 0 to let the store heal).
    """

    def __init__(
        self,
        inner: Storage,
        *,
        seed: int | None = None,
        conflict_rate: float = 0.0,
        error_rate: float = 0.0,
        ambiguous_write_rate: float = 0.0,
        ambiguous_lost_rate: float = 0.0,
        latency: float | tuple[float, float] = 0.0,
        spike_rate: float = 0.0,
        spike: float = 0.0,
        error_type: type[StorageUnavailable] = StorageUnreachable,
    ) -> None:
        self.inner = inner
        self.conflict_rate = _check_rate("conflict_rate", conflict_rate)
        self.error_rate = _check_rate("error_rate", error_rate)
        self.ambiguous_write_rate = _check_rate("ambiguous_write_rate", ambiguous_write_rate)
        self.ambiguous_lost_rate = _check_rate("ambiguous_lost_rate", ambiguous_lost_rate)
        write_sum = conflict_rate + error_rate + ambiguous_write_rate + ambiguous_lost_rate
        if write_sum > 1.0:
            raise ValueError(f"the fault rates of a write add up to {write_sum}, more than 1")
        if isinstance(latency, tuple):
            low, high = latency
            _check_delay("latency", low)
            _check_delay("latency", high)
            if low > high:
                raise ValueError(f"latency range must be (low, high) with low <= high: {latency}")
        else:
            _check_delay("latency", latency)
        self.latency = latency
        self.spike_rate = _check_rate("spike_rate", spike_rate)
        self.spike = _check_delay("spike", spike)
        self.error_type = _check_error_type(error_type)
        self._rng = random.Random(seed)
        self._latency_rng = random.Random(None if seed is None else f"{seed}:latency")
        self._spike_rng = random.Random(None if seed is None else f"{seed}:spike")
        self.spikes = 0
        """How many calls a latency spike delayed."""
        self._injections: list[_Injection] = []
        self.injected: collections.Counter[FaultKind] = collections.Counter()
        """How many faults of each kind were injected (on demand and at random)."""
        self.faults: list[InjectedFault] = []
        """Every injected fault, in order."""
        self.calls: collections.Counter[StorageOp] = collections.Counter()
        """How many calls of each op reached the wrapped store (including the write
        of an ``"ambiguous"`` fault, which did reach it)."""

    def describe(self) -> str:
        return f"{self.inner.describe()} (with injected faults)"

    # -- on demand -------------------------------------------------------------------

    def inject(
        self,
        kind: FaultKind,
        *,
        count: int | None = 1,
        ops: Iterable[StorageOp] | None = None,
        delay: float | None = None,
        error: type[StorageUnavailable] | None = None,
    ) -> None:
        """Make the next ``count`` matching calls fail with ``kind``.

        Args:
            kind: the fault to inject (see the module docstring).
            count: how many calls get it; ``None`` means every matching call until
                :meth:`clear` (an outage).
            ops: the calls it targets. Defaults to every call the kind applies to:
                ``("write", "create")`` for ``"conflict"``, ``("write", "create",
                "delete_key")`` for ``"ambiguous"`` and ``"ambiguous_lost"``, every
                op for ``"error"`` and ``"latency"``. Naming a call the kind does not
                apply to raises :class:`ValueError`.
            delay: for ``"latency"`` only (and required there): seconds to delay.
            error: for ``"error"`` only: the exception class to raise instead of
                ``error_type``.

        Injections are served in the order they were made: a call takes one from the
        oldest injection that targets its op. A ``"latency"`` injection combines with
        another fault: a call takes at most one latency injection and at most one other.
        A call takes its injections when it starts, so a call that is cancelled during
        its delay uses them up (its fault is then not counted in :attr:`injected`).

        Example: the next write lands, then reports an unknown outcome::

            storage.inject("ambiguous", ops=["write"])
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        if count is not None and count < 1:
            raise ValueError(f"count must be >= 1 or None, got {count!r}")
        applicable = _KIND_OPS[kind]
        if ops is None:
            targets = frozenset(applicable)
        else:
            targets = frozenset(ops)
            unknown = targets - set(STORAGE_OPS)
            if unknown or not targets:
                raise ValueError(f"ops must be a non-empty subset of {STORAGE_OPS}, got {ops!r}")
            if not targets <= set(applicable):
                names = f"{', '.join(applicable[:-1])} and {applicable[-1]}"
                raise ValueError(f"{kind!r} applies to {names} only, got {ops!r}")
        if kind == "latency":
            if delay is None:
                raise ValueError("a 'latency' injection needs delay= (seconds)")
            delay = _check_delay("delay", delay)
        elif delay is not None:
            raise ValueError(f"delay= applies to 'latency' only, not {kind!r}")
        if error is not None:
            if kind != "error":
                raise ValueError(f"error= applies to 'error' only, not {kind!r}")
            _check_error_type(error)
        self._injections.append(_Injection(kind, targets, count, delay or 0.0, error))

    def clear(self) -> None:
        """Drop every pending on-demand injection (the rates stay as they are)."""
        self._injections.clear()

    def pending(self) -> int:
        """How many on-demand injections are still waiting for a call (an unlimited
        one counts as one)."""
        return len(self._injections)

    # -- the storage protocol ----------------------------------------------------------

    async def read(self, key: str) -> Versioned | None:
        await self._before("read", key)
        self.calls["read"] += 1
        return await self.inner.read(key)

    async def version(self, key: str) -> str | None:
        await self._before("version", key)
        self.calls["version"] += 1
        return await self.inner.version(key)

    async def write(self, key: str, data: bytes, *, if_match: str) -> str:
        ambiguous = await self._before("write", key)
        self.calls["write"] += 1
        if not ambiguous:
            return await self.inner.write(key, data, if_match=if_match)
        try:
            version = await self.inner.write(key, data, if_match=if_match)
        except CASConflict as exc:
            raise self._unknown("write", key, "the write was rejected") from exc
        raise self._unknown("write", key, f"the write landed as version {version!r}")

    async def create(self, key: str, data: bytes) -> str:
        ambiguous = await self._before("create", key)
        self.calls["create"] += 1
        if not ambiguous:
            return await self.inner.create(key, data)
        try:
            version = await self.inner.create(key, data)
        except CASConflict as exc:
            raise self._unknown("create", key, "the create was rejected") from exc
        raise self._unknown("create", key, f"the create landed as version {version!r}")

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        # Faults on a listing are recorded with the prefix as their key.
        await self._before("list_keys", prefix)
        self.calls["list_keys"] += 1
        return await self.inner.list_keys(prefix, start_after=start_after, limit=limit)

    async def delete_key(self, key: str) -> None:
        ambiguous = await self._before("delete_key", key)
        self.calls["delete_key"] += 1
        if not ambiguous:
            await self.inner.delete_key(key)
            return
        try:
            await self.inner.delete_key(key)
        except StorageUnavailable as exc:
            raise self._unknown("delete_key", key, "the delete failed") from exc
        raise self._unknown("delete_key", key, "the delete landed")

    # -- internals ---------------------------------------------------------------------

    def _take_injection(self, op: StorageOp, *, latency: bool) -> _Injection | None:
        for index, injection in enumerate(self._injections):
            if (injection.kind == "latency") == latency and op in injection.ops:
                if injection.remaining is not None:
                    injection.remaining -= 1
                    if injection.remaining == 0:
                        del self._injections[index]
                return injection
        return None

    def _draw(self, op: StorageOp) -> FaultKind | None:
        rates: list[tuple[FaultKind, float]] = [("error", self.error_rate)]
        if op in _CAS_OPS:
            rates.append(("conflict", self.conflict_rate))
        if op in _WRITE_OPS:
            rates += [
                ("ambiguous", self.ambiguous_write_rate),
                ("ambiguous_lost", self.ambiguous_lost_rate),
            ]
        if not (
            self.error_rate
            or self.conflict_rate
            or self.ambiguous_write_rate
            or self.ambiguous_lost_rate
        ):
            return None  # no rate set: no draw, so pass-through costs no randomness
        point = self._rng.random()
        for kind, rate in rates:
            if point < rate:
                return kind
            point -= rate
        return None

    def _spiked(self) -> bool:
        """Whether this call gets a latency spike (no draw when spikes are off)."""
        if not (self.spike_rate and self.spike):
            return False
        if self._spike_rng.random() >= self.spike_rate:
            return False
        self.spikes += 1
        return True

    def _record(self, op: StorageOp, key: str, kind: FaultKind, *, on_demand: bool) -> None:
        self.injected[kind] += 1
        self.faults.append(InjectedFault(op, key, kind, "inject" if on_demand else "rate"))

    async def _before(self, op: StorageOp, key: str) -> bool:
        """Delay and raise as injected; return whether the call must be made ambiguous."""
        # Take everything that applies to this call before the first checkpoint, so
        # concurrent calls are matched to injections in the order they were made.
        latency_injection = self._take_injection(op, latency=True)
        fault_injection = self._take_injection(op, latency=False)
        drawn = self._draw(op)
        if latency_injection is not None:
            delay = latency_injection.delay
        elif isinstance(self.latency, tuple):
            delay = self._latency_rng.uniform(*self.latency)
        else:
            delay = self.latency
        if latency_injection is None and self._spiked():
            delay += self.spike
        kind: FaultKind | None
        if fault_injection is not None:
            kind, error = fault_injection.kind, fault_injection.error
        else:
            kind, error = drawn, None

        if latency_injection is not None or delay > 0:
            self._record(op, key, "latency", on_demand=latency_injection is not None)
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()
        # A call cancelled during its delay has used up its injection, but the fault it
        # would have raised is not counted.
        if kind is not None:
            self._record(op, key, kind, on_demand=fault_injection is not None)

        where = self.inner.describe()
        if kind == "conflict":
            raise CASConflict(f"{where}: injected conflict on {op} {key!r}")
        if kind == "error":
            raise (error or self.error_type)(f"{where}: injected error on {op} {key!r}")
        if kind == "ambiguous_lost":
            raise WriteOutcomeUnknown(
                f"{where}: injected unknown outcome on {op} {key!r} (the request was lost)"
            )
        return kind == "ambiguous"

    def _unknown(self, op: StorageOp, key: str, what: str) -> WriteOutcomeUnknown:
        return WriteOutcomeUnknown(
            f"{self.inner.describe()}: injected unknown outcome on {op} {key!r} ({what}, "
            "but its answer was lost)"
        )
