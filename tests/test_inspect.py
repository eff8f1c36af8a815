"""``trioq inspect``, run as the command an operator types, on real storage (the
file backend, SeaweedFS) and documents written by a real broker."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import orjson
import pytest
import trio

from _broker_proc import broker_process, s3_args, s3_env, subprocess_env
from _gcs_server import GCSServer
from _servers import S3Server
from test_document_safety import BAD_OBJECTS, KEY, put_s3_object
from trioq.storage._file import FileStorage


async def inspect(
    args: Sequence[str], env: Mapping[str, str] | None = None
) -> tuple[int, bytes, str]:
    """``python -m trioq inspect *args``: (exit status, stdout, stderr)."""
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "trioq", "inspect", *args],
            env=subprocess_env(env),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return result.returncode, result.stdout, result.stderr.decode()


async def queue_with_jobs(tmp_path: Path, args: Sequence[str], env: Mapping[str, str]) -> None:
    """A real broker takes three jobs, claims one, and stops (lease released)."""
    async with (
        broker_process(args, log_path=tmp_path / "broker.log", env=env) as broker,
        httpx.AsyncClient(base_url=broker.url, timeout=30) as http,
    ):
        for n in range(3):
            answer = await http.post("/v1/jobs", json={"id": f"j{n}", "payload": n})
            assert answer.status_code == 200, answer.text
        claim = await http.post("/v1/jobs/claim", json={"workerId": "w"})
        assert claim.json()["jobId"] == "j0"
        broker.terminate()
        assert await broker.wait(within=30) == 0, broker.log()


async def test_a_valid_file_queue(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    flags = ["--data-dir", str(data_dir)]
    # format 1 (the log layout's report: test_a_log_layout_queue...)
    await queue_with_jobs(tmp_path, [*flags, "--port", "0", "--layout", "document"], {})
    code, out, err = await inspect(flags)
    assert code == 0, err
    text = out.decode()
    assert f"object:   {KEY} at {data_dir / KEY} (file storage)" in text
    assert "status:   valid trioq queue document (format trioq.queue 1)" in text
    assert "jobs:     3 (2 unclaimed, 1 in progress)" in text
    assert "released" in text
    stored = await FileStorage(data_dir).read(KEY)
    assert stored is not None
    assert f"size:     {len(stored.data)} bytes" in text
    assert f"version:  {stored.version}" in text

    code, out, _ = await inspect([*flags, "--json"])
    assert code == 0
    report = orjson.loads(out)
    assert report["status"] == "valid"
    assert report["version"] == stored.version
    document = report["document"]
    assert document["byStatus"] == {"unclaimed": 2, "in_progress": 1}
    assert (document["dead"], document["finished"]) == (0, 0)
    assert document["leader"]["released"] is True
    assert document["leader"]["leaseAgeMs"] >= 0
    assert document["counters"]["enqueued"] == 3

    code, out, _ = await inspect([*flags, "--raw"])
    assert (code, out) == (0, stored.data)


@pytest.mark.parametrize("case", list(BAD_OBJECTS))
async def test_a_bad_file_object_is_diagnosed_as_the_broker_does(tmp_path: Path, case: str) -> None:
    data, problem = BAD_OBJECTS[case]
    storage = FileStorage(tmp_path / "data")
    version = await storage.create(KEY, data)
    flags = ["--data-dir", str(storage.directory)]
    code, out, err = await inspect(flags)
    assert code == 1, err
    text = out.decode()
    where = f"{KEY} at {storage.path(KEY)} (file storage)"
    assert f"problem:  {where} {problem}" in text, text
    assert "never overwrites it" in text
    code, out, _ = await inspect([*flags, "--json"])
    report = orjson.loads(out)
    assert (code, report["status"], report["size"]) == (1, "invalid", len(data))
    assert problem in report["problem"]
    code, out, _ = await inspect([*flags, "--raw"])
    assert (code, out) == (1, data)
    assert (await storage.read(KEY)) == (data, version)


async def test_the_offending_bytes_are_shown_escaped_with_a_caret(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    await storage.create(KEY, b'{"format": "trioq.queue", "seq": \x00\x01 oops}')
    code, out, _ = await inspect(["--data-dir", str(tmp_path)])
    lines = out.decode().splitlines()
    assert code == 1
    assert any("at byte 33 (line 1, column 34)" in line for line in lines), lines
    shown = lines.index("bytes at byte 33 (escaped):")
    text, caret = lines[shown + 1], lines[shown + 2]
    # 32 bytes of context on each side: the first byte is left out ("...")
    assert text == '  ..."format": "trioq.queue", "seq": \\x00\\x01 oops}'
    assert caret.index("^") == text.index("\\x00")


async def test_a_file_trioq_did_not_write(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.path(KEY).write_bytes(b'{"jobs": []}\n')
    code, out, _ = await inspect(["--data-dir", str(tmp_path)])
    text = out.decode()
    assert code == 1, text
    assert "has a bad header: not a TRIOQ-FILE/1 file" in text
    assert "bytes from byte 0 (escaped):" in text
    assert '  {"jobs": []}\\x0a' in text
    code, out, _ = await inspect(["--data-dir", str(tmp_path), "--raw"])
    assert (code, out) == (1, b'{"jobs": []}\n')


async def test_nothing_there_is_exit_2_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    code, out, _ = await inspect(["--data-dir", str(missing)])
    assert code == 2
    assert "does not exist" in out.decode()
    assert not missing.exists()
    code, out, _ = await inspect(["--data-dir", str(tmp_path), "--json"])
    assert code == 2
    assert orjson.loads(out)["status"] == "missing"
    assert os.listdir(tmp_path) == []


async def test_bad_options_are_exit_2(tmp_path: Path) -> None:
    code, _, err = await inspect(["--data-dir", str(tmp_path), "--bucket", "b"])
    assert code == 2
    assert "applies to the s3 backend only" in err


async def test_s3_objects(tmp_path: Path, seaweedfs: S3Server, seaweedfs_bucket: str) -> None:
    flags = [
        "--storage", "s3", "--bucket", seaweedfs_bucket,
        "--endpoint-url", seaweedfs.endpoint_url,
    ]  # fmt: skip
    env = s3_env(seaweedfs)
    code, out, _ = await inspect(flags, env)
    assert code == 2
    assert f"no object at {KEY} at s3://{seaweedfs_bucket}/{KEY}" in out.decode()

    await queue_with_jobs(tmp_path, [*s3_args(seaweedfs, seaweedfs_bucket), "--port", "0"], env)
    code, out, err = await inspect([*flags, "--json"], env)
    assert code == 0, err
    report = orjson.loads(out)
    assert report["location"] == (
        f"{KEY} at s3://{seaweedfs_bucket}/{KEY} (S3 at {seaweedfs.endpoint_url})"
    )
    assert report["document"]["jobs"] == 3
    assert report["version"].startswith('"')  # the ETag, as the store gives it

    data, problem = BAD_OBJECTS["future-format"]
    put_s3_object(seaweedfs, seaweedfs_bucket, data)
    code, out, _ = await inspect(flags, env)
    assert code == 1
    assert problem in out.decode()

    wrong = {**env, "AWS_SECRET_ACCESS_KEY": "wrong"}
    code, out, _ = await inspect(flags, wrong)
    assert code == 2
    assert "unreadable" in out.decode()


async def test_gcs_objects(tmp_path: Path, fake_gcs: GCSServer, gcs_bucket: str) -> None:
    """``--storage gcs``: the emulator reached as a deployment would reach GCS, through
    the standard ``STORAGE_EMULATOR_HOST``; the log layout, as a broker writes it."""
    flags = ["--storage", "gcs", "--gcs-bucket", gcs_bucket, "--gcs-prefix", "q1"]
    env = {"STORAGE_EMULATOR_HOST": fake_gcs.endpoint_url}
    code, out, _ = await inspect(flags, env)
    assert code == 2
    emulator = f"at {fake_gcs.endpoint_url} (STORAGE_EMULATOR_HOST)"
    assert f"no object at {KEY} in GCS bucket gs://{gcs_bucket}/q1/ {emulator}" in out.decode()

    await queue_with_jobs(tmp_path, [*flags, "--port", "0", "--create"], env)
    code, out, err = await inspect([*flags, "--json"], env)
    assert code == 0, err
    report = orjson.loads(out)
    assert report["location"].startswith(f"{KEY} in GCS bucket gs://{gcs_bucket}/q1/ at ")
    assert report["document"]["jobs"] == 3
    assert report["document"]["byStatus"] == {"unclaimed": 2, "in_progress": 1}
    assert report["version"].isdigit()  # the object's generation

    # the bucket's root (no prefix) holds no queue: inspect says so, and creates none
    code, out, _ = await inspect(["--storage", "gcs", "--gcs-bucket", gcs_bucket], env)
    assert code == 2


@pytest.mark.parametrize("backend", ["file", "seaweedfs"])
async def test_a_log_layout_queue_is_read_as_a_broker_loads_it(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "file":
        flags = ["--data-dir", str(tmp_path / "data")]
        env: dict[str, str] = {}
        broker_flags = [*flags, "--port", "0"]
    else:
        seaweedfs: S3Server = request.getfixturevalue("seaweedfs")
        bucket: str = request.getfixturevalue("seaweedfs_bucket")
        flags = ["--storage", "s3", "--bucket", bucket, "--endpoint-url", seaweedfs.endpoint_url]
        env = s3_env(seaweedfs)
        broker_flags = [*s3_args(seaweedfs, bucket), "--port", "0"]
    # checkpoints every 2 commits: the state is a checkpoint plus records
    await queue_with_jobs(
        tmp_path, [*broker_flags, "--layout", "log", "--checkpoint-every-commits", "2"], env
    )
    code, out, err = await inspect([*flags, "--json"], env)
    assert code == 0, err
    report = orjson.loads(out)
    document = report["document"]
    assert (document["formatVersion"], document["layout"]) == (2, "log")
    assert document["byStatus"] == {"unclaimed": 2, "in_progress": 1}
    assert document["leader"]["released"] is True
    assert document["checkpoints"]  # at least one, and records after the newest
    assert document["seq"] >= document["firstRecord"]
    assert report["size"] < 100  # the marker

    code, out, err = await inspect(flags, env)
    assert code == 0, err
    assert "status:   valid trioq queue document (format trioq.queue 2)" in out.decode()
    assert "layout:   log: checkpoints" in out.decode()

    # --document: the whole state as one format-1 document
    code, out, err = await inspect([*flags, "--document"], env)
    assert code == 0, err
    whole = orjson.loads(out)
    assert (whole["formatVersion"], whole["seq"]) == (1, document["seq"])
    assert sorted(job["id"] for job in whole["jobs"]) == ["j0", "j1", "j2"]
