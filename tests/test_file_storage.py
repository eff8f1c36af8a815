"""FileStorage: format, errors, and the process-level properties (real processes racing
and being killed). The storage contract itself is checked by the shared contract suite.

The real-process tests wait for what they need (a child's line on its pipe, a barrier
file, a temp file appearing) rather than for a time; their loops are bounded by
counts, and ``fail_after`` only stops a broken build from hanging. The one real-time
assertion is the lock wait, whose bound is itself the requirement.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

import trioq
from _file_race_child import make_doc
from _waits import wait_for
from trioq import BucketNotFound, CASConflict, DocumentInvalid, FileStorage, StorageUnavailable

CHILD = str(Path(__file__).with_name("_file_race_child.py"))
KEY = "queues/main/queue.json"
HEADER_SIZE = 72


class Lines:
    """Line-at-a-time reader over a trio receive stream (a child's stdout)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def next(self) -> str:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some()
            if not chunk:
                raise EOFError("child closed its stdout")
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line.decode()


class Child:
    """A long-lived ``race`` child, driven one command line at a time."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.process = process
        self._stdin = process.stdin
        self.lines = Lines(process.stdout)

    async def send(self, line: str) -> None:
        await self._stdin.send_all(line.encode() + b"\n")


def lock_path(storage: FileStorage, key: str) -> Path:
    target = storage.path(key)
    return target.with_name(f".{target.name}.lock")


def temp_path(storage: FileStorage, key: str) -> Path:
    target = storage.path(key)
    return target.with_name(f".{target.name}.tmp")


@contextmanager
def hold_lock(path: Path) -> Iterator[None]:
    """Hold a key's flock from this process (a separate open file description)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


# -- format and basic behaviour ------------------------------------------------------------


async def test_stored_format_is_header_plus_data(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    version = await storage.create(KEY, b'{"seq": 1}')
    raw = storage.path(KEY).read_bytes()
    header, body = raw[:HEADER_SIZE], raw[HEADER_SIZE:]
    magic, token, size, crc = header.decode("ascii").split(" ")
    assert magic == "TRIOQ-FILE/1"
    assert token == version
    assert len(version) == 32
    int(version, 16)
    assert int(size, 16) == len(body) == 10
    assert crc.endswith("\n")
    assert body == b'{"seq": 1}'
    assert await storage.read(KEY) == (b'{"seq": 1}', version)
    assert await storage.version(KEY) == version


async def test_every_write_gets_a_fresh_version_even_for_equal_bytes(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    versions = [await storage.create(KEY, b"same")]
    for _ in range(5):
        versions.append(await storage.write(KEY, b"same", if_match=versions[-1]))
    assert len(set(versions)) == len(versions)
    with pytest.raises(CASConflict):
        await storage.write(KEY, b"same", if_match=versions[-2])


async def test_keys_map_to_flat_safe_file_names(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    keys = ["queue.json", "a/b", "a%2Fb", ".hidden", "a//b/", "ünï cödé", "x" * 600]
    for index, key in enumerate(keys):
        await storage.create(key, str(index).encode())
    for index, key in enumerate(keys):
        found = await storage.read(key)
        assert found is not None
        assert found.data == str(index).encode()
        assert storage.path(key).parent == tmp_path
    listing = await trio.Path(tmp_path).iterdir()
    names = {path.name for path in listing if not path.name.startswith(".")}
    assert names == {storage.path(key).name for key in keys}
    assert len(names) == len(keys)
    assert all(len(name) <= 220 for name in names)
    assert storage.path("a/b").name == "a%2Fb"
    assert storage.path("a%2Fb").name == "a%252Fb"
    assert storage.path(".hidden").name == "%2Ehidden"
    assert [path for path in listing if await path.is_dir()] == []


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "/", "..", "../x", "a/../b", "a/..", ".", "a/./b", "bad\udc80"]
)
async def test_bad_keys_are_rejected(tmp_path: Path, key: str) -> None:
    storage = FileStorage(tmp_path / "data")
    with pytest.raises(ValueError, match="storage key"):
        storage.path(key)
    with pytest.raises(ValueError, match="storage key"):
        await storage.read(key)
    with pytest.raises(ValueError, match="storage key"):
        await storage.version(key)
    with pytest.raises(ValueError, match="storage key"):
        await storage.create(key, b"x")
    with pytest.raises(ValueError, match="storage key"):
        await storage.write(key, b"x", if_match="0" * 32)
    assert not (tmp_path / "data").exists()


async def test_missing_directory_is_bucket_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "data"
    storage = FileStorage(missing, create_directory=False)
    calls = [
        storage.read(KEY),
        storage.version(KEY),
        storage.create(KEY, b"x"),
        storage.write(KEY, b"x", if_match="0" * 32),
    ]
    for call in calls:
        with pytest.raises(BucketNotFound, match=str(missing)):
            await call
    assert not missing.exists()


async def test_directory_is_created_by_default(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "a" / "b")
    assert await storage.read(KEY) is None
    assert await storage.version(KEY) is None
    assert (tmp_path / "a" / "b").is_dir()
    assert storage.describe() == f"file storage {tmp_path / 'a' / 'b'}"


async def test_directory_that_is_a_file_is_bucket_not_found(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    for create_directory in (True, False):
        storage = FileStorage(tmp_path / "file", create_directory=create_directory)
        with pytest.raises(BucketNotFound, match="is not a directory"):
            await storage.create(KEY, b"x")
        with pytest.raises(BucketNotFound, match="is not a directory"):
            await storage.read(KEY)


async def test_permission_denied_is_storage_unavailable() -> None:
    # A child process (dropping root if it has it, since root ignores modes) meets a
    # directory it may enter but not write. Made under the system temp dir because
    # pytest's tmp_path parents are private to their owner.
    with tempfile.TemporaryDirectory() as parent:
        os.chmod(parent, 0o755)
        directory = Path(parent) / "readonly"
        directory.mkdir(mode=0o555)
        try:
            result = await trio.run_process(
                [sys.executable, CHILD, "denied", str(directory), KEY],
                capture_stdout=True,
            )
        finally:
            directory.chmod(0o755)
    tag, message = result.stdout.decode().strip().split(" ", 1)
    assert tag == "StorageUnavailable", message
    assert "permission denied while opening lock file" in message
    assert str(directory) in message


async def test_version_reads_only_the_header(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    big = os.urandom(1024) * (20 * 1024)  # 20 MiB
    version = await storage.create(KEY, big)
    assert await storage.read(KEY) == (big, version)

    # Damage the body in place (same size): read() checks the CRC and refuses it,
    # version() still answers from the header because it never reads the body.
    with storage.path(KEY).open("r+b") as file:
        file.seek(HEADER_SIZE + len(big) // 2)
        file.write(bytes([big[len(big) // 2] ^ 0xFF]))
    with pytest.raises(DocumentInvalid, match="CRC-32"):
        await storage.read(KEY)
    assert await storage.version(KEY) == version

    # A truncated file is caught by both, from the file size alone.
    os.truncate(storage.path(KEY), HEADER_SIZE + 100)
    with pytest.raises(DocumentInvalid, match="damaged"):
        await storage.version(KEY)
    with pytest.raises(DocumentInvalid, match="damaged"):
        await storage.read(KEY)


async def test_foreign_file_is_reported_not_returned(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.path(KEY).write_bytes(b'{"not": "ours"}')
    for call in (storage.read(KEY), storage.version(KEY)):
        with pytest.raises(DocumentInvalid, match="bad header") as info:
            await call
        assert str(storage.path(KEY)) in info.value.message
    with pytest.raises(CASConflict):
        await storage.create(KEY, b"x")


async def test_temp_file_leftovers_are_ignored_then_removed(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    leftover = temp_path(storage, KEY)
    leftover.write_bytes(b"TRIOQ-FILE/1 half a document from a killed wri")
    assert await storage.read(KEY) is None
    assert await storage.version(KEY) is None

    version = await storage.create(KEY, b"one")
    assert not leftover.exists()
    leftover.write_bytes(b"\x00" * 4096)
    assert await storage.read(KEY) == (b"one", version)
    assert await storage.version(KEY) == version
    new = await storage.write(KEY, b"two", if_match=version)
    assert not leftover.exists()
    assert await storage.read(KEY) == (b"two", new)


async def test_lock_wait_is_bounded(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, lock_timeout=0.3)
    version = await storage.create(KEY, b"one")
    with hold_lock(lock_path(storage, KEY)):
        start = time.monotonic()
        with pytest.raises(StorageUnavailable, match="still held"):
            await storage.write(KEY, b"two", if_match=version)
        # lock_timeout is real time by design (the lock is the OS's): the bound is
        # the requirement. Not before it; the upper bound is generous for a loaded
        # machine and still far from the 10 s default or waiting for the holder.
        waited = time.monotonic() - start
        assert 0.3 <= waited < 5.0, waited
        # Readers do not take the lock.
        assert await storage.read(KEY) == (b"one", version)
    assert await storage.write(KEY, b"two", if_match=version)


async def test_cancelled_write_is_not_abandoned(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    version = await storage.create(KEY, b"one")
    big = b"x" * (20 * 1024 * 1024)
    events: list[str] = []
    results: list[str] = []

    async def writer() -> None:
        results.append(await storage.write(KEY, big, if_match=version))
        events.append("returned")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()  # the writer waits on its thread
        events.append("cancel")
        nursery.cancel_scope.cancel()
    # The cancel came while the write was pending; its thread ran to completion and
    # the result was delivered, not dropped.
    assert events == ["cancel", "returned"]
    assert await storage.read(KEY) == (big, results[0])


async def test_tasks_race_in_one_process(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    winners: list[str] = []

    async def attempt(if_match: str | None) -> None:
        try:
            if if_match is None:
                winners.append(await storage.create(KEY, b"c"))
            else:
                winners.append(await storage.write(KEY, b"w", if_match=if_match))
        except CASConflict:
            pass

    current: str | None = None
    for _ in range(10):
        winners.clear()
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(attempt, current)
        assert len(winners) == 1
        current = winners[0]
        assert await storage.version(KEY) == current


# -- real processes ------------------------------------------------------------------------


async def test_processes_race_create_then_write(tmp_path: Path) -> None:
    n_children, rounds = 8, 10
    directory = tmp_path / "data"
    barriers = tmp_path / "barriers"
    barriers.mkdir()
    storage = FileStorage(directory)
    command = [sys.executable, CHILD, "race", str(directory), KEY]
    overlapping = 0

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            children: list[Child] = []
            for _ in range(n_children):
                process = await nursery.start(
                    partial(
                        trio.run_process,
                        command,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        check=True,
                    )
                )
                children.append(Child(process))
            for child in children:
                assert await child.lines.next() == "ready"

            current: str | None = None
            for round_ in range(rounds + 1):
                barrier = barriers / f"go-{round_}"
                for index, child in enumerate(children):
                    payload = f"round-{round_}-child-{index}"
                    if current is None:
                        await child.send(f"create {barrier} {payload}")
                    else:
                        await child.send(f"write {barrier} {current} {payload}")
                for child in children:
                    assert await child.lines.next() == "armed"
                barrier.touch()  # release them all at once

                outcomes = [(await child.lines.next()).split() for child in children]
                won = [(i, o) for i, o in enumerate(outcomes) if o[0] == "won"]
                lost = [o for o in outcomes if o[0] == "lost"]
                assert len(won) == 1, outcomes
                assert len(lost) == n_children - 1, outcomes
                winner, (_, version, _, won_end) = won[0]
                # Losers that started before the winner finished really contended.
                overlapping += sum(float(o[1]) < float(won_end) for o in lost)

                stored = await storage.read(KEY)
                assert stored == (f"round-{round_}-child-{winner}".encode(), version)
                assert version != current
                current = version

            for child in children:
                await child.send("exit")
    # Across all rounds, processes did run into each other (not one after another).
    assert overlapping >= rounds


async def test_sigkill_mid_write_never_tears_the_document(tmp_path: Path) -> None:
    size = 4 * 1024 * 1024
    directory = tmp_path / "data"
    storage = FileStorage(directory)
    temp = temp_path(storage, KEY)
    command = [sys.executable, CHILD, "churn", str(directory), KEY, str(size)]
    kills = mid_write = 0
    last_seq = -1

    def more() -> bool:
        # At least 6 kills; then enough once 3 have landed mid-write (every other
        # kill aims for that, so usually at once). Bounded by a count, not a time.
        if kills < 6:
            return True
        return kills < 30 and mid_write < 3

    with trio.fail_after(100):  # a hang guard: ~0.3 s a kill, slower when loaded
        while more():
            async with trio.open_nursery() as nursery:
                process: trio.Process = await nursery.start(
                    partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
                )
                assert process.stdout is not None
                started = await Lines(process.stdout).next()
                first_seq = int(started.split()[1])
                if kills % 2:
                    # aimed: once a write is under way (its first one is done, so a
                    # temp file now is the next write's, until its rename)
                    await wait_for(temp.exists, interval=0.001, what="a write under way")
                else:
                    # anywhere: a random moment (not a wait for a state)
                    await trio.sleep(random.uniform(0.0, 0.06))
                process.send_signal(signal.SIGKILL)
            assert process.returncode == -signal.SIGKILL
            kills += 1
            if temp.exists():
                mid_write += 1  # the kill landed between temp-file creation and rename

            current = await storage.read(KEY)
            assert current is not None
            seq = json.loads(current.data)["seq"]
            assert current.data == make_doc(seq, size)  # complete, never torn or empty
            assert seq >= first_seq
            assert seq >= last_seq
            assert await storage.version(KEY) == current.version
            last_seq = seq

    assert kills >= 5
    assert current is not None
    assert mid_write >= 1, f"no kill out of {kills} landed mid-write"
    # The store is fully usable after the crashes; the next writer removes the leftover.
    new = await storage.write(KEY, make_doc(last_seq + 1, 10), if_match=current.version)
    assert await storage.read(KEY) == (make_doc(last_seq + 1, 10), new)
    assert not temp.exists()


def test_exported() -> None:
    assert trioq.FileStorage is FileStorage
    assert isinstance(FileStorage("."), trioq.Storage)


# -- listing and deleting ------------------------------------------------------------------


async def test_list_never_returns_lock_temp_or_foreign_files(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    await storage.create(KEY, b"one")
    await storage.create(".hidden/x", b"two")  # stored as %2Ehidden%2Fx
    assert lock_path(storage, KEY).exists()
    temp_path(storage, KEY).write_bytes(b"a killed writer's leftover")
    for foreign in ("notes.txt~", "bad%zz", "lower%2f", "%41", "sp ace", "%FF"):
        (tmp_path / foreign).write_bytes(b"not ours")
    (tmp_path / "subdir").mkdir()
    assert await storage.list_keys("") == [".hidden/x", KEY]
    assert await storage.list_keys("queues/") == [KEY]


async def test_keys_with_hashed_names_are_stored_but_not_listed(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    long_key = "log/" + "x" * 300
    await storage.create(long_key, b"long")
    await storage.create("log/short", b"short")
    assert "~" in storage.path(long_key).name
    assert await storage.list_keys("log/") == ["log/short"]
    await storage.delete_key(long_key)  # still deletable by its key
    assert await storage.read(long_key) is None


async def test_two_directories_do_not_see_each_other(tmp_path: Path) -> None:
    one, two = FileStorage(tmp_path / "one"), FileStorage(tmp_path / "two")
    await one.create("log/1", b"1")
    await two.create("log/2", b"2")
    assert await one.list_keys("") == ["log/1"]
    assert await two.list_keys("") == ["log/2"]
    await one.delete_key("log/2")  # not there: nothing happens to two's
    assert await two.read("log/2") is not None


async def test_list_of_a_missing_directory(tmp_path: Path) -> None:
    assert await FileStorage(tmp_path / "new").list_keys("") == []
    assert (tmp_path / "new").is_dir()
    strict = FileStorage(tmp_path / "absent", create_directory=False)
    with pytest.raises(BucketNotFound, match="does not exist"):
        await strict.list_keys("")


async def test_delete_removes_document_temp_and_lock_files(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    await storage.create(KEY, b"one")
    temp_path(storage, KEY).write_bytes(b"leftover")
    await storage.delete_key(KEY)
    assert sorted(os.listdir(tmp_path)) == []
    await storage.delete_key(KEY)  # missing: fine, and leaves nothing behind
    assert sorted(os.listdir(tmp_path)) == []


async def test_delete_waits_for_the_keys_lock(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, lock_timeout=0.3)
    version = await storage.create(KEY, b"one")
    with hold_lock(lock_path(storage, KEY)):
        with pytest.raises(StorageUnavailable, match="still held"):
            await storage.delete_key(KEY)
        assert await storage.read(KEY) == (b"one", version)  # a writer holds it: untouched
    await storage.delete_key(KEY)
    assert await storage.read(KEY) is None


async def test_a_lock_taken_on_a_deleted_lock_file_is_not_trusted(tmp_path: Path) -> None:
    """A process that opened the lock file before a delete removed it, and locks it
    after, gets the lock at once (nobody else uses that file any more) while the
    key's next writer locks a fresh file: the check refuses the stale one."""
    storage = FileStorage(tmp_path, lock_timeout=0.3)
    await storage.create(KEY, b"one")
    path = lock_path(storage, KEY)
    stale = os.open(path, os.O_RDWR)  # opened before the delete
    try:
        await storage.delete_key(KEY)
        fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # and locked after it
        assert not storage._lock_is_current(path, stale)
        # The stale lock does not hold up the key's writers: they lock a fresh file.
        await storage.create(KEY, b"two")
        assert await storage.read(KEY) is not None
        assert not os.path.samestat(os.fstat(stale), os.stat(path))
    finally:
        os.close(stale)


def test_a_lock_on_an_unlinked_file_is_refused(tmp_path: Path) -> None:
    """_lock_is_current, the check itself: a locked file that is no longer (or no
    longer the file) at the lock path is refused."""
    storage = FileStorage(tmp_path)
    path = lock_path(storage, KEY)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        assert storage._lock_is_current(path, fd)
        os.unlink(path)
        assert not storage._lock_is_current(path, fd)
        path.write_bytes(b"")  # a new file at the path
        assert not storage._lock_is_current(path, fd)
    finally:
        os.close(fd)


async def test_creates_and_deletes_race_on_one_key(tmp_path: Path) -> None:
    """Handles (separate lock file descriptions, as separate processes have) create
    and delete one key at once, so deletes remove lock files others are about to
    lock: every create either wins or conflicts, readers never see a torn file,
    and each create that won is what the key holds until the next delete. (Without
    the lock file check of _lock_is_current, 4 runs of 10 failed when tried.)"""
    handles = [FileStorage(tmp_path, lock_timeout=5.0) for _ in range(6)]
    outcomes = {"created": 0, "conflict": 0, "deleted": 0, "delete_calls": 0, "deleting": 0}

    async def creator(index: int) -> None:
        for round_number in range(100):
            data = f"{index}:{round_number}".encode()
            try:
                version = await handles[index].create(KEY, data)
            except CASConflict:
                outcomes["conflict"] += 1
                continue
            outcomes["created"] += 1
            calls, deleting = outcomes["delete_calls"], outcomes["deleting"]
            current = await handles[index].read(KEY)
            if deleting == 0 and outcomes["delete_calls"] == calls:
                # no delete ran between the create and the read: it is still ours
                assert current == (data, version)
            else:
                # a delete ran, and another create may have won after it: gone, or a
                # whole record of some creator's, never a torn one
                assert current is None or re.fullmatch(rb"[0-3]:[0-9]+", current.data)

    async def deleter(index: int) -> None:
        for _ in range(100):
            outcomes["delete_calls"] += 1
            outcomes["deleting"] += 1
            try:
                await handles[index].delete_key(KEY)
            finally:
                outcomes["deleting"] -= 1
            outcomes["deleted"] += 1

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for index in range(4):
                nursery.start_soon(creator, index)
            for index in (4, 5):
                nursery.start_soon(deleter, index)
    assert outcomes["created"] + outcomes["conflict"] == 400
    assert outcomes["created"] >= 1
    assert outcomes["deleted"] == 200
    await handles[0].delete_key(KEY)
    assert os.listdir(tmp_path) == []
