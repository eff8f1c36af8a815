"""Google Cloud Storage: the protocol on a GCS bucket, through ``google-cloud-storage``.

:class:`GCSStorage` maps the storage protocol onto the GCS JSON API:

==============  ===================================================  ==================
method          request                                              version returned
==============  ===================================================  ==================
``version``     ``objects.get`` (metadata only)                      the ``generation``
``read``        ``objects.get?alt=media`` (the whole body)           ``x-goog-generation``
``write``       upload with ``ifGenerationMatch=<if_match>``         the new generation
``create``      upload with ``ifGenerationMatch=0``                  the new generation
``list_keys``   ``objects.list`` (``prefix``, ``startOffset``),      (none)
                one request per page of up to 1000 keys
``delete_key``  ``objects.delete`` (unconditional)                   (none)
==============  ===================================================  ==================

Versions are object generations as decimal strings. Every upload gets a new
generation, even of the same bytes (unlike S3's content-hash ETags). A ``write``
whose ``if_match`` is not a positive decimal integer (an S3 ETag, ``"0"``) can
never match, so it raises :class:`~trioq.CASConflict` without a request: ``0``
would mean "only if absent" to GCS, and ``write`` must not create.

Uploads of up to 8 MiB are one multipart request; larger ones are resumable
uploads (several requests; the precondition goes with the session's first POST
and GCS checks it there and when the upload finishes). Either way the object
changes all at once. fake-gcs-server, the emulator of the tests, ignores the
precondition of resumable uploads (docs/gcs.md).

Keys
----

As :class:`~trioq.S3Storage`: the object name is ``prefix`` (slashes at either end
dropped, then one ``/`` added when non-empty) joined with the key; ``list_keys``
takes and returns keys relative to the prefix and skips an object named exactly
like the prefix (a "folder" marker).

Credentials and endpoint
------------------------

The client is ``google.cloud.storage.Client``, created once, on first use, in a
worker thread. Credentials come from the standard Google chain
(``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's application-default credentials,
the metadata server on GCE/GKE/Cloud Run, ...), the project from the same chain
or ``project=``. When the ``STORAGE_EMULATOR_HOST`` environment variable is set
(``http://127.0.0.1:4443``), the library sends every request there with anonymous
credentials; ``endpoint_url=`` does the same for one storage without the variable
(anonymous unless ``anonymous=False``).

Threads, retries and timeouts
-----------------------------

The library is blocking, so every request runs in ``trio.to_thread.run_sync``
under the storage's own :class:`trio.CapacityLimiter` (``max_threads``, also the
size of the HTTP connection pool).

- Reads (``version``, ``read``, each page of ``list_keys``) use the library's
  default retry predicate (429, 5xx, dropped connections) with a short backoff
  (0.2 s, doubling, with jitter), starting no new attempt more than 1 s after the
  first one began (a quick failure is retried a few times, a slow one about once,
  like S3Storage's two attempts), and are abandoned when trio cancels them (the thread finishes in the background
  holding its limiter token; the result is dropped).
- Uploads and deletes are never retried (``retry=None``; the library's default
  would retry an upload with ``ifGenerationMatch``, and a retried conditional
  upload whose first attempt landed fails its own precondition: a false
  conflict). They are never abandoned on cancellation: trio waits for the answer
  (bounded by the timeouts) and the cancellation is delivered at the caller's
  next checkpoint.

``connect_timeout`` and ``read_timeout`` are passed to every request as the
``(connect, read)`` timeouts of ``requests``.

Errors
------

Every library error is translated here into the trioq tree (``raise ... from
exc``). Messages name the operation, ``gs://bucket/object`` and the cause.

- 412 ``conditionNotMet`` on an upload → :class:`~trioq.CASConflict` (for
  ``create``: the object exists; for ``write``: another generation, or no object);
- 404 on an upload, a listing, or a read or delete whose bucket is missing →
  :class:`~trioq.BucketNotFound`. GCS answers 404 for a missing object and for a
  missing bucket alike (the real service words them differently, emulators do
  not), so a 404 to a read, ``version`` or delete is checked with a one-key
  listing (``storage.objects.list``, which object-level roles hold) until the
  bucket has been seen once (any request that succeeded); after that a 404 is a
  missing object, unless its message says "The specified bucket does not exist".
  A listing refused with 401/403 cannot tell: the 404 is taken for a missing object;
- 401, 403, no credentials found, a failed token refresh →
  :class:`~trioq.StorageAuthError` (a refused upload says nothing was written, and
  a run of refused uploads is logged once, when it starts, and once when an upload
  succeeds again);
- connection refused, DNS failure, connect timeout, an unreachable metadata
  server, and for reads any transport error → :class:`~trioq.StorageUnreachable`;
- anything else (429 rate limiting, 5xx to a read, 400, ...) →
  :class:`~trioq.StorageUnavailable`. GCS answers 429 to more than about one write
  per second to one object name (docs/gcs.md).

An upload that may have been sent but got no answer (read timeout, connection
reset, any transport error other than failing to connect) or got a 5xx answer is
resolved by reading the object back, as :class:`~trioq.S3Storage` does: our bytes
→ the write landed and their generation is returned; otherwise
:class:`~trioq.WriteOutcomeUnknown`. A delete in the same situation raises
:class:`~trioq.WriteOutcomeUnknown` at once (deleting again is safe).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any, Literal, TypeVar

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
    from google.cloud import storage as gcs  # type: ignore[import-untyped,import-not-found,unused-ignore]

_T = TypeVar("_T")

_Operation = Literal["version", "read", "write", "create", "list_keys", "delete_key"]

_LIST_PAGE_SIZE = 1000
"""Keys per ``objects.list`` request: GCS's maximum (and default)."""

_READ_RETRY_SECONDS = 1.0
"""A read starts no new attempt later than this after its first one (so a quick
failure is retried a few times, a slow one about once, as S3Storage's two attempts)."""

_BUCKET_MISSING_TEXT = "specified bucket does not exist"
"""How the real GCS words a 404 for a missing bucket (emulators just say Not Found)."""

_GCS_ENDPOINT = "https://storage.googleapis.com"
"""Where the library sends requests with no emulator or endpoint set."""

_INSTALL_HINT = "GCSStorage needs the google-cloud-storage package: pip install 'trioq[gcs]'"


@cache
def _library_errors() -> tuple[type[BaseException], ...]:
    """The exception classes the Google libraries raise for a failed request."""
    import google.api_core.exceptions
    import google.auth.exceptions
    import requests  # type: ignore[import-untyped,unused-ignore]

    return (
        google.api_core.exceptions.GoogleAPIError,
        google.auth.exceptions.GoogleAuthError,
        requests.exceptions.RequestException,
    )


def _status(exc: BaseException) -> int:
    """The HTTP status of a ``GoogleAPICallError`` (0 for anything else)."""
    import google.api_core.exceptions

    if isinstance(exc, google.api_core.exceptions.GoogleAPICallError):
        code = exc.code
        return int(code) if code is not None else 0
    return 0


def _unwrap(exc: BaseException) -> BaseException:
    """The last attempt's error inside a ``RetryError`` (the error itself otherwise)."""
    import google.api_core.exceptions

    if isinstance(exc, google.api_core.exceptions.RetryError):
        cause: object = exc.cause
        if isinstance(cause, BaseException):
            return cause
    return exc


def _cause(exc: BaseException) -> str:
    """A one-line description of a library error for messages."""
    exc = _unwrap(exc)
    status = _status(exc)
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:300] + "..."
    if status:
        return f"HTTP {status}: {text}"
    return f"{type(exc).__name__}: {text}"


def _not_sent(exc: BaseException) -> bool:
    """True if ``exc`` proves the request never left: a failure to connect."""
    import google.auth.exceptions
    import requests  # type: ignore[import-untyped,unused-ignore]
    import urllib3.exceptions

    if isinstance(exc, google.auth.exceptions.GoogleAuthError):
        return True  # credentials failed before the request was made
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.ProxyError):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason: object = exc.args[0] if exc.args else None
        if isinstance(reason, urllib3.exceptions.MaxRetryError):
            reason = reason.reason
        return isinstance(
            reason,
            urllib3.exceptions.NewConnectionError
            | urllib3.exceptions.ConnectTimeoutError
            | urllib3.exceptions.ProxyError,
        )
    return False


def _outcome_unknown(exc: BaseException) -> bool:
    """True if an upload or delete failing with ``exc`` may nevertheless have landed."""
    import requests  # type: ignore[import-untyped,unused-ignore]

    exc = _unwrap(exc)
    if _status(exc):
        return _status(exc) >= 500
    return isinstance(exc, requests.exceptions.RequestException) and not _not_sent(exc)


def _positive_generation(version: str) -> int | None:
    """``version`` as a generation number, or ``None`` if it cannot be one."""
    if not version.isascii() or not version.isdigit():
        return None
    generation = int(version)
    return generation if generation > 0 else None


class GCSStorage:
    """A :class:`~trioq.Storage` on a Google Cloud Storage bucket (or an emulator).

    Compare-and-set uses generation preconditions (``ifGenerationMatch``; ``0``
    for "only if absent"). The request mapping, credentials, retries, timeouts and
    error translation are described in the :mod:`trioq.storage._gcs` module
    docstring; docs/gcs.md says what GCS's write rate limit per object means for
    each layout.

    Args:
        bucket: The bucket. It must exist: trioq never creates buckets.
        prefix: Prepended to every key (``"a/b"`` stores ``queue.json`` at
            ``a/b/queue.json``).
        project: The project for the client; ``None`` takes it from the
            credential chain (GCS object requests do not need it).
        endpoint_url: Another JSON API endpoint (an emulator:
            ``http://127.0.0.1:4443``). ``None`` uses ``STORAGE_EMULATOR_HOST``
            when it is set, else Google's endpoint.
        anonymous: Send no credentials. ``None``: anonymous exactly when
            ``endpoint_url`` is given (``STORAGE_EMULATOR_HOST`` is always
            anonymous, the library's rule).
        connect_timeout: Seconds to open a connection.
        read_timeout: Seconds to wait for (each part of) an answer.
        max_threads: Requests in flight at once (worker threads and pooled
            connections).

    Raises :class:`ValueError` on an empty bucket, a non-positive timeout or
    ``max_threads < 1``, and :class:`ImportError` if ``google-cloud-storage`` is
    not installed. Nothing touches the network (or the credential chain) until
    the first call.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        project: str | None = None,
        endpoint_url: str | None = None,
        anonymous: bool | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        max_threads: int = 8,
    ) -> None:
        if not bucket:
            raise ValueError("bucket must not be empty")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError(
                f"timeouts must be > 0, not connect_timeout={connect_timeout!r}, "
                f"read_timeout={read_timeout!r}"
            )
        if max_threads < 1:
            raise ValueError(f"max_threads must be >= 1, not {max_threads!r}")
        try:
            import google.cloud.storage  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc
        self._bucket = bucket
        stripped = prefix.strip("/")
        self._prefix = f"{stripped}/" if stripped else ""
        self._project = project
        self._endpoint_url = endpoint_url
        self._anonymous = endpoint_url is not None if anonymous is None else anonymous
        self._timeout = (connect_timeout, read_timeout)
        self._max_threads = max_threads
        self._limiter = trio.CapacityLimiter(max_threads)
        self._client_lock = threading.Lock()
        self._client: gcs.Client | None = None
        self._closed = False
        self._bucket_seen = False
        self._outage = WriteOutage(f"GCS storage gs://{bucket}/{self._prefix}")
        # Keys asked for per objects.list request; tests lower it to page over few keys.
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
        """The object name that stores ``key`` (the prefix joined with it).

        Raises :class:`ValueError` on an empty key.
        """
        if not key:
            raise ValueError("key must not be empty")
        return self._prefix + key

    def describe(self) -> str:
        """``gs://bucket/prefix`` and the endpoint, for messages and logs."""
        return f"GCS bucket gs://{self._bucket}/{self._prefix} at {self._endpoint()}"

    async def read(self, key: str) -> Versioned | None:
        """The object's bytes and generation (one download), or ``None`` if absent."""
        return await self._read_op("read", key, self._get_sync)

    async def version(self, key: str) -> str | None:
        """The object's generation (metadata only, no body), or ``None`` if absent."""
        return await self._read_op("version", key, self._head_sync)

    async def write(self, key: str, data: bytes, *, if_match: str) -> str:
        """Replace the object if its generation is ``if_match``; return the new one.

        Raises :class:`~trioq.CASConflict` if the object changed or is missing, and
        :class:`~trioq.WriteOutcomeUnknown` if the upload got no answer and reading
        the object back did not show our bytes. Never abandoned on cancellation.
        """
        generation = _positive_generation(if_match)
        if generation is None:
            where = self._where("write", self.object_key(key))
            raise CASConflict(f"{where}: {if_match!r} is not a GCS generation, so it never matches")
        return await self._put("write", key, data, generation)

    async def create(self, key: str, data: bytes) -> str:
        """Create the object only if it is absent (``ifGenerationMatch=0``).

        Raises :class:`~trioq.CASConflict` if it already exists, and
        :class:`~trioq.WriteOutcomeUnknown` as :meth:`write` does.
        """
        return await self._put("create", key, data, 0)

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """The keys starting with ``prefix`` (``objects.list``), in UTF-8 byte order.

        Relative to the storage's prefix, both in the arguments and in the keys
        returned. ``start_after`` is sent as ``startOffset`` (inclusive) and the key
        equal to it dropped. Fetches pages of up to 1000 keys until ``limit`` keys
        are found or the listing ends.
        """
        check_limit(limit)
        full_prefix = self._prefix + prefix
        after = None if start_after is None else self._prefix + start_after
        if after is not None and not after.startswith(full_prefix):
            if after > full_prefix:
                return []  # after every key under the prefix
            after = None  # before every key under the prefix
        keys: list[str] = []
        token: str | None = None
        while limit is None or len(keys) < limit:
            want = self._list_page_size
            if limit is not None:
                # one more than needed: the key equal to start_after may come back
                want = min(want, limit - len(keys) + 1)
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
            except _library_errors() as exc:
                if _status(_unwrap(exc)) == 404:
                    raise self._bucket_not_found("list_keys", full_prefix + "*", exc) from exc
                raise self._translate("list_keys", full_prefix + "*", exc) from exc
            self._bucket_seen = True
            keys += [
                name[len(self._prefix) :]
                for name in page
                if len(name) > len(self._prefix) and (after is None or name > after)
            ]
            if token is None:
                break
        return keys if limit is None else keys[:limit]

    async def delete_key(self, key: str) -> None:
        """Remove the object (``objects.delete``); a missing object is fine.

        Raises :class:`~trioq.BucketNotFound` if the bucket is missing,
        :class:`~trioq.WriteOutcomeUnknown` if the request may have been sent but
        got no answer (deleting again is safe), other
        :class:`~trioq.StorageUnavailable` errors like a write. Never abandoned on
        cancellation, and never retried.
        """
        object_key = self.object_key(key)
        try:
            # abandon_on_cancel=False: a delete has side effects, as an upload does.
            await trio.to_thread.run_sync(self._delete_sync, object_key, limiter=self._limiter)
        except _library_errors() as exc:
            if _status(exc) == 404:
                await self._check_bucket("delete_key", object_key, exc)
                return
            if _outcome_unknown(exc):
                raise WriteOutcomeUnknown(
                    f"{self._where('delete_key', object_key)}: the delete got no answer "
                    f"({_cause(exc)}); the object may or may not be deleted "
                    "(deleting again is safe)"
                ) from exc
            raise self._translate("delete_key", object_key, exc) from exc
        self._bucket_seen = True

    def close(self) -> None:
        """Close the client's pooled connections. The storage cannot be used afterwards."""
        with self._client_lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- requests (run in worker threads) -----------------------------------------------

    def _get_client(self) -> gcs.Client:
        with self._client_lock:
            if self._closed:
                raise RuntimeError(f"{self.describe()} is closed")
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> gcs.Client:
        import requests.adapters  # type: ignore[import-untyped,unused-ignore]
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage  # type: ignore[import-untyped,import-not-found,unused-ignore]

        options = (
            None if self._endpoint_url is None else ClientOptions(api_endpoint=self._endpoint_url)
        )
        client: gcs.Client = storage.Client(
            project=self._project,
            credentials=AnonymousCredentials() if self._anonymous else None,  # type: ignore[no-untyped-call,unused-ignore]
            client_options=options,
        )
        # One pooled connection per thread that may use it (requests' default is 10).
        http: Any = client._http
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=self._max_threads)
        http.mount("https://", adapter)
        http.mount("http://", adapter)
        return client

    def _read_retry(self) -> Any:
        from google.cloud.storage.retry import DEFAULT_RETRY  # type: ignore[import-untyped,import-not-found,unused-ignore]

        return DEFAULT_RETRY.with_delay(initial=0.2, maximum=1.0, multiplier=2.0).with_timeout(
            _READ_RETRY_SECONDS
        )

    def _blob(self, object_key: str) -> Any:
        return self._get_client().bucket(self._bucket).blob(object_key)

    def _head_sync(self, object_key: str) -> str:
        blob = self._blob(object_key)
        blob.reload(projection="noAcl", timeout=self._timeout, retry=self._read_retry())
        return str(blob.generation)

    def _get_sync(self, object_key: str) -> Versioned:
        blob = self._blob(object_key)
        data = blob.download_as_bytes(timeout=self._timeout, retry=self._read_retry())
        if blob.generation is None:
            # the download's answer had no x-goog-generation header: ask for it
            blob.reload(projection="noAcl", timeout=self._timeout, retry=self._read_retry())
        return Versioned(bytes(data), str(blob.generation))

    def _put_sync(self, object_key: str, data: bytes, generation: int) -> str:
        blob = self._blob(object_key)
        blob.upload_from_string(
            data,
            content_type="application/octet-stream",
            if_generation_match=generation,
            timeout=self._timeout,
            retry=None,
        )
        return str(blob.generation)

    def _list_page_sync(
        self, prefix: str, start_offset: str | None, token: str | None, page_size: int
    ) -> tuple[list[str], str | None]:
        """One objects.list page: its names, and the token of the next page (or None)."""
        iterator = self._get_client().list_blobs(
            self._bucket,
            prefix=prefix,
            start_offset=start_offset,
            page_token=token,
            page_size=page_size,
            max_results=page_size,
            fields="items(name),nextPageToken",
            timeout=self._timeout,
            retry=self._read_retry(),
        )
        page = next(iterator.pages, None)
        names = [] if page is None else [str(blob.name) for blob in page]
        next_token = iterator.next_page_token
        return names, None if not next_token else str(next_token)

    def _delete_sync(self, object_key: str) -> None:
        self._blob(object_key).delete(timeout=self._timeout, retry=None)

    def _bucket_exists_sync(self) -> bool:
        """Whether the bucket exists (a one-key listing: objects.list permission only).

        Without that permission (401, 403) it cannot tell, and says it exists: the
        404 is then taken for a missing object."""
        import google.api_core.exceptions

        try:
            self._list_page_sync("", None, None, 1)
        except google.api_core.exceptions.NotFound:
            return False
        except (google.api_core.exceptions.Forbidden, google.api_core.exceptions.Unauthorized):
            return True
        return True

    # -- the trio boundary ----------------------------------------------------------------

    async def _read_op(self, op: _Operation, key: str, fn: Callable[[str], _T]) -> _T | None:
        object_key = self.object_key(key)
        try:
            result = await trio.to_thread.run_sync(
                fn, object_key, limiter=self._limiter, abandon_on_cancel=True
            )
        except _library_errors() as exc:
            if _status(_unwrap(exc)) == 404:
                await self._check_bucket(op, object_key, exc)
                return None
            raise self._translate(op, object_key, exc) from exc
        self._bucket_seen = True
        return result

    async def _check_bucket(self, op: _Operation, object_key: str, exc: BaseException) -> None:
        """After a 404: return if the object is what is missing, raise if the bucket is."""
        if _BUCKET_MISSING_TEXT in str(_unwrap(exc)).lower():
            raise self._bucket_not_found(op, object_key, exc) from exc
        if self._bucket_seen:
            return
        try:
            exists = await trio.to_thread.run_sync(
                self._bucket_exists_sync, limiter=self._limiter, abandon_on_cancel=True
            )
        except _library_errors() as check_exc:
            raise self._translate(op, object_key, check_exc) from check_exc
        if not exists:
            raise self._bucket_not_found(op, object_key, exc) from exc
        self._bucket_seen = True

    async def _put(self, op: _Operation, key: str, data: bytes, generation: int) -> str:
        object_key = self.object_key(key)
        data = bytes(data)
        try:
            # abandon_on_cancel=False (the default): a conditional upload has side
            # effects, so trio waits for its answer even when cancelled.
            version = await trio.to_thread.run_sync(
                self._put_sync, object_key, data, generation, limiter=self._limiter
            )
        except _library_errors() as exc:
            if not _outcome_unknown(exc):
                if _status(exc) == 404:
                    raise self._bucket_not_found(op, object_key, exc) from exc
                error = self._translate(op, object_key, exc)
                if isinstance(error, StorageAuthError):
                    # read-only credentials or bucket: every commit meets it
                    self._outage.failed(error)
                raise error from exc
            return await self._resolve_unknown(op, key, data, exc)
        self._bucket_seen = True
        self._outage.succeeded()
        return version

    async def _resolve_unknown(
        self, op: _Operation, key: str, data: bytes, exc: BaseException
    ) -> str:
        """Read the object back after an upload with no answer: did our bytes land?"""
        where = self._where(op, self.object_key(key))
        try:
            return await read_back(
                lambda: self.read(key), data, where=where, request="the upload", cause=_cause(exc)
            )
        except WriteOutcomeUnknown as unknown:
            raise unknown from exc

    def _bucket_not_found(self, op: _Operation, object_key: str, exc: BaseException) -> TrioqError:
        where = self._where(op, object_key)
        return BucketNotFound(f"{where}: bucket {self._bucket!r} does not exist ({_cause(exc)})")

    def _translate(self, op: _Operation, object_key: str, exc: BaseException) -> TrioqError:
        """The trioq error for a library error raised by ``op`` on ``object_key``."""
        import google.auth.exceptions
        import requests  # type: ignore[import-untyped,unused-ignore]

        where = self._where(op, object_key)
        cause = _cause(exc)
        exc = _unwrap(exc)
        status = _status(exc)
        is_put = op in ("write", "create")
        if status:
            if is_put and status == 412:
                condition = "ifGenerationMatch=0" if op == "create" else "ifGenerationMatch"
                return CASConflict(f"{where}: {condition} precondition failed ({cause})")
            if is_put and status == 403:
                return StorageAuthError(
                    f"{where}: the store refused the write ({cause}): read-only "
                    "credentials or a read-only bucket policy? Nothing was written"
                )
            if status in (401, 403):
                return StorageAuthError(f"{where}: the store rejected our credentials ({cause})")
            if status == 429:
                return StorageUnavailable(
                    f"{where}: rate limited ({cause}); GCS allows about one write per "
                    "second to one object"
                )
            return StorageUnavailable(f"{where}: the store answered an error ({cause})")
        if isinstance(exc, google.auth.exceptions.TransportError):
            return StorageUnreachable(f"{where}: fetching credentials failed ({cause})")
        if isinstance(exc, google.auth.exceptions.GoogleAuthError):
            return StorageAuthError(f"{where}: no usable Google credentials ({cause})")
        if isinstance(exc, requests.exceptions.RequestException):
            return StorageUnreachable(f"{where}: the endpoint did not answer ({cause})")
        return StorageUnavailable(f"{where}: {cause}")

    def _where(self, op: _Operation, object_key: str) -> str:
        return f"GCS {op} of gs://{self._bucket}/{object_key} at {self._endpoint()}"

    def _endpoint(self) -> str:
        if self._endpoint_url is not None:
            return self._endpoint_url
        client = self._client
        if client is not None:
            connection: Any = getattr(client, "_connection", None)
            return str(getattr(connection, "API_BASE_URL", "the GCS endpoint"))
        # before the client is made: where it will go (the library's own rule)
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        return f"{emulator} (STORAGE_EMULATOR_HOST)" if emulator else _GCS_ENDPOINT

    def __repr__(self) -> str:
        return (
            f"GCSStorage(bucket={self._bucket!r}, prefix={self._prefix!r}, "
            f"endpoint_url={self._endpoint_url!r})"
        )
