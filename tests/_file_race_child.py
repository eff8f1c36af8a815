"""A child process for tests/test_file_storage.py: races and crashes FileStorage for real.

Run as ``python _file_race_child.py MODE DIRECTORY KEY [ARGS]``. Modes:

``race``
    Prints ``ready``, then serves commands read from stdin, one per line:

    - ``create BARRIER PAYLOAD`` / ``write BARRIER IF_MATCH PAYLOAD``: prints
      ``armed``, waits for the file BARRIER to appear, runs the operation and
      prints ``won VERSION T0 T1`` or ``lost T0 T1`` (CASConflict), where T0/T1
      are ``time.monotonic()`` (system-wide) around the call;
    - ``exit``: exits 0.

``churn SIZE``
    Writes documents of about SIZE bytes (see :func:`make_doc`) to KEY in a tight
    loop, each a CAS write on the previous one, ``seq`` counting up. Prints
    ``started SEQ`` once, after its first write, then nothing (so a full pipe never
    stalls it): the parent kills it with SIGKILL at a random moment.

``denied``
    Drops root privileges (to uid/gid 65534) if it has them, then tries to
    ``create`` KEY and prints ``TAG MESSAGE`` for the error it gets (or ``ok``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from functools import partial

import trio

import trioq

BARRIER_POLL = 0.0002


def make_doc(seq: int, size: int) -> bytes:
    """The document with sequence number ``seq``: JSON, fully determined by seq and size.

    Built by concatenation rather than ``json.dumps`` so the child spends its time
    writing, not encoding.
    """
    return b'{"seq": %d, "pad": "%s"}' % (seq, str(seq % 10).encode() * size)


def _wait_for(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(BARRIER_POLL)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def race(directory: str, key: str) -> None:
    storage = trioq.FileStorage(directory)
    _say("ready")
    for line in sys.stdin:
        command, *args = line.split()
        if command == "exit":
            return
        _say("armed")
        _wait_for(args[0])
        t0 = time.monotonic()
        try:
            if command == "create":
                version = trio.run(storage.create, key, args[1].encode())
            else:
                write = partial(storage.write, key, args[2].encode(), if_match=args[1])
                version = trio.run(write)
        except trioq.CASConflict:
            _say(f"lost {t0} {time.monotonic()}")
        else:
            _say(f"won {version} {t0} {time.monotonic()}")


async def churn(directory: str, key: str, size: int) -> None:
    storage = trioq.FileStorage(directory)
    current = await storage.read(key)
    if current is None:
        seq = 0
        version = await storage.create(key, make_doc(seq, size))
    else:
        seq = json.loads(current.data)["seq"]
        version = current.version
    first = True
    while True:
        seq += 1
        version = await storage.write(key, make_doc(seq, size), if_match=version)
        if first:
            _say(f"started {seq}")
            first = False


def denied(directory: str, key: str) -> None:
    storage = trioq.FileStorage(directory)
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)
    try:
        trio.run(storage.create, key, b"{}")
    except trioq.TrioqError as exc:
        _say(f"{exc.tag} {exc.message}")
    else:
        _say("ok")


def main(argv: list[str]) -> int:
    mode, directory, key, *rest = argv
    if mode == "race":
        race(directory, key)
    elif mode == "churn":
        trio.run(churn, directory, key, int(rest[0]))
    elif mode == "denied":
        denied(directory, key)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
