"""Concurrent ``Client.submit()`` calls coalesced into bulk requests
(:class:`Coalescer`), without a task of its own, under trio or asyncio (anyio's
events and cancel scopes: trio's own under trio)."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from ._calls import own_copy
from ._errors import BrokerUnreachable, TrioqError
from ._wire import MAX_BATCH

MAX_SENDERS = 2
"""Bulk requests of coalesced submits in flight at once (per client)."""

BULK_BYTES = 1024 * 1024
"""Payload bytes one bulk request carries at most (a larger payload goes alone):
well under the broker's default request limit (8 MiB), so that coalescing never
makes a request too large for a broker on which each job alone fits."""

MAX_BULK = MAX_BATCH
"""Jobs one bulk request carries at most (the wire's limit)."""


BulkSend = Callable[[list[dict[str, Any]]], Awaitable[list["str | TrioqError"]]]
"""Sends one bulk request: each job's id or its own error, in input order."""


@dataclass(eq=False, slots=True)
class _Pending:
    """A ``submit()`` whose job waits for the bulk request that carries it."""

    item: dict[str, Any]
    size: int
    done: anyio.Event = field(default_factory=anyio.Event)
    """Set when :attr:`result` arrives, or when the caller is handed the duty to send."""
    result: str | TrioqError | None = None
    taken: bool = False
    """In a request (its outcome comes from there)."""
    withdrawn: bool = False
    """Its caller was cancelled before a sender took it: never sent."""
    sender: bool = False
    """Its caller holds one of the :data:`MAX_SENDERS` turns to send."""


class Coalescer:
    """Concurrent submits coalesced into bulk requests, with no task of its own
    (a :class:`~trioq.Client` is used without a nursery).

    A caller queues its job. If fewer than :data:`MAX_SENDERS` requests are in
    flight it becomes a sender at once: it takes everything queued (up to
    :data:`MAX_BULK` jobs and :data:`BULK_BYTES` of payloads), sends it in one
    request, gives each caller its own outcome, and hands its turn to the oldest
    caller still queued, who sends what queued up meanwhile. A lone submit goes at
    once, with no timer; under load each request carries what arrived while the
    previous one was out. The send is shielded (so the other callers in it get their
    outcome) and bounded by ``bound`` seconds; a sender cancelled before it sent
    hands its turn on the same way. asyncio's own cancellation (``task.cancel()``,
    ``asyncio.timeout``) goes through any shield: a sender cancelled that way mid-send
    gives the other callers in its request a :class:`~trioq.BrokerUnreachable`
    saying the outcome is unknown, rather than leaving them waiting.
    """

    def __init__(self, send: BulkSend, *, bound: float) -> None:
        self._send = send
        self._bound = bound
        self._queue: deque[_Pending] = deque()
        self._senders = 0

    async def submit(self, item: dict[str, Any], size: int) -> str | TrioqError:
        """The outcome of one job (its wire form, ``size`` payload bytes): its id,
        or the error the broker gave it, or the error of the request that carried it
        (returned, not raised)."""
        me = _Pending(item, size)
        self._queue.append(me)
        if self._senders < MAX_SENDERS:
            self._senders += 1
            me.sender = True
        while True:
            if me.sender:
                await self._turn(me)
            elif me.result is not None:
                return me.result
            else:
                me.done = anyio.Event()  # the flags above say why it was set last
                try:
                    await me.done.wait()
                except BaseException:
                    self._withdraw(me)
                    raise

    async def _turn(self, me: _Pending) -> None:
        """Send one request of what is queued, then pass the turn on."""
        try:
            batch = self._take()
            if batch:
                await self._send_batch(batch)
        finally:
            me.sender = False
            self._senders -= 1
            self._promote()

    def _take(self) -> list[_Pending]:
        """The oldest queued jobs that fit one request."""
        batch: list[_Pending] = []
        size = 0
        queue = self._queue
        while queue and len(batch) < MAX_BULK:
            first = queue[0]
            if not first.withdrawn:
                if batch and size + first.size > BULK_BYTES:
                    break
                first.taken = True
                batch.append(first)
                size += first.size
            queue.popleft()
        return batch

    async def _send_batch(self, batch: list[_Pending]) -> None:
        """One request, shielded and bounded; every job in it gets its outcome."""
        results: list[str | TrioqError] | None = None
        interrupted = True
        try:
            with anyio.CancelScope(shield=True):
                try:
                    with anyio.move_on_after(self._bound):
                        results = await self._send([p.item for p in batch])
                except Exception as exc:  # a bug: still, no caller may wait forever
                    failed = TrioqError(f"a bulk submit failed: {exc!r}")
                    failed.__cause__ = exc
                    results = [own_copy(failed) for _ in batch]
            interrupted = False
        finally:
            # in a finally: asyncio's task.cancel() goes through the shield, and the
            # other callers in this request must not wait forever for it
            if results is None or len(results) != len(batch):
                if interrupted:
                    results = [_cut_off(p.item.get("id")) for p in batch]
                else:
                    gone = BrokerUnreachable(f"no answer to a bulk submit within {self._bound:g} s")
                    results = [own_copy(gone) for _ in batch]
            for pending, result in zip(batch, results, strict=True):
                pending.result = result
                pending.done.set()

    def _promote(self) -> None:
        """Hand free turns to the oldest callers still queued."""
        for pending in self._queue:
            if self._senders >= MAX_SENDERS:
                return
            if not pending.sender and not pending.withdrawn:
                pending.sender = True
                self._senders += 1
                pending.done.set()

    def _withdraw(self, me: _Pending) -> None:
        """``me``'s caller was cancelled while it waited: an untaken job is never
        sent, and a turn it was handed goes to the next caller."""
        if not me.taken:
            me.withdrawn = True
        if me.sender:
            me.sender = False
            self._senders -= 1
            self._promote()


def _cut_off(job_id: object) -> TrioqError:
    """The outcome of a job whose request was cancelled mid-send (asyncio)."""
    return BrokerUnreachable(
        f"the bulk submit carrying job {job_id} was cancelled mid-send: whether it was "
        f"enqueued is unknown (a submit again with id={job_id!r} cannot create a second job)"
    )
