"""The trioq exception tree.

Every error trioq raises derives from :class:`TrioqError` and carries a stable
``tag``: the ``_tag`` of the broker's HTTP error bodies, and the key a client uses
to turn an error body back into the matching exception. ``status`` is the HTTP
status the broker answers with. Every class that sets its own ``tag`` is entered in
:data:`ERRORS_BY_TAG` when it is defined, wherever that is (``PayloadInvalid`` and
``JobTimeout`` live in :mod:`trioq.worker`, are raised on the worker side only and are
never in a broker's answer).

::

    TrioqError
    ├── CASConflict                 a compare-and-set precondition failed
    ├── StorageUnavailable          the store cannot be used right now
    │   ├── BucketNotFound          the bucket (or data directory) does not exist
    │   ├── StorageAuthError        the store rejected our credentials
    │   ├── StorageUnreachable      the endpoint cannot be reached
    │   └── WriteOutcomeUnknown     a write was sent but its outcome is unknown
    ├── DocumentInvalid             queue.json cannot be decoded / unknown format
    ├── QueueNotFound               no queue.json where one was expected
    ├── BrokerProtocolError         malformed request or invalid field
    ├── Unauthorized                missing or wrong token
    ├── Forbidden                   a valid token whose scope does not allow the call
    ├── JobNotFound                 no such job
    ├── LeaseLost                   job not held by this worker / attempt
    ├── PayloadTooLarge             request or payload over its limit
    ├── NotLeader                   this broker does not lead (``leader`` says who)
    ├── BrokerUnreachable           no broker answered (client side)
    ├── QueueFull                   queued-job or document-size cap reached
    ├── Overloaded                  too many connections or waiting long-polls
    ├── JobNotDead                  requeue of a job that is not dead
    ├── JobFailed                   a job waited on (Client.result) was dead-lettered or cancelled
    ├── DeadlineExceeded            the caller's deadline passed first (Connect-Timeout-Ms)
    ├── NotFound                    no such route
    ├── MethodNotAllowed            the route does not take this method
    ├── InternalError               a bug in the broker (HTTP 500)
    ├── PayloadInvalid              payload does not fit the handler (worker side)
    └── JobTimeout                  a handler ran past its timeout (worker side)
"""

from __future__ import annotations

from typing import Any, ClassVar

ERRORS_BY_TAG: dict[str, type[TrioqError]] = {}
"""Every error class by its tag, for turning error bodies back into exceptions.

Filled as the classes are defined: a subclass that sets its own ``tag`` is entered
under it (the first class to claim a tag keeps it); one that inherits its parent's tag
is not.
"""


class TrioqError(Exception):
    """Root of every error raised by trioq."""

    tag: ClassVar[str] = "TrioqError"
    status: ClassVar[int] = 500

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "tag" in cls.__dict__:
            ERRORS_BY_TAG.setdefault(cls.tag, cls)

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def to_body(self) -> dict[str, object]:
        """The JSON error body the broker answers with."""
        return {"_tag": self.tag, "message": self.message}


class CASConflict(TrioqError):
    """A conditional write or create failed its precondition.

    Raised only when the store answered that the precondition did not hold: the
    object changed since ``if_match`` was read, or ``create`` found it present.
    """

    tag = "CASConflict"
    status = 409


class StorageUnavailable(TrioqError):
    """The store cannot be used right now; the message names it and the cause."""

    tag = "StorageUnavailable"
    status = 503


class BucketNotFound(StorageUnavailable):
    """The bucket (S3) or data directory (file backend) does not exist."""

    tag = "BucketNotFound"


class StorageAuthError(StorageUnavailable):
    """The store rejected the credentials (S3 403 / invalid access key)."""

    tag = "StorageAuthError"


class StorageUnreachable(StorageUnavailable):
    """The endpoint did not answer: connection refused, DNS failure, timeout."""

    tag = "StorageUnreachable"


class WriteOutcomeUnknown(StorageUnavailable):
    """A write was sent but no answer came back (timeout, dropped connection).

    The write may or may not have landed. The caller resolves it by reading the
    object back: if the stored document is the one it wrote, the write landed.
    """

    tag = "WriteOutcomeUnknown"


class DocumentInvalid(TrioqError):
    """The stored queue document cannot be decoded or has an unknown format.

    Such a document is never overwritten: a human must look at it.
    """

    tag = "DocumentInvalid"
    status = 503


class QueueNotFound(TrioqError):
    """No queue document is stored where one was expected, and none was created:
    the location is not known to be new (see the broker's ``--create``)."""

    tag = "QueueNotFound"
    status = 503


class BrokerProtocolError(TrioqError):
    """A request was malformed (bad JSON, missing or invalid field)."""

    tag = "BrokerProtocolError"
    status = 400


class Unauthorized(TrioqError):
    """The request carried no token or the wrong one."""

    tag = "Unauthorized"
    status = 401


class Forbidden(TrioqError):
    """The token is valid, but its scope (producer, worker) does not allow the call."""

    tag = "Forbidden"
    status = 403


class JobNotFound(TrioqError):
    """No job with that id exists (or it has left the dedup window)."""

    tag = "JobNotFound"
    status = 404


class LeaseLost(TrioqError):
    """The job is not held by this worker, or not at this attempt."""

    tag = "LeaseLost"
    status = 409


class PayloadTooLarge(TrioqError):
    """The request body or a job payload exceeds its configured limit."""

    tag = "PayloadTooLarge"
    status = 413


class NotLeader(TrioqError):
    """This broker is not the leader; ``leader`` is the leader's URL if known.

    ``role`` is the answering broker's own role when it said so (``"starting"``,
    ``"standby"`` or ``"stopped"``): a ``"starting"`` broker with no known leader is
    a short wait, not a leader change.
    """

    tag = "NotLeader"
    status = 503

    def __init__(
        self, message: str = "", *, leader: str | None = None, role: str | None = None
    ) -> None:
        super().__init__(message)
        self.leader = leader
        self.role = role

    @property
    def starting(self) -> bool:
        """Whether the answering broker was still starting and knew no leader."""
        return self.role == "starting" and self.leader is None

    def to_body(self) -> dict[str, object]:
        body: dict[str, object] = {"_tag": self.tag, "message": self.message, "leader": self.leader}
        if self.role is not None:
            body["role"] = self.role
        return body


class BrokerUnreachable(TrioqError):
    """No broker could be reached before the client's retry deadline."""

    tag = "BrokerUnreachable"
    status = 503


class QueueFull(TrioqError):
    """The queued-job count or the document size cap has been reached."""

    tag = "QueueFull"
    status = 503


class Overloaded(TrioqError):
    """The broker is at a capacity limit that is not the queue's: too many open
    connections, or too many long-poll claims waiting. Retry after a pause (the
    answer carries ``Retry-After``); nothing was changed."""

    tag = "Overloaded"
    status = 503


class JobNotDead(TrioqError):
    """A requeue named a job that exists but is not in the dead-letter list."""

    tag = "JobNotDead"
    status = 409


class JobFailed(TrioqError):
    """:meth:`Client.result <trioq.Client.result>` of a job that will not complete:
    it was dead-lettered (``status`` ``"dead"``, ``reason`` why, the message its last
    error) or cancelled."""

    tag = "JobFailed"
    status = 409

    def __init__(
        self, message: str, *, job_status: str = "dead", reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.job_status = job_status
        self.reason = reason


class DeadlineExceeded(TrioqError):
    """The deadline a Connect caller set (``Connect-Timeout-Ms``) passed before the
    broker answered. Like any answer that never came, the call may or may not have
    taken effect: a submit is retried under the same job id."""

    tag = "DeadlineExceeded"
    status = 504


class NotFound(TrioqError):
    """No such route (an unknown job id is :class:`JobNotFound`)."""

    tag = "NotFound"
    status = 404


class MethodNotAllowed(TrioqError):
    """The route exists but not with this HTTP method."""

    tag = "MethodNotAllowed"
    status = 405


class InternalError(TrioqError):
    """The broker failed on a request: a bug, never a consequence of the input."""

    tag = "InternalError"
    status = 500


ERRORS_BY_TAG[TrioqError.tag] = TrioqError
