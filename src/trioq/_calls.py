"""How the client talks to brokers: one request, tried again while that is safe,
following the leader, within a deadline (:class:`Caller`), and error bodies turned
back into exceptions. Concurrent submits are coalesced in :mod:`trioq._coalescer`.

Runs under trio and asyncio: its clock and sleeps are anyio's (trio's, under trio,
so a ``trio.testing.MockClock`` drives the retries)."""

from __future__ import annotations

import copy
import logging
import random
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import orjson

from ._backoff import backoff_delay
from ._errors import ERRORS_BY_TAG, BrokerUnreachable, NotLeader, TrioqError, WriteOutcomeUnknown

_log = logging.getLogger("trioq.client")

DEFAULT_URL = "http://127.0.0.1:8080"
"""The broker URL a client and a worker dial unless told otherwise."""

STARTING_RETRY_MAX = 0.5
"""Cap, in seconds, on the wait before asking a starting broker again."""


def error_from_response(response: httpx.Response) -> TrioqError:
    """The exception an error response stands for."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = error_from_body(body)
    if error is not None:
        return error
    return TrioqError(
        f"HTTP {response.status_code} from {response.request.url}: {response.text[:200]}"
    )


def error_from_body(body: object) -> TrioqError | None:
    """The exception an error body (``{"_tag": ..., "message": ...}``) stands for:
    a whole answer's, or one item's in a bulk or exchange answer; None if ``body``
    is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("_tag"), str):
        return None
    cls = ERRORS_BY_TAG.get(body["_tag"], TrioqError)
    message = str(body.get("message", ""))
    if cls is NotLeader:
        leader = body.get("leader")
        role = body.get("role")
        return NotLeader(
            message,
            leader=leader if isinstance(leader, str) else None,
            role=role if isinstance(role, str) else None,
        )
    return cls(message)


def own_copy(error: TrioqError) -> TrioqError:
    """A copy of ``error`` (same class, message and fields, no traceback), so that
    each caller that shares one failed request raises an exception of its own."""
    return copy.copy(error)


@dataclass(slots=True, frozen=True)
class _Request:
    """A request as :meth:`Caller.call` sends it, on every try."""

    method: str
    path: str
    content: bytes | None
    params: Mapping[str, Any] | None

    @property
    def headers(self) -> dict[str, str] | None:
        return {"Content-Type": "application/json"} if self.content is not None else None


@dataclass(slots=True, frozen=True)
class _Retry:
    """A try that may be retried: its error, and how to go on."""

    error: TrioqError
    cause: BaseException | None = None
    hop: bool = False
    """A new leader URL was learnt: dial it at once."""
    starting: bool = False
    """The broker is still electing: ask it again after a short wait."""


class Caller:
    """Sends requests to the broker that leads, retrying what is safe to retry.

    ``urls`` are the brokers it knows (it learns the leader's from ``NotLeader``
    answers); the other parameters are :class:`~trioq.Client`'s.
    """

    def __init__(
        self,
        urls: list[str],
        http: httpx.AsyncClient,
        *,
        timeout: float,
        retry_deadline: float,
        backoff_base: float,
        backoff_max: float,
        rng: random.Random,
    ) -> None:
        self.urls = urls
        self.http = http
        self.timeout = timeout
        self.retry_deadline = retry_deadline
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._rng = rng
        self._current = 0

    @property
    def url(self) -> str:
        """The broker URL dialled now."""
        return self.urls[self._current]

    def follow(self, leader: str | None) -> bool:
        """Dial ``leader`` next (or the next known URL); True if that is a new URL."""
        before = self._current
        if leader and leader.startswith(("http://", "https://")):
            leader = leader.strip().rstrip("/")
            if leader not in self.urls:
                self.urls.append(leader)
            self._current = self.urls.index(leader)
        else:
            self._current = (self._current + 1) % len(self.urls)
        return self._current != before

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, Any] | None = None,
        claim: bool = False,
        extra_timeout: float = 0.0,
        retry_deadline: float | None = None,
    ) -> httpx.Response:
        """Send a request, retrying what is safe to retry, until the deadline
        (``retry_deadline`` seconds, default the client's)."""
        started = anyio.current_time()
        deadline = started + (self.retry_deadline if retry_deadline is None else retry_deadline)
        request = _Request(method, path, None if body is None else orjson.dumps(body), params)
        attempt = starting_waits = 0
        followed = False
        tried: list[str] = []
        while True:
            attempt += 1
            url = self.url
            if url not in tried:
                tried.append(url)
            answer = await self._attempt(request, url, claim=claim, extra_timeout=extra_timeout)
            if isinstance(answer, httpx.Response):
                return answer
            now = anyio.current_time()
            if now >= deadline:
                raise _gave_up(
                    answer.error, f"{method} {path}", attempt, now - started, tried
                ) from answer.cause
            if answer.hop and not followed:
                # a new leader URL is dialled at once (but never twice in a row without
                # a pause, in case two brokers name each other mid-takeover)
                followed = True
                _log.debug("%s %s: %s; following the leader", method, url + path, answer.error)
                continue
            followed = False
            starting_waits += answer.starting
            delay = min(self._retry_delay(answer, attempt, starting_waits), deadline - now)
            _log.debug(
                "%s %s failed (attempt %d): %r; retrying in %.2f s",
                method,
                url + path,
                attempt,
                answer.error,
                delay,
            )
            await anyio.sleep(delay)

    def _retry_delay(self, answer: _Retry, attempt: int, starting_waits: int) -> float:
        """The wait before the next try: short for a broker that is still starting."""
        if answer.starting:
            return backoff_delay(
                starting_waits + 1, base=self.backoff_base, cap=STARTING_RETRY_MAX, rng=self._rng
            )
        return self.retry_wait(attempt)

    def retry_wait(self, attempt: int) -> float:
        """The wait after failed try number ``attempt`` (from 1) of a call that a 503
        answer made retryable."""
        return backoff_delay(
            attempt + 1, base=self.backoff_base, cap=self.backoff_max, rng=self._rng
        )

    async def _attempt(
        self, request: _Request, url: str, *, claim: bool, extra_timeout: float
    ) -> httpx.Response | _Retry:
        """One try: the response, or what to retry with; raises what must not be
        retried (any 4xx, a claim whose outcome is unknown)."""
        try:
            response = await self.http.request(
                request.method,
                url + request.path,
                content=request.content,
                params=request.params,
                headers=request.headers,
                timeout=self.timeout + extra_timeout,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            untrusted = _certificate_error(exc)
            if untrusted is not None:
                # asking again cannot help, and would hide the cause behind a timeout
                raise BrokerUnreachable(
                    f"cannot verify the TLS certificate of broker {url}: "
                    f"{untrusted.verify_message or untrusted}; give the client the CA "
                    "that signed it (Client(verify='ca.pem'), --ca-file, TRIOQ_CA_FILE)"
                ) from exc
            # never reached a broker: safe to retry anything, claims included
            if len(self.urls) > 1:
                self.follow(None)
            return _Retry(BrokerUnreachable(f"cannot reach broker {url}: {exc!r}"), cause=exc)
        except httpx.TransportError as exc:
            if claim:
                # the broker may have claimed jobs for us; asking again could strand
                # them for a lease: give up on this claim
                raise BrokerUnreachable(
                    f"the answer to a claim from {url} was lost ({exc!r}); jobs it may "
                    "have claimed return to the queue when their lease runs out"
                ) from exc
            return _Retry(BrokerUnreachable(f"request to {url} failed: {exc!r}"), cause=exc)
        if response.status_code < 400:
            return response
        error = error_from_response(response)
        if response.status_code != 503 or (claim and isinstance(error, WriteOutcomeUnknown)):
            # a 503 WriteOutcomeUnknown: the broker does not know whether its commit
            # (and so the claim) landed; asking again could strand the jobs it took
            raise error
        if isinstance(error, NotLeader) and error.starting:
            # still electing: it will lead or name the leader shortly, so this is no
            # leader change; ask the same broker again soon
            return _Retry(error, starting=True)
        if isinstance(error, NotLeader):
            return _Retry(error, hop=self.follow(error.leader) and error.leader is not None)
        return _Retry(error)


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind a connection error, if that is
    what it was (httpx wraps the ``ssl`` error, maybe more than once)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def parse_urls(urls: str | Sequence[str]) -> list[str]:
    """Broker URLs from one URL, a comma-separated list or a sequence.

    Raises ValueError for a URL that is not ``http://`` or ``https://``.
    """
    if isinstance(urls, str):
        urls = urls.split(",")
    parsed: list[str] = []
    for url in urls:
        url = url.strip().rstrip("/")
        if not url:
            continue
        if not url.startswith(("http://", "https://")) or len(url) <= len("https://"):
            raise ValueError(f"broker URL {url!r} must start with http:// or https://")
        parsed.append(url)
    return parsed or [DEFAULT_URL]


def _gave_up(
    last: TrioqError, what: str, attempts: int, elapsed: float, tried: list[str]
) -> TrioqError:
    """``last``, its message saying what was tried before the deadline."""
    note = (
        f" (gave up {what} after {attempts} attempt{'s' if attempts != 1 else ''} "
        f"in {elapsed:.1f} s to {', '.join(tried)})"
    )
    if isinstance(last, NotLeader):
        return NotLeader(last.message + note, leader=last.leader, role=last.role)
    try:
        return type(last)(last.message + note)
    except TypeError:  # a subclass with another signature: keep it as it is
        return last
