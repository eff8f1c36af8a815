"""FaultyStorage: every fault kind, on demand and at seeded rates, over MemoryStorage."""

from __future__ import annotations

import collections
import contextlib
import math

import pytest
import trio
import trio.testing

import trioq
from trioq import (
    BucketNotFound,
    CASConflict,
    FaultyStorage,
    MemoryStorage,
    Storage,
    StorageAuthError,
    StorageUnreachable,
    Versioned,
    WriteOutcomeUnknown,
)
from trioq.storage._faulty import InjectedFault

KEY = "queue.json"


async def _seeded(**options: object) -> tuple[FaultyStorage, MemoryStorage, str]:
    """A FaultyStorage over a MemoryStorage that already holds KEY = b"v0"."""
    inner = MemoryStorage()
    version = await inner.create(KEY, b"v0")
    return FaultyStorage(inner, **options), inner, version  # type: ignore[arg-type]


def _stored(inner: MemoryStorage, key: str = KEY) -> Versioned | None:
    return inner.peek(key)


def test_satisfies_the_storage_protocol() -> None:
    storage = FaultyStorage(MemoryStorage())
    assert isinstance(storage, Storage)
    assert trioq.FaultyStorage is FaultyStorage
    assert "memory storage" in storage.describe()


async def test_passes_through_when_no_fault_is_configured(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = MemoryStorage()
    storage = FaultyStorage(inner, seed=1)
    assert await storage.read(KEY) is None
    assert await storage.version(KEY) is None
    v1 = await storage.create(KEY, b"a")
    assert await storage.read(KEY) == Versioned(b"a", v1)
    assert await storage.version(KEY) == v1
    v2 = await storage.write(KEY, b"b", if_match=v1)
    assert _stored(inner) == Versioned(b"b", v2)
    # The wrapped store's own answers pass through unchanged.
    with pytest.raises(CASConflict):
        await storage.write(KEY, b"c", if_match=v1)
    with pytest.raises(CASConflict):
        await storage.create(KEY, b"c")
    assert storage.injected == {}
    assert storage.faults == []
    assert storage.calls == {"read": 2, "version": 2, "create": 2, "write": 2}
    assert await storage.list_keys("") == [KEY]
    await storage.delete_key(KEY)
    assert await storage.list_keys("", limit=5) == []
    assert storage.calls["list_keys"] == 2
    assert storage.calls["delete_key"] == 1
    assert storage.injected == {}
    assert trio.current_time() == 0.0


# -- on demand -------------------------------------------------------------------------


async def test_injected_conflict_leaves_the_store_unchanged() -> None:
    storage, inner, version = await _seeded()
    storage.inject("conflict")
    with pytest.raises(CASConflict, match="injected conflict on write"):
        await storage.write(KEY, b"v1", if_match=version)
    assert _stored(inner) == Versioned(b"v0", version)
    assert storage.calls["write"] == 0
    assert storage.injected == {"conflict": 1}
    assert storage.faults == [InjectedFault("write", KEY, "conflict", "inject")]
    # Used up: the retry goes through.
    await storage.write(KEY, b"v1", if_match=version)
    assert _stored(inner).data == b"v1"  # type: ignore[union-attr]


async def test_injected_conflict_on_create_creates_nothing() -> None:
    inner = MemoryStorage()
    storage = FaultyStorage(inner)
    storage.inject("conflict")
    with pytest.raises(CASConflict):
        await storage.create(KEY, b"x")
    assert _stored(inner) is None


async def test_injected_error_raises_storage_unreachable_without_a_call() -> None:
    storage, inner, version = await _seeded()
    storage.inject("error", count=4)
    for call in (
        storage.read(KEY),
        storage.version(KEY),
        storage.write(KEY, b"v1", if_match=version),
        storage.create("other", b"x"),
    ):
        with pytest.raises(StorageUnreachable, match=r"memory storage .*injected error"):
            await call
    assert _stored(inner) == Versioned(b"v0", version)
    assert _stored(inner, "other") is None
    assert storage.calls == {}
    assert storage.injected == {"error": 4}
    assert [fault.op for fault in storage.faults] == ["read", "version", "write", "create"]


async def test_error_type_is_configurable() -> None:
    storage, _, _ = await _seeded(error_type=StorageAuthError)
    storage.inject("error")
    storage.inject("error", error=BucketNotFound)
    with pytest.raises(StorageAuthError):
        await storage.read(KEY)
    with pytest.raises(BucketNotFound):
        await storage.read(KEY)
    with pytest.raises(TypeError):
        FaultyStorage(MemoryStorage(), error_type=ValueError)  # type: ignore[arg-type]


async def test_ambiguous_write_lands_then_reports_an_unknown_outcome() -> None:
    storage, inner, version = await _seeded()
    storage.inject("ambiguous", ops=["write"])
    with pytest.raises(WriteOutcomeUnknown, match="landed"):
        await storage.write(KEY, b"v1", if_match=version)
    # It really landed: the wrapped store has the new document at a new version...
    landed = _stored(inner)
    assert landed is not None
    assert landed.data == b"v1"
    assert landed.version != version
    # ...which a caller finds by reading back; a blind retry would be a false conflict.
    assert await storage.read(KEY) == landed
    with pytest.raises(CASConflict):
        await storage.write(KEY, b"v1", if_match=version)
    assert storage.calls["write"] == 2
    assert storage.injected == {"ambiguous": 1}


async def test_ambiguous_create_lands_then_reports_an_unknown_outcome() -> None:
    inner = MemoryStorage()
    storage = FaultyStorage(inner)
    storage.inject("ambiguous")
    with pytest.raises(WriteOutcomeUnknown):
        await storage.create(KEY, b"first")
    assert _stored(inner).data == b"first"  # type: ignore[union-attr]


async def test_ambiguous_write_that_the_store_rejects_is_still_unknown() -> None:
    storage, inner, version = await _seeded()
    storage.inject("ambiguous")
    with pytest.raises(WriteOutcomeUnknown, match="rejected") as info:
        await storage.write(KEY, b"v1", if_match="stale")
    assert isinstance(info.value.__cause__, CASConflict)
    assert _stored(inner) == Versioned(b"v0", version)


async def test_ambiguous_lost_does_not_land() -> None:
    storage, inner, version = await _seeded()
    storage.inject("ambiguous_lost", count=2)
    with pytest.raises(WriteOutcomeUnknown, match="lost"):
        await storage.write(KEY, b"v1", if_match=version)
    with pytest.raises(WriteOutcomeUnknown):
        await storage.create("other", b"x")
    assert _stored(inner) == Versioned(b"v0", version)
    assert _stored(inner, "other") is None
    assert storage.calls == {}
    assert storage.injected == {"ambiguous_lost": 2}
    # Reading back finds the old document, so the caller knows to write again.
    assert await storage.read(KEY) == Versioned(b"v0", version)
    await storage.write(KEY, b"v1", if_match=version)


async def test_injected_latency_delays_exactly(autojump_clock: trio.testing.MockClock) -> None:
    storage, inner, version = await _seeded()
    storage.inject("latency", delay=2.5, ops=["write"])
    assert await storage.read(KEY) is not None  # not targeted
    assert trio.current_time() == 0.0
    await storage.write(KEY, b"v1", if_match=version)
    assert trio.current_time() == 2.5
    assert _stored(inner).data == b"v1"  # type: ignore[union-attr]
    assert storage.injected == {"latency": 1}
    assert storage.faults == [InjectedFault("write", KEY, "latency", "inject")]


async def test_latency_combines_with_another_fault(autojump_clock: trio.testing.MockClock) -> None:
    storage, inner, version = await _seeded()
    storage.inject("latency", delay=30)
    storage.inject("ambiguous")
    with pytest.raises(WriteOutcomeUnknown):
        await storage.write(KEY, b"v1", if_match=version)
    assert trio.current_time() == 30.0
    assert _stored(inner).data == b"v1"  # type: ignore[union-attr]
    assert storage.injected == {"latency": 1, "ambiguous": 1}


async def test_an_outage_lasts_until_cleared(autojump_clock: trio.testing.MockClock) -> None:
    storage, _, version = await _seeded()
    storage.inject("error", count=None)
    for _ in range(25):
        with pytest.raises(StorageUnreachable):
            await storage.version(KEY)
    assert storage.pending() == 1
    storage.clear()
    assert storage.pending() == 0
    assert await storage.version(KEY) == version
    assert storage.injected == {"error": 25}


async def test_injections_target_their_ops_and_are_served_in_order() -> None:
    storage, _, version = await _seeded()
    storage.inject("error", ops=["read"])
    storage.inject("conflict", ops=["write"])
    storage.inject("error", ops=["read", "write"], error=BucketNotFound)
    assert storage.pending() == 3
    assert await storage.version(KEY) == version  # nothing targets `version`
    with pytest.raises(CASConflict):  # oldest injection that targets `write`
        await storage.write(KEY, b"v1", if_match=version)
    with pytest.raises(StorageUnreachable) as info:  # oldest that targets `read`
        await storage.read(KEY)
    assert not isinstance(info.value, BucketNotFound)
    with pytest.raises(BucketNotFound):
        await storage.write(KEY, b"v1", if_match=version)
    assert storage.pending() == 0
    await storage.write(KEY, b"v1", if_match=version)


async def test_an_on_demand_fault_takes_precedence_over_the_rates() -> None:
    storage, _, version = await _seeded(seed=3, error_rate=1.0)
    storage.inject("ambiguous_lost")
    with pytest.raises(WriteOutcomeUnknown):
        await storage.write(KEY, b"v1", if_match=version)
    with pytest.raises(StorageUnreachable):
        await storage.write(KEY, b"v1", if_match=version)
    assert [fault.source for fault in storage.faults] == ["inject", "rate"]


async def test_a_call_cancelled_during_its_delay_never_reaches_the_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage, inner, version = await _seeded()
    storage.inject("latency", delay=10)
    storage.inject("ambiguous")
    with trio.move_on_after(1):
        await storage.write(KEY, b"v1", if_match=version)
    assert _stored(inner) == Versioned(b"v0", version)
    assert storage.calls == {}
    # The injections were used up by the cancelled call; the delay began, the fault
    # was never raised.
    assert storage.pending() == 0
    assert storage.injected == {"latency": 1}


@pytest.mark.parametrize(
    ("kind", "kwargs", "message"),
    [
        ("bogus", {}, "unknown fault kind"),
        ("error", {"count": 0}, "count"),
        ("conflict", {"ops": ["read"]}, "write and create only"),
        ("ambiguous", {"ops": ["version", "write"]}, "write, create and delete_key only"),
        ("ambiguous_lost", {"ops": ["list_keys"]}, "write, create and delete_key only"),
        ("conflict", {"ops": ["delete_key"]}, "write and create only"),
        ("ambiguous_lost", {"ops": ["delete"]}, "subset"),
        ("error", {"ops": []}, "subset"),
        ("latency", {}, "needs delay"),
        ("latency", {"delay": -1.0}, "delay"),
        ("conflict", {"delay": 1.0}, "latency' only"),
        ("conflict", {"error": BucketNotFound}, "'error' only"),
    ],
)
def test_inject_rejects_what_cannot_happen(
    kind: str, kwargs: dict[str, object], message: str
) -> None:
    storage = FaultyStorage(MemoryStorage())
    with pytest.raises(ValueError, match=message):
        storage.inject(kind, **kwargs)  # type: ignore[arg-type]
    assert storage.pending() == 0


# -- at random -------------------------------------------------------------------------


async def _hammer(storage: FaultyStorage, inner: MemoryStorage, n: int) -> dict[str, int]:
    """n writes, each with the version the caller last knew; tally what came back."""
    outcomes = {"ok": 0, "conflict": 0, "error": 0, "unknown": 0}
    stored = inner.peek(KEY)
    assert stored is not None
    version = stored.version
    for i in range(n):
        try:
            version = await storage.write(KEY, b"%d" % i, if_match=version)
        except CASConflict:
            outcomes["conflict"] += 1
        except WriteOutcomeUnknown:
            outcomes["unknown"] += 1
            # Resolve by reading back, as the broker does.
            current = await storage.inner.read(KEY)
            assert current is not None
            version = current.version
        except StorageUnreachable:
            outcomes["error"] += 1
        else:
            outcomes["ok"] += 1
    return outcomes


async def test_rates_inject_each_kind_reproducibly() -> None:
    rates = {
        "conflict_rate": 0.1,
        "error_rate": 0.1,
        "ambiguous_write_rate": 0.1,
        "ambiguous_lost_rate": 0.1,
    }
    runs = []
    for _ in range(2):
        storage, inner, _ = await _seeded(seed=1234, **rates)
        outcomes = await _hammer(storage, inner, 2000)
        runs.append((storage.faults, outcomes))
        # What the caller saw matches what was injected.
        assert outcomes["conflict"] == storage.injected["conflict"]
        assert outcomes["error"] == storage.injected["error"]
        assert outcomes["unknown"] == (
            storage.injected["ambiguous"] + storage.injected["ambiguous_lost"]
        )
        assert outcomes["ok"] == 2000 - sum(storage.injected.values())
        # Each kind about 10% of 2000.
        for kind in ("conflict", "error", "ambiguous", "ambiguous_lost"):
            assert 140 <= storage.injected[kind] <= 260, storage.injected
        # Exactly the ok and ambiguous writes reached and changed the store.
        assert storage.calls["write"] == outcomes["ok"] + storage.injected["ambiguous"]
        assert inner.peek(KEY) == await storage.read(KEY)
    assert runs[0] == runs[1]  # same seed, same calls: same faults

    other, inner, _ = await _seeded(seed=4321, **rates)
    await _hammer(other, inner, 2000)
    assert other.faults != runs[0][0]


async def test_error_rate_applies_to_reads_and_other_rates_do_not() -> None:
    storage, _, _ = await _seeded(seed=7, error_rate=0.25, conflict_rate=0.5)
    errors = 0
    for _ in range(1000):
        try:
            await storage.read(KEY)
        except StorageUnreachable:
            errors += 1
    assert errors == storage.injected["error"]
    assert 200 <= errors <= 300
    assert set(storage.injected) == {"error"}


async def test_rate_one_always_faults() -> None:
    storage, inner, version = await _seeded(seed=0, ambiguous_write_rate=1.0)
    for i in range(5):
        with pytest.raises(WriteOutcomeUnknown):
            await storage.write(KEY, b"%d" % i, if_match=version)
        version = _stored(inner).version  # type: ignore[union-attr]
    assert _stored(inner).data == b"4"  # type: ignore[union-attr]
    assert storage.injected == {"ambiguous": 5}


async def test_rates_can_be_changed_to_heal_the_store() -> None:
    storage, _, version = await _seeded(seed=0, error_rate=1.0)
    with pytest.raises(StorageUnreachable):
        await storage.version(KEY)
    storage.error_rate = 0.0
    assert await storage.version(KEY) == version


async def test_fixed_latency_delays_every_call(autojump_clock: trio.testing.MockClock) -> None:
    storage, _, version = await _seeded(latency=0.2)
    await storage.read(KEY)
    await storage.write(KEY, b"v1", if_match=version)
    assert trio.current_time() == pytest.approx(0.4)
    assert storage.injected == {"latency": 2}


async def test_latency_range_is_seeded(autojump_clock: trio.testing.MockClock) -> None:
    async def delays(seed: int) -> list[float]:
        storage, _, _ = await _seeded(seed=seed, latency=(0.1, 0.3))
        found = []
        for _ in range(50):
            start = trio.current_time()
            await storage.version(KEY)
            found.append(trio.current_time() - start)
        return found

    first = await delays(5)
    assert all(0.1 - 1e-9 <= delay <= 0.3 + 1e-9 for delay in first)
    assert len(set(first)) > 1
    assert await delays(5) == pytest.approx(first)
    assert await delays(6) != pytest.approx(first)


async def test_latency_does_not_change_which_faults_a_seed_picks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def faults(latency: float | tuple[float, float]) -> list[InjectedFault]:
        storage, inner, _ = await _seeded(seed=99, conflict_rate=0.3, latency=latency)
        await _hammer(storage, inner, 200)
        return [fault for fault in storage.faults if fault.kind != "latency"]

    assert await faults(0.0) == await faults((0.1, 0.3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"conflict_rate": -0.1}, "conflict_rate"),
        ({"error_rate": 1.5}, "error_rate"),
        ({"ambiguous_write_rate": float("nan")}, "ambiguous_write_rate"),
        ({"conflict_rate": 0.6, "ambiguous_lost_rate": 0.6}, "add up to"),
        ({"latency": -1.0}, "latency"),
        ({"latency": (0.5, 0.1)}, "low <= high"),
        ({"latency": float("inf")}, "latency"),
    ],
)
def test_rejects_invalid_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaultyStorage(MemoryStorage(), **kwargs)  # type: ignore[arg-type]


async def test_latency_spikes_are_seeded_and_change_no_fault(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def run(seed: int, **spikes: float) -> tuple[list[float], list[InjectedFault], int]:
        storage, _, _ = await _seeded(seed=seed, error_rate=0.2, latency=0.01, **spikes)
        delays = []
        for _ in range(200):
            start = trio.current_time()
            with contextlib.suppress(StorageUnreachable):
                await storage.version(KEY)
            delays.append(round(trio.current_time() - start, 6))
        faults = [fault for fault in storage.faults if fault.kind != "latency"]
        return delays, faults, storage.spikes

    delays, faults, spikes = await run(3, spike_rate=0.1, spike=2.0)
    assert set(delays) == {0.01, 2.01}
    assert delays.count(2.01) == spikes
    assert 5 < spikes < 50
    assert await run(3, spike_rate=0.1, spike=2.0) == (delays, faults, spikes)
    assert (await run(4, spike_rate=0.1, spike=2.0))[0] != delays
    # spikes draw on their own stream: the same seed picks the same errors without them
    plain_delays, plain_faults, no_spikes = await run(3)
    assert (set(plain_delays), plain_faults, no_spikes) == ({0.01}, faults, 0)


async def test_an_injected_latency_replaces_the_spike(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage, _, _ = await _seeded(seed=0, spike_rate=1.0, spike=5.0)
    storage.inject("latency", delay=0.5)
    await storage.version(KEY)
    assert trio.current_time() == pytest.approx(0.5)
    await storage.version(KEY)
    assert trio.current_time() == pytest.approx(5.5)
    assert storage.spikes == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spike_rate": 1.1}, "spike_rate"),
        ({"spike": -2.0}, "spike"),
        ({"spike": math.inf}, "spike"),
    ],
)
def test_rejects_invalid_spikes(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaultyStorage(MemoryStorage(), **kwargs)  # type: ignore[arg-type]


# -- listing and deleting --------------------------------------------------------------


async def test_injected_error_on_list_and_delete() -> None:
    storage, inner, version = await _seeded()
    storage.inject("error", ops=["list_keys"])
    storage.inject("error", ops=["delete_key"], error=BucketNotFound)
    with pytest.raises(StorageUnreachable, match="injected error on list_keys 'log/'"):
        await storage.list_keys("log/")
    with pytest.raises(BucketNotFound, match="injected error on delete_key"):
        await storage.delete_key(KEY)
    assert _stored(inner) == Versioned(b"v0", version)  # the delete never arrived
    assert storage.calls == {}
    assert storage.faults == [
        InjectedFault("list_keys", "log/", "error", "inject"),
        InjectedFault("delete_key", KEY, "error", "inject"),
    ]
    assert await storage.list_keys("") == [KEY]  # served, the next calls pass


async def test_ambiguous_delete_lands_and_lost_delete_does_not() -> None:
    storage, inner, _ = await _seeded()
    await inner.create("other", b"x")
    storage.inject("ambiguous_lost", ops=["delete_key"])
    with pytest.raises(WriteOutcomeUnknown, match="request was lost"):
        await storage.delete_key(KEY)
    assert _stored(inner) is not None
    storage.inject("ambiguous")  # the default ops include delete_key
    with pytest.raises(WriteOutcomeUnknown, match="the delete landed"):
        await storage.delete_key(KEY)
    assert _stored(inner) is None
    # an ambiguous delete whose own answer was an error: still unknown
    storage.inject("ambiguous")
    storage.inner = FaultyStorage(inner, error_rate=1.0)
    with pytest.raises(WriteOutcomeUnknown, match="the delete failed"):
        await storage.delete_key("other")
    assert storage.injected == {"ambiguous_lost": 1, "ambiguous": 2}


async def test_latency_applies_to_list_and_delete(autojump_clock: trio.testing.MockClock) -> None:
    storage, _, _ = await _seeded()
    storage.inject("latency", delay=2.0, count=2)
    start = trio.current_time()
    assert await storage.list_keys("") == [KEY]
    await storage.delete_key(KEY)
    assert trio.current_time() - start == 4.0
    assert storage.injected == {"latency": 2}


async def test_rates_apply_to_list_and_delete_by_kind() -> None:
    """Errors reach every call; unknown outcomes reach deletes, never listings;
    conflicts reach neither (a delete has no precondition)."""
    storage, inner, _ = await _seeded(
        seed=11, error_rate=0.2, conflict_rate=0.2, ambiguous_write_rate=0.2
    )
    listed: collections.Counter[str] = collections.Counter()
    for _ in range(500):
        try:
            await storage.list_keys("")
        except StorageUnreachable:
            listed["error"] += 1
    assert set(storage.injected) == {"error"}
    assert 60 <= listed["error"] == storage.injected["error"] <= 140
    deleted: collections.Counter[str] = collections.Counter()
    for _ in range(500):
        try:
            await storage.delete_key(KEY)
        except WriteOutcomeUnknown:
            deleted["unknown"] += 1
        except StorageUnreachable:
            deleted["error"] += 1
    assert "conflict" not in storage.injected
    assert deleted["unknown"] == storage.injected["ambiguous"]
    assert 60 <= deleted["unknown"] <= 140
    assert 60 <= deleted["error"] <= 140
    assert inner.peek(KEY) is None
