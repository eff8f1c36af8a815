"""Document safety, with real broker processes on real storage (the file backend,
SeaweedFS): an object at the queue key that is not a queue document this trioq can
read is never overwritten, and the broker refuses to lead it with one line naming the
object and what is wrong; a full disk or a read-only bucket fails commits with
``StorageUnavailable``, loses nothing acknowledged, and passes.

The full-disk tests fill a real file system: a small tmpfs when this process may
mount one (root in a container usually may), else a per-process file size limit
(``RLIMIT_FSIZE``, writes fail with ``EFBIG``) set and lifted from outside with
``prlimit``; the second variant runs everywhere on Linux.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson
import pytest
import trio

from _broker_proc import (
    READY_LINE,
    BrokerProcess,
    _read_ready_line,
    broker_process,
    run_broker_to_exit,
    s3_args,
    s3_env,
    subprocess_env,
)
from _servers import S3Server, read_only_env
from _waits import wait_for
from trioq import DocumentInvalid, StorageUnavailable
from trioq._inspect import read_state
from trioq.core._engine import Engine
from trioq.storage._file import FileStorage
from trioq.storage._protocol import Storage, Versioned
from trioq.storage._s3 import S3Storage

KEY = "queue.json"

_VALID_HEAD = b'{"format":"trioq.queue","formatVersion":1,"seq":3,"leader":null,"nextOrder":1,'
_TRUNCATED = _VALID_HEAD + b'"counters":{"enqueued":0},"jobs":[{"id":"a","ty'

BAD_OBJECTS: dict[str, tuple[bytes, str]] = {
    "truncated": (_TRUNCATED, f"is not valid JSON: truncated JSON at byte {len(_TRUNCATED)}"),
    "invalid-json": (b'{"format": trioq}', "is not valid JSON: invalid literal"),
    "foreign-object": (
        b'{"hello": 1}',
        "is not a trioq queue document: no 'format' field (a JSON object with keys 'hello')",
    ),
    "array": (b"[1, 2, 3]", "is not a trioq queue document: it is a JSON array"),
    "future-format": (
        b'{"format":"trioq.queue","formatVersion":7,"seq":9}',
        "has format version 7, newer than this broker supports (1)",
    ),
    "empty": (b"", "is empty (0 bytes)"),
    "binary": (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe",
        "is not valid JSON: binary data, not UTF-8 text (first invalid byte at byte 0",
    ),
}
"""Objects a broker must refuse: the bytes, and the diagnosis its line carries."""


def refusals(text: str) -> list[str]:
    return [line for line in text.splitlines() if "refusing to lead" in line]


def the_refusal(text: str, where: str, problem: str) -> str:
    """The one refusal line in ``text``; it names ``where`` and says ``problem``."""
    lines = refusals(text)
    assert len(lines) == 1, text
    line = lines[0]
    assert line.startswith(f"trioq broker: refusing to lead: {where} "), line
    assert problem in line, line
    assert "left unchanged" in line, line
    return line


# ------------------------------------------------------------------ at startup


@pytest.mark.parametrize("create", [False, True], ids=["plain", "--create"])
@pytest.mark.parametrize("case", list(BAD_OBJECTS))
async def test_file_broker_refuses_a_bad_document_at_startup(
    tmp_path: Path, case: str, create: bool
) -> None:
    data, problem = BAD_OBJECTS[case]
    storage = FileStorage(tmp_path / "data")
    version = await storage.create(KEY, data)
    args = ["--data-dir", str(storage.directory), "--port", "0"]
    code, out, err = await run_broker_to_exit([*args, "--create"] if create else args)
    assert code == 1, err
    assert "listening on" not in out
    the_refusal(err, f"{KEY} at {storage.path(KEY)} (file storage)", problem)
    assert await storage.read(KEY) == Versioned(data, version)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b'{"hello": 1}', "has a bad header: not a TRIOQ-FILE/1 file"),
        (b"", "is empty (0 bytes)"),
        (b"TRIOQ-FILE/1 0123", "bad header: the file is 17 bytes, cut inside its header"),
    ],
    ids=["no-header", "empty", "cut-header"],
)
async def test_file_broker_refuses_a_file_it_did_not_write(
    tmp_path: Path, raw: bytes, problem: str
) -> None:
    """A file at the key without the file backend's header (copied there by hand,
    or cut short): the same refusal, from the storage layer."""
    storage = FileStorage(tmp_path / "data")
    storage.directory.mkdir()
    storage.path(KEY).write_bytes(raw)
    code, _, err = await run_broker_to_exit(
        ["--data-dir", str(storage.directory), "--port", "0", "--create"]
    )
    assert code == 1, err
    the_refusal(err, f"{storage.path(KEY)} (file storage)", problem)
    assert storage.path(KEY).read_bytes() == raw


async def test_file_broker_refuses_a_truncated_file(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "data")
    await storage.create(KEY, b'{"format":"trioq.queue"}' * 10)
    path = storage.path(KEY)
    os.truncate(path, path.stat().st_size - 7)
    before = path.read_bytes()
    code, _, err = await run_broker_to_exit(["--data-dir", str(storage.directory), "--port", "0"])
    assert code == 1, err
    the_refusal(err, f"{path} (file storage)", "is damaged: the file is 305 bytes")
    assert "(truncated)" in err
    assert path.read_bytes() == before


def s3_object(server: S3Server, bucket: str) -> tuple[bytes, str] | None:
    client = server.client()
    try:
        got = client.get_object(Bucket=bucket, Key=KEY)
        return got["Body"].read(), got["ETag"]
    except client.exceptions.NoSuchKey:
        return None
    finally:
        client.close()


def put_s3_object(server: S3Server, bucket: str, data: bytes) -> str:
    client = server.client()
    try:
        return client.put_object(Bucket=bucket, Key=KEY, Body=data)["ETag"]
    finally:
        client.close()


@pytest.mark.parametrize("case", list(BAD_OBJECTS))
async def test_s3_broker_refuses_a_bad_document_at_startup(
    seaweedfs: S3Server, seaweedfs_bucket: str, case: str
) -> None:
    data, problem = BAD_OBJECTS[case]
    etag = put_s3_object(seaweedfs, seaweedfs_bucket, data)
    # s3_args carries --create: it must not overwrite an object of any kind either
    code, _, err = await run_broker_to_exit(
        [*s3_args(seaweedfs, seaweedfs_bucket), "--port", "0"], env=s3_env(seaweedfs)
    )
    assert code == 1, err
    where = f"{KEY} at s3://{seaweedfs_bucket}/{KEY} (S3 at {seaweedfs.endpoint_url})"
    the_refusal(err, where, problem)
    assert s3_object(seaweedfs, seaweedfs_bucket) == (data, etag)


# --------------------------------------------------- overwritten while leading


async def submit(http: httpx.AsyncClient, url: str, job_id: str) -> httpx.Response:
    return await http.post(f"{url}/v1/jobs", json={"id": job_id, "payload": {"n": job_id}})


FAST = ["--broker-heartbeat-interval-ms", "200", "--broker-heartbeat-timeout-ms", "2000"]
"""The leader commits (and so meets an overwritten document) every 200 ms."""

DOCUMENT = ["--layout", "document"]
"""Format 1, where every commit meets the object at the key. In the log layout the key
holds a marker that commits never touch: it is checked at each takeover
(:func:`test_a_marker_overwritten_under_a_log_leader_stops_the_next_takeover`)."""


@pytest.mark.parametrize("case", ["foreign-object", "future-format", "truncated", "binary"])
async def test_file_leader_and_standby_refuse_a_document_overwritten_under_them(
    tmp_path: Path, case: str
) -> None:
    """Someone overwrites the key while a broker leads and another stands by: the
    leader's next commit fails its compare-and-set, it reads the object and stops
    with the refusal line; the standby's next poll sees it and does the same.
    Neither writes over it."""
    data, problem = BAD_OBJECTS[case]
    storage = FileStorage(tmp_path / "data")
    args = ["--data-dir", str(storage.directory), "--port", "0", *FAST, *DOCUMENT]
    async with (
        broker_process(args, log_path=tmp_path / "leader.log") as leader,
        broker_process(args, log_path=tmp_path / "standby.log") as standby,
        httpx.AsyncClient(timeout=30) as http,
    ):
        assert (leader.role, standby.role) == ("leader", "standby")
        assert (await submit(http, leader.url, "before")).status_code == 200
        got = await storage.read(KEY)
        assert got is not None
        version = await overwrite(storage, data, got.version)
        for broker in (leader, standby):
            assert await broker.wait(within=30) == 1, broker.log()
            the_refusal(broker.log(), f"{KEY} at {storage.path(KEY)} (file storage)", problem)
    assert await storage.read(KEY) == Versioned(data, version)


@pytest.mark.parametrize("case", ["foreign-object", "future-format"])
async def test_a_marker_overwritten_under_a_log_leader_stops_the_next_takeover(
    tmp_path: Path, case: str
) -> None:
    """The log layout: someone overwrites the marker at the key while a broker leads
    and another stands by. Commits create records and never meet it; when the leader
    stops, the standby's takeover reads the marker first, refuses with the line, and
    writes nothing: no record after the leader's last."""
    data, problem = BAD_OBJECTS[case]
    storage = FileStorage(tmp_path / "data")
    args = ["--data-dir", str(storage.directory), "--port", "0", *FAST]
    async with (
        broker_process(args, log_path=tmp_path / "leader.log") as leader,
        broker_process(args, log_path=tmp_path / "standby.log") as standby,
        httpx.AsyncClient(timeout=30) as http,
    ):
        assert (leader.role, standby.role) == ("leader", "standby")
        assert (await submit(http, leader.url, "before")).status_code == 200
        got = await storage.read(KEY)
        assert got is not None
        version = await overwrite(storage, data, got.version)
        assert (await submit(http, leader.url, "after")).status_code == 200
        leader.terminate()
        assert await leader.wait(within=30) == 0, leader.log()
        records = await storage.list_keys("queue/log/")
        assert await standby.wait(within=30) == 1, standby.log()
        the_refusal(standby.log(), f"{KEY} at {storage.path(KEY)} (file storage)", problem)
    assert await storage.read(KEY) == Versioned(data, version)
    assert await storage.list_keys("queue/log/") == records


async def overwrite(storage: Storage, data: bytes, version: str) -> str:
    """Replace the document under a running leader (its own CAS, so it lands)."""
    while True:
        try:
            return await storage.write(KEY, data, if_match=version)
        except Exception:
            got = await storage.read(KEY)  # the leader committed meanwhile
            assert got is not None
            version = got.version


@pytest.mark.parametrize("case", ["foreign-object", "future-format", "empty"])
async def test_s3_leader_refuses_a_document_overwritten_under_it(
    tmp_path: Path, seaweedfs: S3Server, seaweedfs_bucket: str, case: str
) -> None:
    data, problem = BAD_OBJECTS[case]
    args = [*s3_args(seaweedfs, seaweedfs_bucket), "--port", "0", *FAST, *DOCUMENT]
    async with (
        broker_process(args, log_path=tmp_path / "leader.log", env=s3_env(seaweedfs)) as leader,
        httpx.AsyncClient(timeout=30) as http,
    ):
        assert (await submit(http, leader.url, "before")).status_code == 200
        etag = put_s3_object(seaweedfs, seaweedfs_bucket, data)  # unconditional
        assert await leader.wait(within=30) == 1, leader.log()
        where = f"{KEY} at s3://{seaweedfs_bucket}/{KEY} (S3 at {seaweedfs.endpoint_url})"
        the_refusal(leader.log(), where, problem)
    assert s3_object(seaweedfs, seaweedfs_bucket) == (data, etag)


# ------------------------------------------------------------------ full disk


class Filler:
    """A real file system the test fills and frees under a running broker."""

    name = ""

    def data_dir(self) -> Path:
        raise NotImplementedError

    def started(self, pid: int) -> None:
        """The broker runs as ``pid``."""

    def fill(self) -> None:
        raise NotImplementedError

    def free(self) -> None:
        raise NotImplementedError

    expected = ""
    """The cause the broker's outage line names."""


class TmpfsFiller(Filler):
    """A 4 MiB tmpfs, filled with a ballast file and freed by deleting it."""

    name = "tmpfs"
    expected = "no space left on device (ENOSPC)"

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint

    def data_dir(self) -> Path:
        return self.mountpoint / "data"

    def fill(self) -> None:
        chunk = b"\0" * 65536
        with (self.mountpoint / "ballast").open("wb", buffering=0) as ballast:
            while chunk:
                try:
                    ballast.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk = chunk[: len(chunk) // 2]

    def free(self) -> None:
        (self.mountpoint / "ballast").unlink()


class RlimitFiller(Filler):
    """The broker's own file size limit (``RLIMIT_FSIZE``), lowered below the
    document's size and raised again from outside (``prlimit``); the broker ignores
    SIGXFSZ, so a write past it fails with ``EFBIG``."""

    name = "rlimit"
    expected = "file too large (EFBIG: a file size limit)"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pid = 0

    def data_dir(self) -> Path:
        return self.directory / "data"

    def started(self, pid: int) -> None:
        self.pid = pid

    def fill(self) -> None:
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))

    def free(self) -> None:
        limit = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, limit)


def can_mount_tmpfs(mountpoint: Path) -> bool:
    """Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN): tried."""
    if os.geteuid() != 0:
        return False
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


@contextlib.contextmanager
def full_disk_filler(tmp_path: Path, *, kind: str) -> Iterator[Filler]:
    """A tmpfs if one can be mounted (``kind="best"``), else (or with
    ``kind="rlimit"``) the file size limit."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    if kind == "best" and can_mount_tmpfs(mountpoint):
        try:
            yield TmpfsFiller(mountpoint)
        finally:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        return
    yield RlimitFiller(tmp_path)


_IGNORE_SIGXFSZ = (
    "import runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "sys.argv[0] = 'trioq.broker'; runpy.run_module('trioq.broker', run_name='__main__')"
)


@asynccontextmanager
async def broker_ignoring_sigxfsz(
    args: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[BrokerProcess]:
    """``python -m trioq.broker *args`` with SIGXFSZ ignored (a write past the file
    size limit then fails with EFBIG instead of killing the process); SIGKILLed and
    reaped on the way out. Its log comes through a pipe and this process writes it
    to ``log_path``: under a file size limit the broker could not write a log file
    itself."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", _IGNORE_SIGXFSZ, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(env),
    )

    async def copy_log() -> None:
        assert process.stderr is not None
        with log_path.open("wb", buffering=0) as log_file:
            async for chunk in process.stderr:
                log_file.write(chunk)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy_log)
            try:
                assert process.stdout is not None
                line = await _read_ready_line(process.stdout, trio.current_time() + 20)
                match = READY_LINE.match(line)
                assert match is not None, line
                yield BrokerProcess(
                    process, match["id"], match["url"], match["role"], match["storage"], log_path
                )
            finally:
                with trio.move_on_after(5, shield=True):
                    if process.returncode is None:
                        process.kill()
                    await process.wait()
    finally:
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                await stream.aclose()


async def full_disk_scenario(tmp_path: Path, filler: Filler, layout: str = "log") -> None:
    """Jobs acknowledged, the disk fills, submits fail with 503 StorageUnavailable
    (one outage line in the log however many commits fail), space returns, submits
    succeed again, and every job acknowledged before is still there."""
    data_dir = filler.data_dir()
    args = ["--data-dir", str(data_dir), "--port", "0", *FAST, "--layout", layout]
    async with (
        broker_ignoring_sigxfsz(args, log_path=tmp_path / "broker.log") as broker,
        httpx.AsyncClient(timeout=60) as http,
    ):
        filler.started(broker.pid)
        acknowledged = [f"before-{n}" for n in range(5)]
        for job_id in acknowledged:
            assert (await submit(http, broker.url, job_id)).status_code == 200
        filler.fill()
        for n in range(3):
            refused = await submit(http, broker.url, f"during-{n}")
            assert refused.status_code == 503, refused.text
            assert refused.json()["_tag"] == "StorageUnavailable", refused.text
            assert filler.expected in refused.json()["message"], refused.text
        # the leader's heartbeat commits fail too; still one line for the outage
        outage = [line for line in broker.log().splitlines() if "writes fail" in line]
        assert len(outage) == 1, broker.log()
        assert filler.expected in outage[0]
        health = (await http.get(f"{broker.url}/healthz")).json()
        assert health["role"] == "leader", health  # it keeps leading, refusing writes
        filler.free()

        async def accepted() -> bool:
            return (await submit(http, broker.url, "after")).status_code == 200

        await wait_for(accepted, what="a submit succeeds once space is back")
        assert "writes succeed again" in broker.log()
        for job_id in [*acknowledged, "after"]:
            found = await http.get(f"{broker.url}/v1/jobs/{job_id}")
            assert found.status_code == 200, (job_id, found.text)
        assert broker.returncode is None
    state = await read_state(FileStorage(data_dir), KEY)
    assert {*acknowledged, "after"} <= set(state.jobs)


async def test_full_disk_fails_commits_and_recovers(tmp_path: Path) -> None:
    """On a tmpfs the test fills when it may mount one, else on a file size limit."""
    with full_disk_filler(tmp_path, kind="best") as filler:
        await full_disk_scenario(tmp_path, filler)


@pytest.mark.skipif(sys.platform != "linux", reason="prlimit of another process is Linux's")
@pytest.mark.parametrize("layout", ["log", "document"])
async def test_file_size_limit_fails_commits_and_recovers(tmp_path: Path, layout: str) -> None:
    with full_disk_filler(tmp_path, kind="rlimit") as filler:
        await full_disk_scenario(tmp_path, filler, layout)


async def test_file_backend_maps_a_full_disk_to_storage_unavailable(tmp_path: Path) -> None:
    """Unit level: ENOSPC, EDQUOT, EROFS and EFBIG while writing the temp file are
    StorageUnavailable naming the cause; the document is untouched."""
    storage = FileStorage(tmp_path)
    version = await storage.create(KEY, b"one")
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
        error = OSError(code, os.strerror(code))
        with pytest.MonkeyPatch.context() as patch:

            def refuse(*args: object, error: OSError = error) -> None:
                raise error

            patch.setattr(os, "fsync", refuse)
            with pytest.raises(StorageUnavailable, match=errno.errorcode[code]) as caught:
                await storage.write(KEY, b"two", if_match=version)
        assert type(caught.value) is StorageUnavailable
        assert await storage.read(KEY) == Versioned(b"one", version)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


# ------------------------------------------------------------ read-only bucket


@pytest.mark.parametrize("layout", ["log", "document"])
async def test_a_broker_with_read_only_credentials_cannot_lead(
    tmp_path: Path, seaweedfs: S3Server, seaweedfs_bucket: str, layout: str
) -> None:
    """A leader with a writable identity acknowledges jobs and stops (its lease
    released). A broker with a read-only identity reads the queue, tries to take it
    over, is refused the write and exits with one line saying so; the queue and
    every acknowledged job are as they were."""
    args = [*s3_args(seaweedfs, seaweedfs_bucket), "--port", "0", "--layout", layout]
    async with (
        broker_process(args, log_path=tmp_path / "rw.log", env=s3_env(seaweedfs)) as leader,
        httpx.AsyncClient(timeout=30) as http,
    ):
        for n in range(3):
            assert (await submit(http, leader.url, f"job-{n}")).status_code == 200
        leader.terminate()
        assert await leader.wait(within=30) == 0, leader.log()
    before = bucket_objects(seaweedfs, seaweedfs_bucket)
    code, _, err = await run_broker_to_exit(args, env=read_only_env(seaweedfs))
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("trioq broker:")]
    assert len(lines) == 1, err
    # the takeover's write: the document, or the log's next record
    written = KEY if layout == "document" else "queue/log/"
    assert f"s3://{seaweedfs_bucket}/{written}" in lines[0]
    assert "the store refused the write (HTTP 403 AccessDenied" in lines[0]
    assert "read-only credentials" in lines[0]
    assert bucket_objects(seaweedfs, seaweedfs_bucket) == before
    storage = S3Storage(
        seaweedfs_bucket,
        endpoint_url=seaweedfs.endpoint_url,
        region="us-east-1",
        access_key_id=seaweedfs.access_key_id,
        secret_access_key=seaweedfs.secret_access_key,
    )
    try:
        assert set((await read_state(storage, KEY)).jobs) == {"job-0", "job-1", "job-2"}
    finally:
        storage.close()


def bucket_objects(server: S3Server, bucket: str) -> dict[str, str]:
    """Every object in ``bucket``: its key and ETag."""
    client = server.client()
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}
    finally:
        client.close()


class SwitchedStorage:
    """Reads through ``reader``; writes through ``writer``, which the test swaps
    between a writable and a read-only credential of the same bucket (a bucket
    policy toggle, which SeaweedFS does not offer)."""

    def __init__(self, reader: S3Storage, writer: S3Storage) -> None:
        self.reader = reader
        self.writer = writer

    def describe(self) -> str:
        return self.reader.describe()

    async def read(self, key: str) -> Versioned | None:
        return await self.reader.read(key)

    async def version(self, key: str) -> str | None:
        return await self.reader.version(key)

    async def write(self, key: str, data: bytes, *, if_match: str) -> str:
        return await self.writer.write(key, data, if_match=if_match)

    async def create(self, key: str, data: bytes) -> str:
        return await self.writer.create(key, data)

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        return await self.reader.list_keys(prefix, start_after=start_after, limit=limit)

    async def delete_key(self, key: str) -> None:
        await self.writer.delete_key(key)


async def test_a_leader_whose_bucket_turns_read_only_fails_commits_and_recovers(
    seaweedfs: S3Server, seaweedfs_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Unit level over the real server: an engine leads with a writable credential;
    its writes switch to a read-only one (every commit: StorageUnavailable, nothing
    written, one log line); they switch back, and it commits again with everything
    acknowledged before still stored."""

    def s3(env: Mapping[str, str]) -> S3Storage:
        return S3Storage(
            seaweedfs_bucket,
            endpoint_url=seaweedfs.endpoint_url,
            region="us-east-1",
            access_key_id=env["AWS_ACCESS_KEY_ID"],
            secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    writable, read_only = s3(s3_env(seaweedfs)), s3(read_only_env(seaweedfs))
    storage = SwitchedStorage(writable, writable)
    engine = Engine(storage, broker_id="rw")
    from trioq.core._state import NewJob

    def job(job_id: str) -> list[NewJob]:
        return [NewJob({"n": job_id}, id=job_id)]

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.enqueue(job("a"))
        stored = await writable.read(KEY)
        storage.writer = read_only
        for name in ("b", "c"):
            with pytest.raises(StorageUnavailable, match="AccessDenied"):
                await engine.enqueue(job(name))
        assert await writable.read(KEY) == stored
        outage = [r for r in caplog.records if "writes fail" in r.getMessage()]
        assert len(outage) == 1, [r.getMessage() for r in caplog.records]
        storage.writer = writable
        await engine.enqueue(job("d"))
        engine.stop()
    final = await writable.read(KEY)
    assert final is not None
    assert {j["id"] for j in orjson.loads(final.data)["jobs"]} == {"a", "d"}
    # (the "writes succeed again" line is the file tests': here the recovered writes
    # go through another S3Storage than the one whose writes failed)


def test_problems_name_the_fault_precisely() -> None:
    """The diagnosis of each kind of bad object (the words after its name)."""
    from trioq.core._state import QueueState

    for data, problem in BAD_OBJECTS.values():
        with pytest.raises(DocumentInvalid) as caught:
            QueueState.decode(data, name="X")
        assert caught.value.message.startswith("X "), caught.value.message
        assert problem in caught.value.message
        # the header alone (what a standby reads) gives the same words, except for
        # a document whose header is fine and whose records are cut short
        if not data.startswith(_VALID_HEAD):
            with pytest.raises(DocumentInvalid, match=re.escape(problem)):
                QueueState.decode_header(data, name="X")
