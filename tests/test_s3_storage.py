"""S3Storage beyond the shared contract: error mapping, lost answers, prefixes.

Everything runs against real servers over real sockets (SeaweedFS, moto, a closed
port, a listener that never answers, and a small TCP proxy that loses PUT
answers), in real time: every "fails fast" claim is checked under a generous
``trio.fail_after`` bound.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Literal

import botocore.exceptions
import pytest
import trio

import trioq
from _servers import S3Server, free_port
from trioq import (
    BucketNotFound,
    CASConflict,
    S3Storage,
    StorageAuthError,
    StorageUnreachable,
    Versioned,
    WriteOutcomeUnknown,
)

KEY = "queue.json"
FAST = 10.0  # seconds: "fails fast" means well within this, never a hang

PutMode = Literal[
    "forward", "drop_answer", "swallow", "delay_answer", "replace_answer", "canned_answer"
]


def _storage(server: S3Server, bucket: str, *, prefix: str = "") -> S3Storage:
    return S3Storage(
        bucket,
        prefix=prefix,
        endpoint_url=server.endpoint_url,
        region="us-east-1",
        access_key_id=server.access_key_id,
        secret_access_key=server.secret_access_key,
    )


@pytest.fixture(params=["seaweedfs", "moto"])
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """Each S3 server in turn."""
    server: S3Server = request.getfixturevalue(
        "seaweedfs" if request.param == "seaweedfs" else "moto_server"
    )
    return server


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A fresh bucket on ``s3_server``."""
    return s3_server.create_bucket()


@pytest.fixture
def storage(s3_server: S3Server, bucket: str) -> Iterator[S3Storage]:
    """An S3Storage on a fresh bucket."""
    made = _storage(s3_server, bucket)
    yield made
    made.close()


# -- construction and exports -------------------------------------------------------------


def test_exported_and_implements_the_protocol() -> None:
    storage = S3Storage("bucket", endpoint_url="http://127.0.0.1:1")
    assert trioq.S3Storage is S3Storage
    assert isinstance(storage, trioq.Storage)
    assert "s3://bucket/" in storage.describe()
    assert "http://127.0.0.1:1" in storage.describe()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bucket": ""},
        {"bucket": "b", "access_key_id": "only-the-key"},
        {"bucket": "b", "secret_access_key": "only-the-secret"},
        {"bucket": "b", "connect_timeout": 0},
        {"bucket": "b", "read_timeout": -1},
        {"bucket": "b", "max_threads": 0},
    ],
)
def test_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        S3Storage(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", "queue.json"),
        ("a/b", "a/b/queue.json"),
        ("/a/b/", "a/b/queue.json"),
        ("/", "queue.json"),
    ],
)
def test_prefix_joining_rule(prefix: str, expected: str) -> None:
    assert S3Storage("b", prefix=prefix).object_key("queue.json") == expected


async def test_empty_key_is_rejected() -> None:
    storage = S3Storage("b", prefix="a/b")
    with pytest.raises(ValueError, match="empty"):
        await storage.read("")
    with pytest.raises(ValueError, match="empty"):
        await storage.create("", b"{}")


# -- prefix on a real server ------------------------------------------------------------


async def test_prefix_is_applied(s3_server: S3Server, bucket: str) -> None:
    prefixed = _storage(s3_server, bucket, prefix="tenants/one")
    other = _storage(s3_server, bucket, prefix="tenants/two/")
    plain = _storage(s3_server, bucket)
    try:
        version = await prefixed.create(KEY, b'{"seq": 1}')
        assert await prefixed.read(KEY) == Versioned(b'{"seq": 1}', version)
        assert await plain.read(KEY) is None
        assert await other.version(KEY) is None
        assert await plain.read(f"tenants/one/{KEY}") == Versioned(b'{"seq": 1}', version)

        # The object really is at the prefixed key in the bucket.
        client = s3_server.client()
        try:
            listed = client.list_objects_v2(Bucket=bucket)
            assert [item["Key"] for item in listed.get("Contents", [])] == [f"tenants/one/{KEY}"]
        finally:
            client.close()
    finally:
        for made in (prefixed, other, plain):
            made.close()


# -- error mapping ------------------------------------------------------------------------


async def test_missing_bucket_raises_bucket_not_found(s3_server: S3Server) -> None:
    storage = _storage(s3_server, "trioq-no-such-bucket")
    try:
        with trio.fail_after(FAST):
            for call in (
                lambda: storage.read(KEY),
                lambda: storage.version(KEY),
                lambda: storage.create(KEY, b"{}"),
            ):
                with pytest.raises(BucketNotFound) as caught:
                    await call()
                assert "trioq-no-such-bucket" in caught.value.message
                assert s3_server.endpoint_url in caught.value.message
                assert KEY in caught.value.message
    finally:
        storage.close()


async def test_if_match_write_into_missing_bucket(
    moto_server: S3Server, seaweedfs: S3Server
) -> None:
    # moto answers NoSuchBucket. SeaweedFS checks If-Match before the bucket and
    # answers 412 PreconditionFailed, a conflict (documented in _s3_storage).
    on_moto = _storage(moto_server, "trioq-no-such-bucket")
    on_seaweedfs = _storage(seaweedfs, "trioq-no-such-bucket")
    try:
        with trio.fail_after(FAST):
            with pytest.raises(BucketNotFound):
                await on_moto.write(KEY, b"{}", if_match='"0123"')
            with pytest.raises(CASConflict):
                await on_seaweedfs.write(KEY, b"{}", if_match='"0123"')
    finally:
        on_moto.close()
        on_seaweedfs.close()


@pytest.mark.parametrize(
    ("access_key", "secret", "code"),
    [
        (None, "not-the-secret", "SignatureDoesNotMatch"),
        ("trioqNoSuchAccessKey", "whatever-secret", "InvalidAccessKeyId"),
    ],
)
async def test_wrong_credentials_raise_auth_error(
    seaweedfs: S3Server, seaweedfs_bucket: str, access_key: str | None, secret: str, code: str
) -> None:
    good = _storage(seaweedfs, seaweedfs_bucket)
    bad = S3Storage(
        seaweedfs_bucket,
        endpoint_url=seaweedfs.endpoint_url,
        region="us-east-1",
        access_key_id=access_key or seaweedfs.access_key_id,
        secret_access_key=secret,
    )
    try:
        version = await good.create(KEY, b'{"seq": 1}')
        with trio.fail_after(FAST):
            for call in (
                lambda: bad.read(KEY),
                lambda: bad.version(KEY),  # HEAD: a bare 403, no error code
                lambda: bad.write(KEY, b'{"seq": 2}', if_match=version),
                lambda: bad.create("new.json", b"{}"),
            ):
                with pytest.raises(StorageAuthError) as caught:
                    await call()
                assert seaweedfs_bucket in caught.value.message
        # The body-carrying answers name the cause.
        with pytest.raises(StorageAuthError, match=code):
            await bad.read(KEY)
        assert await good.read(KEY) == Versioned(b'{"seq": 1}', version)
        assert await good.version("new.json") is None
    finally:
        good.close()
        bad.close()


async def test_closed_port_raises_unreachable() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    storage = S3Storage("bucket", endpoint_url=endpoint, region="us-east-1")
    try:
        with trio.fail_after(FAST):
            for call in (
                lambda: storage.read(KEY),
                lambda: storage.version(KEY),
                lambda: storage.write(KEY, b"{}", if_match='"0123"'),
                lambda: storage.create(KEY, b"{}"),
            ):
                with pytest.raises(StorageUnreachable) as caught:
                    await call()
                assert endpoint in caught.value.message
                assert isinstance(
                    caught.value.__cause__, botocore.exceptions.EndpointConnectionError
                )
    finally:
        storage.close()


async def test_no_credentials_anywhere_raise_auth_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # The session's AWS environment points config files nowhere and disables the
    # instance metadata service; without the key variables the chain finds nothing.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    storage = S3Storage("bucket", endpoint_url=f"http://127.0.0.1:{free_port()}")
    try:
        with trio.fail_after(FAST), pytest.raises(StorageAuthError, match="NoCredentialsError"):
            await storage.read(KEY)
    finally:
        storage.close()


@pytest.fixture
async def silent_endpoint() -> AsyncIterator[str]:
    """A listener that accepts connections and reads requests but never answers."""

    async def hold(stream: trio.SocketStream) -> None:
        async with stream:
            async for _ in stream:
                pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, hold, 0, host="127.0.0.1"))
        yield f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        nursery.cancel_scope.cancel()


async def test_silent_endpoint_times_out_fast(silent_endpoint: str) -> None:
    storage = S3Storage(
        "bucket", endpoint_url=silent_endpoint, region="us-east-1", read_timeout=0.5
    )
    try:
        with trio.fail_after(FAST):
            with pytest.raises(StorageUnreachable, match="ReadTimeoutError"):
                await storage.read(KEY)
            with pytest.raises(StorageUnreachable):
                await storage.version(KEY)
            # The PUT is sent and never answered, and the read-back hangs too.
            with pytest.raises(WriteOutcomeUnknown, match="reading the object back failed"):
                await storage.write(KEY, b"{}", if_match='"0123"')
    finally:
        storage.close()


async def test_conflict_keeps_the_botocore_cause(storage: S3Storage) -> None:
    await storage.create(KEY, b'{"seq": 1}')
    with pytest.raises(CASConflict) as caught:
        await storage.create(KEY, b'{"seq": 1}')
    cause = caught.value.__cause__
    assert isinstance(cause, botocore.exceptions.ClientError)
    assert cause.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert cause.response["Error"]["Code"] == "PreconditionFailed"


async def test_moto_if_match_on_missing_key_404_is_a_conflict(
    moto_server: S3Server, moto_bucket: str
) -> None:
    storage = _storage(moto_server, moto_bucket)
    try:
        with pytest.raises(CASConflict) as caught:
            await storage.write(KEY, b'{"seq": 1}', if_match='"0123456789abcdef0123456789abcdef"')
    finally:
        storage.close()
    cause = caught.value.__cause__
    assert isinstance(cause, botocore.exceptions.ClientError)
    assert cause.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert cause.response["Error"]["Code"] == "NoSuchKey"


# -- lost answers: a proxy between the storage and the server ----------------------------------


@dataclass
class LossyProxy:
    """A TCP proxy on 127.0.0.1 that can lose the answer to a PUT.

    The mode applies to connections whose first request is a PUT; other
    connections (the read client's GETs and HEADs) are spliced through unchanged.
    botocore sends PUTs with ``Expect: 100-continue``: the proxy answers the
    ``100 Continue`` itself, reads the whole request, and skips the server's
    interim answers, so "the answer" below is the server's final status.

    - ``forward``: pass the PUT through;
    - ``drop_answer``: pass the PUT to the server, wait for its final answer (so the
      write is decided), then close the client's connection without passing it on;
    - ``swallow``: read the whole PUT, never pass it on, close the connection;
    - ``delay_answer``: pass the PUT through, hold the final answer ``delay`` seconds;
    - ``replace_answer``: pass the PUT through, wait for the final answer, send
      ``canned`` instead and close;
    - ``canned_answer``: never pass the PUT on, send ``canned`` and close.
    """

    upstream_port: int
    mode: PutMode = "forward"
    delay: float = 0.0
    canned: bytes = b""
    puts_received: int = 0
    puts_forwarded: int = 0
    last_status: bytes = b""
    port: int = 0

    async def handle(self, client: trio.SocketStream) -> None:
        async with client:
            head, body = await _read_request(client)
            if head is None:
                return
            if not head.startswith(b"PUT ") or self.mode == "forward":
                await self._splice(client, head + body)
                return
            self.puts_received += 1
            if _header(head, b"expect") == b"100-continue":
                await client.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await _read_body(client, head, body)
            if self.mode == "swallow":
                return
            if self.mode == "canned_answer":
                await client.send_all(self.canned)
                return
            async with await trio.open_tcp_stream("127.0.0.1", self.upstream_port) as upstream:
                await upstream.send_all(head + body)
                self.puts_forwarded += 1
                answer = await _final_answer(upstream)
                self.last_status = answer.split(b"\r\n", 1)[0]
                if self.mode == "drop_answer":
                    return
                if self.mode == "replace_answer":
                    await client.send_all(self.canned)
                    return
                await trio.sleep(self.delay)
                await client.send_all(answer)
                await self._pump_both(client, upstream)

    async def _splice(self, client: trio.SocketStream, first: bytes) -> None:
        async with await trio.open_tcp_stream("127.0.0.1", self.upstream_port) as upstream:
            await upstream.send_all(first)
            await self._pump_both(client, upstream)

    @staticmethod
    async def _pump_both(a: trio.SocketStream, b: trio.SocketStream) -> None:
        async with trio.open_nursery() as nursery:

            async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                try:
                    async for chunk in source:
                        await sink.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump, a, b)
            nursery.start_soon(pump, b, a)


def _s3_error(status: int, reason: str, code: str) -> bytes:
    """A complete S3 error answer, as a store would send it."""
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>injected by the test proxy</Message></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head + body


async def _read_request(stream: trio.SocketStream) -> tuple[bytes | None, bytes]:
    """The request head (through the blank line) and whatever body bytes followed it."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some()
        if not chunk:
            return None, b""
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    return buffer[:end], buffer[end:]


def _header(head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lowercase) in a request head, or ``None``."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


async def _read_body(stream: trio.SocketStream, head: bytes, body: bytes) -> bytes:
    length = _header(head, b"content-length")
    assert length is not None, f"PUT without Content-Length: {head!r}"
    while len(body) < int(length):
        chunk = await stream.receive_some()
        assert chunk, "client closed the connection mid-body"
        body += chunk
    return body


async def _final_answer(stream: trio.SocketStream) -> bytes:
    """Read until the server's final (non-1xx) status line; interim answers are dropped."""
    buffer = b""
    while True:
        while b"\r\n" not in buffer:
            chunk = await stream.receive_some()
            assert chunk, f"server closed the connection: {buffer!r}"
            buffer += chunk
        if not buffer.startswith(b"HTTP/1.1 1"):
            return buffer
        while b"\r\n\r\n" not in buffer:
            chunk = await stream.receive_some()
            assert chunk, f"server closed the connection: {buffer!r}"
            buffer += chunk
        buffer = buffer[buffer.index(b"\r\n\r\n") + 4 :]


@pytest.fixture
async def proxy(s3_server: S3Server) -> AsyncIterator[LossyProxy]:
    """A :class:`LossyProxy` in front of ``s3_server``."""
    upstream_port = int(s3_server.endpoint_url.rsplit(":", 1)[1])
    made = LossyProxy(upstream_port)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, made.handle, 0, host="127.0.0.1"))
        made.port = listeners[0].socket.getsockname()[1]
        yield made
        nursery.cancel_scope.cancel()


@pytest.fixture
async def proxied(s3_server: S3Server, bucket: str, proxy: LossyProxy) -> AsyncIterator[S3Storage]:
    """An S3Storage that talks to ``s3_server`` through ``proxy``."""
    made = S3Storage(
        bucket,
        endpoint_url=f"http://127.0.0.1:{proxy.port}",
        region="us-east-1",
        access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key,
        read_timeout=5.0,
    )
    yield made
    made.close()


async def _put(storage: S3Storage, data: bytes, old: str | None) -> str:
    """``create`` if there is no old version, else ``write`` over it."""
    if old is None:
        return await storage.create(KEY, data)
    return await storage.write(KEY, data, if_match=old)


@pytest.mark.parametrize("op", ["write", "create"])
async def test_lost_answer_to_a_landed_put_is_resolved_by_reading_back(
    storage: S3Storage, proxied: S3Storage, proxy: LossyProxy, op: str
) -> None:
    old = None if op == "create" else await storage.create(KEY, b'{"seq": 1}')
    proxy.mode = "drop_answer"
    with trio.fail_after(FAST):
        version = await _put(proxied, b'{"seq": 2}', old)
    # Exactly one PUT: botocore did not retry it (a retry would have hit its own
    # precondition and turned the landed write into a false conflict).
    assert (proxy.puts_received, proxy.puts_forwarded) == (1, 1)
    assert proxy.last_status == b"HTTP/1.1 200 OK"
    assert await storage.read(KEY) == Versioned(b'{"seq": 2}', version)


@pytest.mark.parametrize("op", ["write", "create"])
async def test_lost_put_raises_write_outcome_unknown(
    storage: S3Storage, proxied: S3Storage, proxy: LossyProxy, op: str
) -> None:
    old = None if op == "create" else await storage.create(KEY, b'{"seq": 1}')
    proxy.mode = "swallow"
    with trio.fail_after(FAST), pytest.raises(WriteOutcomeUnknown) as caught:
        await _put(proxied, b'{"seq": 2}', old)
    assert isinstance(caught.value.__cause__, botocore.exceptions.ConnectionClosedError)
    assert KEY in caught.value.message
    assert (proxy.puts_received, proxy.puts_forwarded) == (1, 0)
    # The write never reached the store.
    expected = None if old is None else Versioned(b'{"seq": 1}', old)
    assert await storage.read(KEY) == expected


async def test_server_error_after_a_landed_put_is_resolved_by_reading_back(
    storage: S3Storage, proxied: S3Storage, proxy: LossyProxy
) -> None:
    old = await storage.create(KEY, b'{"seq": 1}')
    proxy.mode, proxy.canned = (
        "replace_answer",
        _s3_error(500, "Internal Server Error", "InternalError"),
    )
    with trio.fail_after(FAST):
        version = await proxied.write(KEY, b'{"seq": 2}', if_match=old)
    assert (proxy.puts_received, proxy.puts_forwarded) == (1, 1)
    assert await storage.read(KEY) == Versioned(b'{"seq": 2}', version)


async def test_server_error_without_the_write_raises_write_outcome_unknown(
    storage: S3Storage, proxied: S3Storage, proxy: LossyProxy
) -> None:
    old = await storage.create(KEY, b'{"seq": 1}')
    proxy.mode, proxy.canned = "canned_answer", _s3_error(503, "Slow Down", "SlowDown")
    with trio.fail_after(FAST), pytest.raises(WriteOutcomeUnknown, match="503 SlowDown"):
        await proxied.write(KEY, b'{"seq": 2}', if_match=old)
    assert (proxy.puts_received, proxy.puts_forwarded) == (1, 0)
    assert await storage.read(KEY) == Versioned(b'{"seq": 1}', old)


async def test_conditional_request_conflict_409_is_a_conflict(
    storage: S3Storage, proxied: S3Storage, proxy: LossyProxy
) -> None:
    # AWS answers 409 ConditionalRequestConflict to a conditional PUT that raced
    # another conditional request on the same key; neither test server does.
    old = await storage.create(KEY, b'{"seq": 1}')
    proxy.mode = "canned_answer"
    proxy.canned = _s3_error(409, "Conflict", "ConditionalRequestConflict")
    with trio.fail_after(FAST), pytest.raises(CASConflict, match="ConditionalRequestConflict"):
        await proxied.write(KEY, b'{"seq": 2}', if_match=old)
    with pytest.raises(CASConflict):
        await proxied.create("new.json", b'{"seq": 1}')
    assert proxy.puts_received == 2
    assert await storage.read(KEY) == Versioned(b'{"seq": 1}', old)


async def test_cancelled_write_is_not_abandoned(
    storage: S3Storage, proxied: S3Storage, proxy: LossyProxy
) -> None:
    old = await storage.create(KEY, b'{"seq": 1}')
    proxy.mode, proxy.delay = "delay_answer", 1.0
    version = None
    start = trio.current_time()
    with trio.move_on_after(0.1):
        version = await proxied.write(KEY, b'{"seq": 2}', if_match=old)
    # The cancel arrived after 0.1 s, but the write waited for its answer.
    assert trio.current_time() - start >= proxy.delay
    assert version is not None
    assert await storage.read(KEY) == Versioned(b'{"seq": 2}', version)


async def test_proxy_forwards_unchanged(
    storage: S3Storage, proxied: S3Storage, proxy: LossyProxy
) -> None:
    # The control case: in forward mode the proxy is transparent.
    version = await proxied.create(KEY, b'{"seq": 1}')
    assert await storage.read(KEY) == Versioned(b'{"seq": 1}', version)
    assert await proxied.read(KEY) == Versioned(b'{"seq": 1}', version)
    assert await proxied.version(KEY) == version


# -- listing and deleting -----------------------------------------------------------------


async def test_list_is_relative_to_the_prefix_and_isolated(
    s3_server: S3Server, bucket: str
) -> None:
    one = _storage(s3_server, bucket, prefix="tenants/one")
    two = _storage(s3_server, bucket, prefix="/tenants/two/")
    plain = _storage(s3_server, bucket)
    try:
        await one.create("log/1", b"1")
        await one.create("log/2", b"2")
        await two.create("log/1", b"1")
        await two.create("log/3", b"3")
        assert await one.list_keys("") == ["log/1", "log/2"]
        assert await one.list_keys("log/", start_after="log/1") == ["log/2"]
        assert await two.list_keys("log/") == ["log/1", "log/3"]
        # start_after sorting before / after every key of the prefix (outside it)
        assert await two.list_keys("log/", start_after="") == ["log/1", "log/3"]
        assert await two.list_keys("log/", start_after="a") == ["log/1", "log/3"]
        assert await two.list_keys("log/", start_after="m") == []
        # the bucket-wide view sees both, with their prefixes
        assert await plain.list_keys("tenants/") == [
            "tenants/one/log/1",
            "tenants/one/log/2",
            "tenants/two/log/1",
            "tenants/two/log/3",
        ]
        await one.delete_key("log/1")
        assert await one.list_keys("") == ["log/2"]
        assert await two.read("log/1") is not None  # same key, other prefix: untouched
    finally:
        for made in (one, two, plain):
            made.close()


async def test_list_pages_with_a_small_page_size(s3_server: S3Server, bucket: str) -> None:
    """The paging loop over many pages (the contract suite pages over 1,100 keys at
    S3's real page size of 1000)."""
    storage = _storage(s3_server, bucket, prefix="p")
    storage._list_page_size = 3
    keys = [f"log/{n:02d}" for n in range(10)]
    try:
        for key in keys:
            await storage.create(key, b"x")
        assert await storage.list_keys("log/") == keys
        assert await storage.list_keys("log/", limit=7) == keys[:7]
        assert await storage.list_keys("log/", start_after=keys[1], limit=5) == keys[2:7]
        assert await storage.list_keys("log/", start_after=keys[1]) == keys[2:]
        assert await storage.list_keys("log/0", start_after=keys[8]) == [keys[9]]
    finally:
        storage.close()


async def test_list_skips_a_folder_marker_at_the_prefix(s3_server: S3Server, bucket: str) -> None:
    storage = _storage(s3_server, bucket, prefix="p")
    client = s3_server.client()
    try:
        client.put_object(Bucket=bucket, Key="p/", Body=b"")  # what console tools create
        await storage.create("a", b"x")
        assert await storage.list_keys("") == ["a"]
    finally:
        client.close()
        storage.close()


async def test_delete_and_list_of_a_missing_bucket(s3_server: S3Server) -> None:
    storage = _storage(s3_server, "trioq-no-such-bucket")
    try:
        with trio.fail_after(FAST):
            with pytest.raises(BucketNotFound, match="list_keys of s3://trioq-no-such-bucket/log/"):
                await storage.list_keys("log/")
            with pytest.raises(BucketNotFound, match="delete_key of s3://trioq-no-such-bucket/"):
                await storage.delete_key(KEY)
    finally:
        storage.close()


async def test_list_and_delete_of_a_closed_port_are_unreachable_or_unknown() -> None:
    storage = S3Storage(
        "bucket",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        access_key_id="a",
        secret_access_key="b",
        connect_timeout=1,
        read_timeout=1,
    )
    try:
        with trio.fail_after(FAST):
            with pytest.raises(StorageUnreachable):
                await storage.list_keys("")
            # Connection refused: the request was never sent, so the outcome is known.
            with pytest.raises(StorageUnreachable) as caught:
                await storage.delete_key(KEY)
            assert not isinstance(caught.value, WriteOutcomeUnknown)
    finally:
        storage.close()


async def test_wrong_credentials_on_list_and_delete_raise_auth_error(
    seaweedfs: S3Server, seaweedfs_bucket: str
) -> None:
    storage = S3Storage(
        seaweedfs_bucket,
        endpoint_url=seaweedfs.endpoint_url,
        region="us-east-1",
        access_key_id="wrong",
        secret_access_key="wrong",
    )
    try:
        with trio.fail_after(FAST):
            with pytest.raises(StorageAuthError):
                await storage.list_keys("")
            with pytest.raises(StorageAuthError):
                await storage.delete_key(KEY)
    finally:
        storage.close()


async def test_unanswered_delete_is_an_unknown_outcome(silent_endpoint: str) -> None:
    storage = S3Storage(
        "bucket", endpoint_url=silent_endpoint, region="us-east-1", read_timeout=0.5
    )
    try:
        with trio.fail_after(FAST):
            # The DELETE was sent and never answered: it may have happened.
            with pytest.raises(WriteOutcomeUnknown, match="deleting again is safe"):
                await storage.delete_key(KEY)
            with pytest.raises(StorageUnreachable, match="ReadTimeoutError"):
                await storage.list_keys("")
    finally:
        storage.close()
