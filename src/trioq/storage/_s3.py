"""S3 storage: the protocol on any S3-compatible object store, through boto3.

:class:`S3Storage` maps the storage protocol onto six S3 requests:

==============  ===================================================  ==================
method          request                                              version returned
==============  ===================================================  ==================
``version``     ``HeadObject``                                       the ``ETag``
``read``        ``GetObject`` (the whole body)                       the ``ETag``
``write``       ``PutObject`` with ``If-Match: <if_match>``          the new ``ETag``
``create``      ``PutObject`` with ``If-None-Match: *``              the new ``ETag``
``list_keys``   ``ListObjectsV2`` (``Prefix``, ``StartAfter``),      (none)
                one request per page of up to 1000 keys
``delete_key``  ``DeleteObject`` (unconditional)                     (none)
==============  ===================================================  ==================

Versions are the ETags exactly as the store returns them (quotes included). ETags
are content hashes: writing the same bytes twice gives the same version, so callers
must make every committed document differ from the one before (trioq's ``seq``).

Keys
----

The object key is ``prefix`` joined with the storage key. Slashes at either end of
``prefix`` are dropped, and a non-empty prefix is followed by exactly one ``/``;
the key itself is used unchanged. So ``prefix="queues/prod"`` (or
``"/queues/prod/"``) stores ``queue.json`` at ``queues/prod/queue.json``, and the
empty prefix stores it at ``queue.json``.

``list_keys`` lists the object keys that start with the storage's prefix joined
with the asked prefix, and returns them with the storage's prefix cut off, so two
storages with different prefixes on one bucket never see each other's keys (but a
storage with prefix ``a`` does see the keys of one with prefix ``a/b``, below its
own). An object named exactly like the prefix (``a/``, a "folder" marker some
tools create) would be the empty key and is skipped.

Threads, retries and timeouts
-----------------------------

boto3 is blocking, so every request runs in ``trio.to_thread.run_sync`` under the
storage's own :class:`trio.CapacityLimiter` (``max_threads``, also the size of each
connection pool). Two clients are created once, on first use, in a worker thread
(creating a client can resolve credentials, which may mean network calls):

- the *read* client (``HeadObject``, ``GetObject``) lets botocore retry once
  (``total_max_attempts=2``, standard mode: transient errors, throttling and 5xx,
  after a random backoff of up to 1 s). A read cancelled by trio is abandoned: its
  thread finishes in the background (still holding its limiter token) and the
  result is dropped;
- ``ListObjectsV2`` goes through the read client too, one worker-thread call per
  page, so a cancelled listing abandons at most the page in flight;
- the *write* client (``PutObject``, ``DeleteObject``) never retries (``total_max_attempts=1``; in
  botocore's client config ``max_attempts`` counts *retries*, so 1 there would
  mean two attempts). A retried conditional PUT whose first attempt landed would
  fail its own precondition and report a false conflict. A write is never
  abandoned on cancellation: once its thread has started, trio waits for the
  answer (bounded by the timeouts), and the write returns its outcome; the
  cancellation is delivered at the caller's next checkpoint.

``connect_timeout`` bounds opening a connection and each send of the request
(urllib3 sends under it), and ``read_timeout`` bounds each wait for bytes of the
answer, so a dead endpoint fails within seconds instead of hanging. Roughly, the
worst case is ``2 * (connect_timeout + read_timeout) + 1`` seconds for a read and
``connect_timeout + read_timeout + 1`` for a PUT (botocore waits up to 1 s for
``100 Continue``), plus a read for the read-back described below.

Errors
------

Every botocore error is translated once, here, into the trioq tree (``raise ... from
exc``, so the botocore error stays reachable as ``__cause__``). Messages name the
operation, ``s3://bucket/key``, the endpoint and the cause.

- ``412 PreconditionFailed`` and ``409 ConditionalRequestConflict`` (any 412 or
  409) on a PUT, and ``404 NoSuchKey`` on an ``If-Match`` PUT (moto's answer for a
  missing object) → :class:`~trioq.CASConflict`;
- ``NoSuchBucket`` → :class:`~trioq.BucketNotFound`;
- ``InvalidAccessKeyId``, ``SignatureDoesNotMatch``, ``AccessDenied``, expired or
  invalid tokens, any other 403, and no credentials found at all →
  :class:`~trioq.StorageAuthError` (a :class:`~trioq.StorageUnavailable`: nothing
  was written; a PUT refused with ``AccessDenied``, read-only credentials or a
  read-only bucket, says so, and a run of refused PUTs is logged once, when it
  starts, and once when a PUT succeeds again);
- connection refused, DNS failure, connect timeout, and for reads also a TLS
  error, a read timeout or a dropped connection → :class:`~trioq.StorageUnreachable`;
- anything else the store answers (a 5xx to a read, a 400, ...) →
  :class:`~trioq.StorageUnavailable`.

A ``DeleteObject`` that may have been sent but got no answer (the same transport
errors and 5xx answers as below) raises :class:`~trioq.WriteOutcomeUnknown`: it
is not resolved by reading back, because deleting again is safe (it is
idempotent) and is what the caller does next. It is not retried here for the same
reason a PUT is not: a first attempt that landed, then a ``create`` of the key by
someone else, then the retry, would remove the new object. Every other error of a
delete or a listing is translated like a read's.

A PUT that may have been sent but got no answer (read timeout, connection closed
or reset, a TLS error, any transport error other than failing to connect), or that
got a 5xx answer, may or may not have landed. It is resolved by reading the object
back: if the stored bytes are the bytes we wrote, the write landed and its version
is returned; otherwise (other bytes, no object, or the read-back failed too)
:class:`~trioq.WriteOutcomeUnknown` is raised. Other bytes do not prove that the
write failed: it may still be in flight.

Store quirks seen in testing:

- A ``HeadObject`` answer carries no body, so a missing bucket looks like a missing
  object (a bare 404). ``version`` therefore confirms a 404 with a ``GetObject``,
  whose error code tells ``NoSuchKey`` from ``NoSuchBucket``.
- SeaweedFS evaluates ``If-Match`` before it looks for the bucket: an ``If-Match``
  PUT into a missing bucket answers ``412 PreconditionFailed`` and so raises
  :class:`~trioq.CASConflict`. The caller's next ``read`` raises
  :class:`~trioq.BucketNotFound`.
- SeaweedFS keeps ``/`` as directories, and its listings walk them: when keys
  have a ``/`` below the listed prefix, a "directory" is listed where its bare
  name sorts (``a/b`` before ``a-b`` and ``a.b``, not between ``a.b`` and
  ``a0``), and a ``StartAfter`` that names a directory (``a`` or ``a/b`` when
  ``a/b/c`` exists) skips every key below it. Keys without a ``/`` below the
  listed prefix list in byte order. Nor does it create (``If-None-Match: *``)
  an object at ``a/b`` once ``a/b/c`` exists. (moto and AWS S3 do neither.)
- SeaweedFS answers an empty listing when ``StartAfter`` sorts before the
  ``Prefix`` without starting with it; :meth:`S3Storage.list_keys` never sends
  such a ``StartAfter`` (it means "from the start" there).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, NamedTuple, TypeVar

import boto3.session
import botocore.config
import botocore.exceptions
import trio

from .._errors import (
    BucketNotFound,
    CASConflict,
    StorageAuthError,
    StorageUnavailable,
    StorageUnreachable,
    TrioqError,
    WriteOutcomeUnknown,
)
from ._lost_answer import read_back
from ._outage import WriteOutage
from ._protocol import Versioned, check_limit

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_T = TypeVar("_T")

_Operation = Literal["version", "read", "write", "create", "list_keys", "delete_key"]

# botocore's client-config ``max_attempts`` counts *retries* (0 = none);
# ``total_max_attempts`` counts attempts including the first. We use the latter.
_READ_ATTEMPTS = 2
_WRITE_ATTEMPTS = 1

_LIST_PAGE_SIZE = 1000
"""Keys per ``ListObjectsV2`` request: S3's maximum (and default)."""

_CAS_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)
# Raised before a single byte of the request went out: connection refused, DNS
# failure, connect timeout, proxy unreachable.
_NOT_SENT = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ProxyConnectionError,
)
_CREDENTIAL_ERRORS = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
)


class _Clients(NamedTuple):
    reader: S3Client
    writer: S3Client


class _Missing:
    """HeadObject answered a bare 404: the object or the bucket is missing."""


_MISSING = _Missing()


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _http_status(exc: botocore.exceptions.ClientError) -> int:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)


def _cause(exc: Exception) -> str:
    """A one-line description of a botocore error for messages."""
    if isinstance(exc, botocore.exceptions.ClientError):
        message = exc.response.get("Error", {}).get("Message", "")
        text = f"HTTP {_http_status(exc)} {_error_code(exc)}"
        return f"{text}: {message}" if message else text
    return f"{type(exc).__name__}: {exc}"


def _outcome_unknown(exc: Exception) -> bool:
    """True if a PUT failing with ``exc`` may nevertheless have landed."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return _http_status(exc) >= 500
    # Only a failure to connect proves that the request was never sent. A TLS error
    # can also come from reading the answer, and HTTPClientError (read timeout,
    # connection closed or reset, a send that timed out) may follow a full request.
    return isinstance(
        exc, botocore.exceptions.HTTPClientError | botocore.exceptions.SSLError
    ) and not isinstance(exc, _NOT_SENT)


class S3Storage:
    """A :class:`~trioq.Storage` on an S3-compatible bucket (AWS S3, SeaweedFS, moto, ...).

    Compare-and-set uses S3 conditional writes (``If-Match`` / ``If-None-Match: *``
    on ``PutObject``), so the store must support them. The request mapping, the key
    joining rule, retries, timeouts and error translation are described in the
    :mod:`trioq.storage._s3` module docstring.

    Args:
        bucket: The bucket. It must exist: trioq never creates buckets.
        prefix: Prepended to every key (``"a/b"`` stores ``queue.json`` at
            ``a/b/queue.json``).
        endpoint_url: The S3 endpoint, for stores other than AWS (for example
            ``http://127.0.0.1:8333``). When given, path-style addressing is used
            (``endpoint/bucket/key``). ``None`` uses AWS's endpoint for ``region``.
        region: The region to sign for; ``None`` takes it from the standard AWS
            configuration (``AWS_REGION``, ``AWS_DEFAULT_REGION``, config file).
        access_key_id: With ``secret_access_key``, the credentials to use. When
            both are ``None`` the standard AWS credential chain is used
            (environment, shared files, container or instance roles, ...).
        secret_access_key: See ``access_key_id``.
        connect_timeout: Seconds to open a connection (and for each send of a request).
        read_timeout: Seconds to wait for (each part of) an answer.
        max_threads: Requests in flight at once (worker threads and pooled
            connections per client).

    Raises :class:`ValueError` on an empty bucket, a lone access key or secret,
    a non-positive timeout or ``max_threads < 1``. Nothing touches the network
    (or the credential chain) until the first call.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        max_threads: int = 8,
    ) -> None:
        if not bucket:
            raise ValueError("bucket must not be empty")
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError(
                f"timeouts must be > 0, not connect_timeout={connect_timeout!r}, "
                f"read_timeout={read_timeout!r}"
            )
        if max_threads < 1:
            raise ValueError(f"max_threads must be >= 1, not {max_threads!r}")
        self._bucket = bucket
        stripped = prefix.strip("/")
        self._prefix = f"{stripped}/" if stripped else ""
        self._endpoint_url = endpoint_url
        self._region = region
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_threads = max_threads
        self._limiter = trio.CapacityLimiter(max_threads)
        self._clients_lock = threading.Lock()
        self._clients: _Clients | None = None
        self._closed = False
        self._outage = WriteOutage(f"S3 storage s3://{bucket}/{self._prefix}")
        # Keys asked for per ListObjectsV2 request; tests lower it to page over few keys.
        self._list_page_size = _LIST_PAGE_SIZE

    # -- public API ---------------------------------------------------------------------

    @property
    def bucket(self) -> str:
        """The bucket name."""
        return self._bucket

    @property
    def prefix(self) -> str:
        """The normalized key prefix: ``""`` or ending in exactly one ``/``."""
        return self._prefix

    def object_key(self, key: str) -> str:
        """The S3 object key that stores ``key`` (the prefix joined with it).

        Raises :class:`ValueError` on an empty key.
        """
        if not key:
            raise ValueError("key must not be empty")
        return self._prefix + key

    def locate(self, key: str) -> str:
        """``key``, its object and the endpoint, for messages: ``queue.json at
        s3://bucket/prefix/queue.json (S3 at http://127.0.0.1:8333)``."""
        return f"{key} at s3://{self._bucket}/{self.object_key(key)} (S3 at {self._endpoint()})"

    def describe(self) -> str:
        """``s3://bucket/prefix`` and the endpoint, for messages and logs."""
        return f"S3 storage s3://{self._bucket}/{self._prefix} at {self._endpoint()}"

    async def read(self, key: str) -> Versioned | None:
        """The object's bytes and ETag (``GetObject``), or ``None`` if it does not exist."""
        return await self._read_op("read", key, self._get_sync)

    async def version(self, key: str) -> str | None:
        """The object's ETag (``HeadObject``, no body), or ``None`` if it does not exist."""
        etag = await self._read_op("version", key, self._head_sync)
        if not isinstance(etag, _Missing):
            return etag
        # A bare 404 does not say whether the object or the bucket is missing;
        # GetObject's error code does (NoSuchKey -> None, NoSuchBucket -> raise).
        current = await self._read_op("version", key, self._get_sync)
        return None if current is None else current.version

    async def write(self, key: str, data: bytes, *, if_match: str) -> str:
        """Replace the object if its ETag is ``if_match`` (``If-Match``); return the new ETag.

        Raises :class:`~trioq.CASConflict` if the object changed or is missing, and
        :class:`~trioq.WriteOutcomeUnknown` if the PUT got no answer and reading the
        object back did not show our bytes. Never abandoned on cancellation.
        """
        return await self._put("write", key, data, if_match=if_match)

    async def create(self, key: str, data: bytes) -> str:
        """Create the object only if it is absent (``If-None-Match: *``); return its ETag.

        Raises :class:`~trioq.CASConflict` if it already exists, and
        :class:`~trioq.WriteOutcomeUnknown` as :meth:`write` does.
        """
        return await self._put("create", key, data, if_match=None)

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """The keys starting with ``prefix`` (``ListObjectsV2``), in UTF-8 byte order.

        Relative to the storage's prefix, both in the arguments and in the keys
        returned. Fetches pages of up to 1000 keys until ``limit`` keys are found
        or the listing ends. Raises :class:`~trioq.StorageUnavailable` (or a
        subclass: a missing bucket is :class:`~trioq.BucketNotFound`) like a read.
        """
        check_limit(limit)
        full_prefix = self._prefix + prefix
        after = None if start_after is None else self._prefix + start_after
        if after is not None and not after.startswith(full_prefix):
            # Outside the prefix, StartAfter is before every key under it (drop it)
            # or after all of them (nothing to list). SeaweedFS answers an empty
            # listing to a StartAfter that sorts before the prefix (its issue 11321).
            if after > full_prefix:
                return []
            after = None
        keys: list[str] = []
        token: str | None = None
        while limit is None or len(keys) < limit:
            want = self._list_page_size
            if limit is not None:
                want = min(want, limit - len(keys))
            try:
                page, token = await trio.to_thread.run_sync(
                    self._list_page_sync,
                    full_prefix,
                    after,
                    token,
                    want,
                    limiter=self._limiter,
                    abandon_on_cancel=True,
                )
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                raise self._translate("list_keys", full_prefix + "*", exc) from exc
            keys += [key[len(self._prefix) :] for key in page if len(key) > len(self._prefix)]
            if token is None:
                break
        return keys if limit is None else keys[:limit]

    async def delete_key(self, key: str) -> None:
        """Remove the object (``DeleteObject``); a missing object is fine.

        Raises :class:`~trioq.WriteOutcomeUnknown` if the request may have been sent
        but got no answer (deleting again is safe), other
        :class:`~trioq.StorageUnavailable` errors like a write. Never abandoned on
        cancellation, and never retried by botocore.
        """
        object_key = self.object_key(key)
        try:
            # abandon_on_cancel=False: a delete has side effects, as a PUT does.
            await trio.to_thread.run_sync(self._delete_sync, object_key, limiter=self._limiter)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            if _outcome_unknown(exc):
                raise WriteOutcomeUnknown(
                    f"{self._where('delete_key', object_key)}: the DeleteObject got no "
                    f"answer ({_cause(exc)}); the object may or may not be deleted "
                    "(deleting again is safe)"
                ) from exc
            raise self._translate("delete_key", object_key, exc) from exc

    def close(self) -> None:
        """Close the clients' pooled connections. The storage cannot be used afterwards."""
        with self._clients_lock:
            self._closed = True
            clients, self._clients = self._clients, None
        if clients is not None:
            clients.reader.close()
            clients.writer.close()

    # -- requests (run in worker threads) -----------------------------------------------

    def _get_clients(self) -> _Clients:
        with self._clients_lock:
            if self._closed:
                raise RuntimeError(f"{self.describe()} is closed")
            if self._clients is None:
                self._clients = self._make_clients()
            return self._clients

    def _make_clients(self) -> _Clients:
        session = boto3.session.Session(
            aws_access_key_id=self._access_key_id,
            aws_secret_access_key=self._secret_access_key,
            region_name=self._region,
        )

        def make(attempts: int) -> S3Client:
            config = botocore.config.Config(
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
                max_pool_connections=self._max_threads,
                retries={"total_max_attempts": attempts, "mode": "standard"},
                s3={"addressing_style": "path"} if self._endpoint_url else None,
            )
            return session.client("s3", endpoint_url=self._endpoint_url, config=config)

        return _Clients(reader=make(_READ_ATTEMPTS), writer=make(_WRITE_ATTEMPTS))

    def _head_sync(self, object_key: str) -> str | _Missing:
        client = self._get_clients().reader
        try:
            response = client.head_object(Bucket=self._bucket, Key=object_key)
        except botocore.exceptions.ClientError as exc:
            if _http_status(exc) == 404:
                return _MISSING
            raise
        return response["ETag"]

    def _get_sync(self, object_key: str) -> Versioned | None:
        client = self._get_clients().reader
        try:
            response = client.get_object(Bucket=self._bucket, Key=object_key)
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) == "NoSuchKey":
                return None
            raise
        with response["Body"] as body:
            data = body.read()
        return Versioned(data, response["ETag"])

    def _put_sync(self, object_key: str, data: bytes, if_match: str | None) -> str:
        client = self._get_clients().writer
        if if_match is None:
            response = client.put_object(
                Bucket=self._bucket, Key=object_key, Body=data, IfNoneMatch="*"
            )
        else:
            response = client.put_object(
                Bucket=self._bucket, Key=object_key, Body=data, IfMatch=if_match
            )
        return response["ETag"]

    def _list_page_sync(
        self, prefix: str, start_after: str | None, token: str | None, max_keys: int
    ) -> tuple[list[str], str | None]:
        """One ListObjectsV2 page: its keys, and the token of the next page (or None)."""
        client = self._get_clients().reader
        if token is not None:
            # A continuation token carries the position; StartAfter is ignored with it.
            response = client.list_objects_v2(
                Bucket=self._bucket, Prefix=prefix, MaxKeys=max_keys, ContinuationToken=token
            )
        elif start_after is not None:
            response = client.list_objects_v2(
                Bucket=self._bucket, Prefix=prefix, MaxKeys=max_keys, StartAfter=start_after
            )
        else:
            response = client.list_objects_v2(Bucket=self._bucket, Prefix=prefix, MaxKeys=max_keys)
        keys = [item["Key"] for item in response.get("Contents", [])]
        next_token = response.get("NextContinuationToken") if response.get("IsTruncated") else None
        return keys, next_token

    def _delete_sync(self, object_key: str) -> None:
        self._get_clients().writer.delete_object(Bucket=self._bucket, Key=object_key)

    # -- the trio boundary ----------------------------------------------------------------

    async def _read_op(self, op: _Operation, key: str, fn: Callable[[str], _T]) -> _T:
        object_key = self.object_key(key)
        try:
            return await trio.to_thread.run_sync(
                fn, object_key, limiter=self._limiter, abandon_on_cancel=True
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._translate(op, object_key, exc) from exc

    async def _put(self, op: _Operation, key: str, data: bytes, *, if_match: str | None) -> str:
        object_key = self.object_key(key)
        data = bytes(data)
        try:
            # abandon_on_cancel=False (the default): a conditional PUT has side
            # effects, so trio waits for its answer even when cancelled.
            etag = await trio.to_thread.run_sync(
                self._put_sync, object_key, data, if_match, limiter=self._limiter
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            if not _outcome_unknown(exc):
                error = self._translate(op, object_key, exc)
                if isinstance(error, StorageAuthError):
                    # read-only credentials or bucket: every commit meets it
                    self._outage.failed(error)
                raise error from exc
            return await self._resolve_unknown(op, key, data, exc)
        self._outage.succeeded()
        return etag

    async def _resolve_unknown(self, op: _Operation, key: str, data: bytes, exc: Exception) -> str:
        """Read the object back after a PUT with no answer: did our bytes land?"""
        where = self._where(op, self.object_key(key))
        try:
            return await read_back(
                lambda: self.read(key), data, where=where, request="the PUT", cause=_cause(exc)
            )
        except WriteOutcomeUnknown as unknown:
            raise unknown from exc

    def _translate(self, op: _Operation, object_key: str, exc: Exception) -> TrioqError:
        """The trioq error for a botocore error raised by ``op`` on ``object_key``."""
        where = self._where(op, object_key)
        cause = _cause(exc)
        if isinstance(exc, botocore.exceptions.ClientError):
            code, status = _error_code(exc), _http_status(exc)
            is_put = op in ("write", "create")
            if is_put and (code in _CAS_CODES or status in (409, 412)):
                condition = "If-None-Match: *" if op == "create" else "If-Match"
                return CASConflict(f"{where}: {condition} precondition failed ({cause})")
            if op == "write" and code == "NoSuchKey":
                return CASConflict(f"{where}: If-Match on a missing object ({cause})")
            if code == "NoSuchBucket":
                return BucketNotFound(f"{where}: bucket {self._bucket!r} does not exist ({cause})")
            if is_put and code == "AccessDenied":
                return StorageAuthError(
                    f"{where}: the store refused the write ({cause}): read-only "
                    "credentials or a read-only bucket policy? Nothing was written"
                )
            if code in _AUTH_CODES or status == 403:
                return StorageAuthError(f"{where}: the store rejected our credentials ({cause})")
            return StorageUnavailable(f"{where}: the store answered an error ({cause})")
        if isinstance(exc, _CREDENTIAL_ERRORS):
            return StorageAuthError(f"{where}: no usable AWS credentials ({cause})")
        if isinstance(
            exc, botocore.exceptions.ConnectionError | botocore.exceptions.HTTPClientError
        ):
            return StorageUnreachable(f"{where}: the endpoint did not answer ({cause})")
        return StorageUnavailable(f"{where}: {cause}")

    def _where(self, op: _Operation, object_key: str) -> str:
        return f"S3 {op} of s3://{self._bucket}/{object_key} at {self._endpoint()}"

    def _endpoint(self) -> str:
        if self._endpoint_url is not None:
            return self._endpoint_url
        clients = self._clients
        if clients is not None:
            return clients.reader.meta.endpoint_url
        return "the AWS endpoint" + (f" of {self._region}" if self._region else "")

    def __repr__(self) -> str:
        return (
            f"S3Storage(bucket={self._bucket!r}, prefix={self._prefix!r}, "
            f"endpoint_url={self._endpoint_url!r})"
        )
