"""The election and fencing decisions (``trioq.core._election``), without I/O.

Each table of the module docstring is checked row by row, then exhaustively: every
combination of the inputs' interesting values against the rules written out as a
specification here, so a change to a verdict anywhere in the space shows up.
Nothing here reads storage, sleeps or looks at a clock.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from trioq.core._codec import LeaderInfo
from trioq.core._election import (
    Candidacy,
    Candidate,
    Fence,
    Sighting,
    TakeoverRequest,
    Verdict,
    decide,
    earlier_life,
    is_ours,
    judge_stored,
)

TIMEOUT = 10.0
SEEN_AT = 100.0
VERSION = "v7"
ME = "me"
MY_URL = "http://me:8080"


def leader(
    broker_id: str = "other", url: str = "http://other:8080", *, released: bool = False
) -> LeaderInfo:
    return LeaderInfo(broker_id, url, epoch=3, lease_at=1_700_000_000_000, released=released)


def me(*, exclusive: bool = False, create: bool = True) -> Candidate:
    return Candidate(ME, Candidacy(url=MY_URL, exclusive_url=exclusive, create=create))


def present(stored: LeaderInfo | None, *, since: float = SEEN_AT) -> Sighting:
    return Sighting(present=True, version=VERSION, leader=stored, since=since)


ABSENT = Sighting(present=False, since=SEEN_AT)


def verdict(
    sighting: Sighting,
    *,
    starting: bool,
    candidate: Candidate | None = None,
    seen_before: bool = False,
    request: TakeoverRequest | None = None,
    age: float = 0.0,
) -> Verdict:
    return decide(
        candidate or me(),
        sighting,
        starting=starting,
        seen_before=seen_before,
        request=request,
        now=sighting.since + age,
        lease_timeout=TIMEOUT,
    )


# -- the election table, row by row ----------------------------------------------------


@pytest.mark.parametrize("starting", [True, False], ids=["starting", "standby"])
def test_nothing_stored_is_created_only_by_an_engine_that_may_and_never_saw_one(
    starting: bool,
) -> None:
    assert verdict(ABSENT, starting=starting) is Verdict.CREATE
    refused = verdict(ABSENT, starting=starting, candidate=me(create=False))
    assert refused is Verdict.REFUSE


def test_a_document_that_vanished_is_refused_at_start_and_waited_for_by_a_standby() -> None:
    assert verdict(ABSENT, starting=True, seen_before=True) is Verdict.REFUSE
    assert verdict(ABSENT, starting=False, seen_before=True) is Verdict.STAND_BY


@pytest.mark.parametrize("starting", [True, False], ids=["starting", "standby"])
@pytest.mark.parametrize("stored", [None, leader(released=True)], ids=["no leader", "released"])
def test_a_document_nobody_leads_is_taken_over(starting: bool, stored: LeaderInfo | None) -> None:
    assert verdict(present(stored), starting=starting) is Verdict.TAKE_OVER


def test_a_restart_takes_its_own_lease_back_at_once() -> None:
    mine = present(leader(ME))
    assert verdict(mine, starting=True) is Verdict.TAKE_OVER
    # a standby that met another broker under its id waits like for anyone else
    assert verdict(mine, starting=False) is Verdict.STAND_BY


def test_a_restart_on_its_exclusive_url_takes_the_lease_back_at_once() -> None:
    on_my_url = present(leader("earlier-life", MY_URL))
    assert verdict(on_my_url, starting=True, candidate=me(exclusive=True)) is Verdict.TAKE_OVER
    # the URL may be shared (a proxy, a loopback address through a remote bucket)
    assert verdict(on_my_url, starting=True) is Verdict.STAND_BY
    assert verdict(on_my_url, starting=False, candidate=me(exclusive=True)) is Verdict.STAND_BY
    # an exclusive but empty URL matches nothing
    nameless = Candidate(ME, Candidacy(url="", exclusive_url=True))
    assert verdict(present(leader("x", "")), starting=True, candidate=nameless) is Verdict.STAND_BY


def test_a_live_leader_is_stood_by() -> None:
    assert verdict(present(leader()), starting=True) is Verdict.STAND_BY
    assert verdict(present(leader()), starting=False, age=TIMEOUT - 0.001) is Verdict.STAND_BY


def test_a_standby_takes_over_once_the_version_was_still_for_the_lease_timeout() -> None:
    assert verdict(present(leader()), starting=False, age=TIMEOUT) is Verdict.TAKE_OVER
    assert verdict(present(leader()), starting=False, age=TIMEOUT + 5) is Verdict.TAKE_OVER
    # the stored lease time plays no part (clocks across hosts are not trusted)
    old = LeaderInfo("other", "http://other", epoch=3, lease_at=0)
    assert verdict(present(old), starting=False) is Verdict.STAND_BY
    # a starting engine has just seen the version: it never calls a lease stale
    assert verdict(present(leader()), starting=True, age=10 * TIMEOUT) is Verdict.STAND_BY


@pytest.mark.parametrize(
    ("request_version", "expected"),
    [(VERSION, Verdict.TAKE_OVER), (None, Verdict.TAKE_OVER), ("v6", Verdict.STAND_BY)],
    ids=["this version", "unconditional", "another version"],
)
def test_a_forced_takeover_applies_to_the_version_it_names(
    request_version: str | None, expected: Verdict
) -> None:
    request = TakeoverRequest(request_version)
    assert verdict(present(leader()), starting=False, request=request) is expected
    # only a standby acts on a request (a starting engine has not stood by yet)
    assert verdict(present(leader()), starting=True, request=request) is Verdict.STAND_BY


# -- the election, exhaustively ----------------------------------------------------------


@dataclass(frozen=True)
class Case:
    present: bool
    stored: str  # "none" | "released" | "my id" | "my url" | "other"
    starting: bool
    seen_before: bool
    create: bool
    exclusive: bool
    request: str  # "none" | "this" | "any" | "stale version"
    age: float

    def sighting(self) -> Sighting:
        if not self.present:
            return Sighting(present=False, since=SEEN_AT)
        stored = {
            "none": None,
            "released": leader(released=True),
            "my id": leader(ME, "http://elsewhere"),
            "my url": leader("someone", MY_URL),
            "other": leader(),
        }[self.stored]
        return present(stored)

    def takeover_request(self) -> TakeoverRequest | None:
        return {
            "none": None,
            "this": TakeoverRequest(VERSION),
            "any": TakeoverRequest(None),
            "stale version": TakeoverRequest("v1"),
        }[self.request]

    def expected(self) -> Verdict:
        """The election table, written out independently of the implementation."""
        if not self.present:
            if self.seen_before:
                return Verdict.REFUSE if self.starting else Verdict.STAND_BY
            return Verdict.CREATE if self.create else Verdict.REFUSE
        if self.stored in ("none", "released"):
            return Verdict.TAKE_OVER
        if self.starting:
            earlier = self.stored == "my id" or (self.stored == "my url" and self.exclusive)
            return Verdict.TAKE_OVER if earlier else Verdict.STAND_BY
        if self.request in ("this", "any") or self.age >= TIMEOUT:
            return Verdict.TAKE_OVER
        return Verdict.STAND_BY


ALL_CASES = [
    Case(*values)
    for values in itertools.product(
        [False, True],
        ["none", "released", "my id", "my url", "other"],
        [True, False],
        [False, True],
        [True, False],
        [False, True],
        ["none", "this", "any", "stale version"],
        [0.0, TIMEOUT - 0.5, TIMEOUT, TIMEOUT + 0.5],
    )
]


def test_every_election_case_follows_the_table() -> None:
    assert len(ALL_CASES) == 2 * 5 * 2 * 2 * 2 * 2 * 4 * 4
    wrong = []
    for case in ALL_CASES:
        got = verdict(
            case.sighting(),
            starting=case.starting,
            candidate=me(exclusive=case.exclusive, create=case.create),
            seen_before=case.seen_before,
            request=case.takeover_request(),
            age=case.age,
        )
        if got is not case.expected():
            wrong.append((case, got))
    assert wrong == []


def test_the_safety_rules_hold_in_every_case() -> None:
    for case in ALL_CASES:
        got = case.expected()
        # a queue that existed is never replaced by an empty one
        if got is Verdict.CREATE:
            assert not case.present, case
            assert not case.seen_before, case
            assert case.create, case
        # a document that is there is never created or refused
        if case.present:
            assert got in (Verdict.TAKE_OVER, Verdict.STAND_BY), case
        # a live foreign leader, seen changing within the timeout, is only taken over
        # on request
        if case.present and case.stored == "other" and got is Verdict.TAKE_OVER:
            assert not case.starting, case
            assert case.request in ("this", "any") or case.age >= TIMEOUT, case


# -- who is who ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "exclusive", "expected"),
    [
        (leader(ME, "http://elsewhere"), False, True),
        (leader("x", MY_URL), True, True),
        (leader("x", MY_URL), False, False),
        (leader("x", "http://elsewhere"), True, False),
    ],
)
def test_earlier_life(stored: LeaderInfo, exclusive: bool, expected: bool) -> None:
    assert earlier_life(me(exclusive=exclusive), stored) is expected


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (None, False),
        (LeaderInfo(ME, "", 3, 0), True),
        (LeaderInfo(ME, "", 4, 0), False),  # another life of this broker id took over
        (LeaderInfo("b", "", 3, 0), False),
        (LeaderInfo(ME, "", 3, 0, released=True), True),
    ],
)
def test_is_ours_means_same_broker_and_epoch(stored: LeaderInfo | None, expected: bool) -> None:
    assert is_ours(stored, ME, 3) is expected


# -- fencing ---------------------------------------------------------------------------

STORED = {
    "none": None,
    "ours": LeaderInfo(ME, MY_URL, 3, 0),
    "our id, newer epoch": LeaderInfo(ME, MY_URL, 4, 0),
    "other id, our epoch": LeaderInfo("b", "http://b", 3, 0),
    "other": LeaderInfo("b", "http://b", 4, 0),
}


def judge(stored: str, *, same: bool, ambiguous: bool, unchanged: bool) -> Fence:
    return judge_stored(
        STORED[stored],
        same_bytes=same,
        broker_id=ME,
        epoch=3,
        ambiguous=ambiguous,
        version_unchanged=unchanged,
    )


def expected_fence(stored: str, *, same: bool, ambiguous: bool, unchanged: bool) -> Fence:
    """The fencing table, written out."""
    if same:
        return Fence.LANDED
    if stored != "ours":
        return Fence.STEP_DOWN
    if ambiguous and unchanged:
        return Fence.RETRY
    return Fence.ADOPT


def test_every_fencing_case_follows_the_table() -> None:
    cases = list(itertools.product(STORED, [False, True], [False, True], [False, True]))
    assert len(cases) == 40
    for stored, same, ambiguous, unchanged in cases:
        flags = {"same": same, "ambiguous": ambiguous, "unchanged": unchanged}
        assert judge(stored, **flags) is expected_fence(stored, **flags), (stored, flags)


@pytest.mark.parametrize(
    ("stored", "same", "ambiguous", "unchanged", "fence"),
    [
        # a conflict on bytes that are ours: the write landed (an earlier attempt)
        ("ours", True, False, False, Fence.LANDED),
        # a conflict: another leader fenced us, whatever our id
        ("other", False, False, False, Fence.STEP_DOWN),
        ("our id, newer epoch", False, False, False, Fence.STEP_DOWN),
        ("other id, our epoch", False, False, False, Fence.STEP_DOWN),
        ("none", False, True, True, Fence.STEP_DOWN),
        # an unknown outcome with nothing changed: it did not land, write again
        ("ours", False, True, True, Fence.RETRY),
        # ours, but another write of ours: adopt it, never re-apply over it
        ("ours", False, False, False, Fence.ADOPT),
        ("ours", False, True, False, Fence.ADOPT),
        # a reload (not a write) never retries
        ("ours", False, False, True, Fence.ADOPT),
    ],
)
def test_fencing_rows(
    stored: str, same: bool, ambiguous: bool, unchanged: bool, fence: Fence
) -> None:
    assert judge(stored, same=same, ambiguous=ambiguous, unchanged=unchanged) is fence


def test_a_fenced_leader_never_retries_or_adopts() -> None:
    for stored in STORED:
        if stored == "ours":
            continue
        for ambiguous, unchanged in itertools.product([False, True], repeat=2):
            fence = judge(stored, same=False, ambiguous=ambiguous, unchanged=unchanged)
            assert fence is Fence.STEP_DOWN
