"""Local-directory storage: the embedded default backend.

:class:`FileStorage` keeps each object in one file of a directory. It is durable
(every write is fsynced and published with an atomic rename) and compare-and-set
correct when several *processes* on one machine share the directory (checks and
replacements happen under a POSIX advisory lock).

Layout
------

A key is mapped to one flat file name in the directory (keys may contain ``/``;
no sub-directories are created)::

    <name>          the document (what readers open)
    .<name>.lock    the per-key lock file, locked with flock(LOCK_EX)
    .<name>.tmp     the temp file a writer fills before the rename

``<name>`` is the key's UTF-8 bytes with every byte outside ``A-Z a-z 0-9 _ - .``
written as ``%XX`` (so ``/`` becomes ``%2F``), and a leading ``.`` as ``%2E``:
document names never start with a dot, so they cannot collide with the lock and
temp files. A name longer than 200 characters is cut to 150 and followed by
``~`` and the SHA-256 of the key. Keys that are empty, absolute (leading ``/``)
or contain a ``.`` or ``..`` segment are rejected with :class:`ValueError`.

Listing
-------

``list_keys`` reads the directory (one ``os.scandir`` per call), turns each file
name back into its key and sorts the keys. It skips every name that is not the
exact encoding of a valid key: the lock and temp files (they start with a dot),
files that trioq did not name (a ``%`` not followed by two upper-case hex
digits, a byte outside the safe set, bytes that are not UTF-8), sub-directories,
and the hashed names of keys longer than the limit above, which cannot be turned
back into their key (a hashed name is the only kind that holds a literal ``~``).
So a key whose name is hashed is stored, read and deleted like any other but
never listed: keep listed keys below 200 encoded characters (the log layout's
keys are a few dozen).

Stored format
-------------

A document file is a fixed-size ASCII header line of 72 bytes followed by the
object's bytes, unchanged::

    TRIOQ-FILE/1 <version> <size> <crc32>\\n<data>

- ``TRIOQ-FILE/1 `` is the format marker (``1`` is the format version);
- ``<version>`` is 32 lowercase hex digits: a fresh random token (uuid4) drawn by
  every write, so versions never repeat, whatever the data, the inode or the
  mtime; this is the version :meth:`FileStorage.version` reports;
- ``<size>`` is the length of ``<data>`` as 16 lowercase hex digits;
- ``<crc32>`` is the CRC-32 of ``<data>`` as 8 lowercase hex digits.

:meth:`FileStorage.version` reads only the header (and the file size from
``fstat``); it never reads the body. :meth:`FileStorage.read` checks the size and
the CRC, so a damaged file is reported instead of being returned.

Writes
------

``write`` and ``create`` take the key's lock, check the precondition against the
current header, write the new document to ``.<name>.tmp`` (created fresh, after
removing any leftover of a killed writer), ``fsync`` it, ``os.replace`` it over
``<name>`` and ``fsync`` the directory, then release the lock. A process killed
at any point leaves either the old or the new complete document under
``<name>``; readers never look at temp files, and the next writer of the key
removes a leftover one. Locks die with their process, so a killed writer never
blocks the others.

``delete_key`` takes the same lock, removes ``<name>``, a leftover temp file and
then the lock file itself (while it still holds the lock), and ``fsync``s the
directory. Removing a lock file that others may hold open is safe because every
locker checks, once it holds the lock, that its file is still the one at
``.<name>.lock`` (same device and inode): a process that opened the file before
the delete removed it and locked it afterwards holds a lock nobody else will
ever take, so it lets go and retries on a fresh file, as if the lock were busy.
Without that check, it and a process that created the new lock file would both
believe they hold the key's lock. (A trioq without the check, sharing the
directory, could be fooled that way; deletes exist for the log layout, which
older versions do not read.)

The lock is taken without blocking (``LOCK_NB``) in a worker thread and retried
with a short backoff on the event loop, for at most ``lock_timeout`` seconds of
real time (a lock is an operating-system resource, so this bound does not follow
a mocked trio clock); a holder that keeps it longer (a stopped process) turns
into :class:`~trioq.StorageUnavailable`.

All file I/O and locking runs in ``trio.to_thread.run_sync`` under the storage's
own :class:`trio.CapacityLimiter`. A write in progress is never abandoned on
cancellation: once its thread has started it runs to completion.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import sys
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Final, NamedTuple, NoReturn, TypeVar

import trio

from .._backoff import backoff_delay
from .._errors import (
    BucketNotFound,
    CASConflict,
    DocumentInvalid,
    StorageUnavailable,
    WriteOutcomeUnknown,
)
from ._outage import WriteOutage
from ._protocol import Versioned, check_limit

if sys.platform != "win32":
    import fcntl

__all__ = ["FileStorage"]

_T = TypeVar("_T")

_MAGIC: Final = b"TRIOQ-FILE/1 "
_HEADER_SIZE: Final = len(_MAGIC) + 32 + 1 + 16 + 1 + 8 + 1  # 72 bytes
_HEADER_RE: Final = re.compile(rb"TRIOQ-FILE/1 ([0-9a-f]{32}) ([0-9a-f]{16}) ([0-9a-f]{8})\n")

_SAFE_BYTES: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")
_MAX_NAME: Final = 200
_CUT_NAME: Final = 150

_DEFAULT_THREADS: Final = 4

log = logging.getLogger("trioq.storage")

_CANNOT_WRITE: Final = {
    errno.ENOSPC: "no space left on device (ENOSPC)",
    errno.EDQUOT: "disk quota exceeded (EDQUOT)",
    errno.EFBIG: "file too large (EFBIG: a file size limit)",
    errno.EROFS: "read-only file system (EROFS)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted (EPERM)",
}
"""The errors that say the store cannot take a write until someone frees space or
grants permission: each is a :class:`~trioq.StorageUnavailable` (nothing changed;
retry later), logged once per outage by :class:`WriteOutage`."""
_LOCK_POLL_FIRST: Final = 0.001
_LOCK_POLL_MAX: Final = 0.05


def _key_to_name(key: str) -> str:
    """The flat file name that stores ``key`` (see the module docstring)."""
    if not key:
        raise ValueError("storage key must not be empty")
    if key.startswith("/"):
        raise ValueError(f"storage key must be relative, not {key!r}")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise ValueError(f"storage key must not contain '.' or '..' segments: {key!r}")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"storage key is not encodable as UTF-8: {key!r}") from exc
    name = "".join(chr(byte) if byte in _SAFE_BYTES else f"%{byte:02X}" for byte in raw)
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > _MAX_NAME:
        name = name[:_CUT_NAME] + "~" + hashlib.sha256(raw).hexdigest()
    return name


def _name_to_key(name: str) -> str | None:
    """The key stored in the file ``name``, or ``None`` if ``name`` is not the
    exact encoding of a key (lock and temp files, foreign files, hashed names)."""
    if name.startswith(".") or "~" in name:
        return None
    raw = bytearray()
    index = 0
    try:
        while index < len(name):
            char = name[index]
            if char == "%":
                raw.append(int(name[index + 1 : index + 3], 16))
                index += 3
            else:
                raw += char.encode("ascii")
                index += 1
        key = raw.decode("utf-8")
        # The round trip rejects what decodes but is not our encoding: lower-case or
        # short escapes, escaped safe bytes, characters outside the safe set, keys
        # that _key_to_name refuses.
        return key if _key_to_name(key) == name else None
    except (ValueError, UnicodeError):  # bad escape, not ASCII, not UTF-8, bad key
        return None


def _cannot_write(exc: StorageUnavailable) -> bool:
    """Whether ``exc`` comes from a store that refuses writes (full, read-only)."""
    cause = exc.__cause__
    return isinstance(cause, OSError) and cause.errno in _CANNOT_WRITE


def _encode_header(version: str, data: bytes) -> bytes:
    header = b"%s%s %016x %08x\n" % (
        _MAGIC,
        version.encode("ascii"),
        len(data),
        zlib.crc32(data),
    )
    assert len(header) == _HEADER_SIZE
    return header


class _Header(NamedTuple):
    version: str
    size: int
    crc: int


class _LockBusy:
    """Returned by a locked attempt when another holder has the lock."""


_BUSY: Final = _LockBusy()


class FileStorage:
    """A :class:`~trioq.Storage` kept in a local directory.

    Durable (fsync + atomic rename) and compare-and-set correct across processes
    of one machine (flock on a per-key lock file). The file layout and format
    are described in the :mod:`trioq.storage._file` module docstring.

    Args:
        directory: The data directory. Every key is one file in it.
        create_directory: Create ``directory`` (and its parents) on first use if
            missing. If false, a missing directory raises
            :class:`~trioq.BucketNotFound`.
        lock_timeout: Seconds (real time) a ``write``, ``create`` or ``delete_key``
            waits for the key's lock before giving up with :class:`~trioq.StorageUnavailable`.
        max_threads: How many worker threads this storage uses at once.

    Errors: a failed precondition raises :class:`~trioq.CASConflict` (a ``write``
    over a damaged or foreign file too: it is not at ``if_match``); a missing
    directory :class:`~trioq.BucketNotFound`; a full disk, a quota, a read-only
    file system, permission and other I/O problems, or a lock held too long
    :class:`~trioq.StorageUnavailable` (write failures of the first kinds are
    logged once per outage: :class:`WriteOutage`); a failure after the new
    document was published (the directory ``fsync``)
    :class:`~trioq.WriteOutcomeUnknown`. A ``read`` or ``version`` of a file that
    is damaged (size or CRC-32 wrong) or that trioq did not write (no header)
    raises :class:`~trioq.DocumentInvalid`: that does not pass by retrying, and
    nothing overwrites it. Each message names the path and cause.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        create_directory: bool = True,
        lock_timeout: float = 10.0,
        max_threads: int = _DEFAULT_THREADS,
    ) -> None:
        if sys.platform == "win32":  # pragma: no cover
            raise NotImplementedError("FileStorage needs POSIX advisory locks (fcntl.flock)")
        if lock_timeout < 0:
            raise ValueError(f"lock_timeout must be >= 0, not {lock_timeout!r}")
        self._directory = Path(os.fspath(directory))
        self._create_directory = create_directory
        self._directory_ready = False
        self._lock_timeout = lock_timeout
        self._limiter = trio.CapacityLimiter(max_threads)
        self._outage = WriteOutage(self.describe())

    @property
    def directory(self) -> Path:
        """The data directory."""
        return self._directory

    def describe(self) -> str:
        """A short human description, used in error messages and logs."""
        return f"file storage {self._directory}"

    def path(self, key: str) -> Path:
        """The file that stores ``key`` (no I/O). Raises :class:`ValueError` on a bad key."""
        return self._directory / _key_to_name(key)

    def locate(self, key: str) -> str:
        """``key`` and its file, for messages: ``queue.json at /data/queue.json (file
        storage)``."""
        return f"{key} at {self.path(key)} (file storage)"

    # -- public async API -----------------------------------------------------------------

    async def read(self, key: str) -> Versioned | None:
        """The object's bytes and version, or ``None`` if it does not exist."""
        name = _key_to_name(key)
        return await self._run(self._read_sync, name)

    async def version(self, key: str) -> str | None:
        """The object's current version, or ``None`` if it does not exist.

        Reads only the fixed-size header, never the body.
        """
        name = _key_to_name(key)
        return await self._run(self._version_sync, name)

    async def write(self, key: str, data: bytes, *, if_match: str) -> str:
        """Replace the object if its version is ``if_match``; return the new version.

        Raises :class:`~trioq.CASConflict` if the object is missing or at another
        version. Once started, the write is not abandoned on cancellation.
        """
        name = _key_to_name(key)
        return await self._locked(name, lambda: self._commit_sync(name, data, if_match))

    async def create(self, key: str, data: bytes) -> str:
        """Create the object only if it is absent; return its version.

        Raises :class:`~trioq.CASConflict` if it already exists.
        """
        name = _key_to_name(key)
        return await self._locked(name, lambda: self._commit_sync(name, data, None))

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """The keys starting with ``prefix``, in ascending (UTF-8 byte) order.

        Reads the whole directory on every call and never returns lock or temp
        files, foreign files, or keys stored under a hashed name (see the module
        docstring, "Listing"). A missing directory is created (``create_directory``)
        and lists as empty, or raises :class:`~trioq.BucketNotFound`; other I/O
        errors raise :class:`~trioq.StorageUnavailable`.
        """
        check_limit(limit)
        keys = await trio.to_thread.run_sync(self._list_sync, limiter=self._limiter)
        # Python orders str by code point, which is the byte order of UTF-8.
        selected = sorted(
            key
            for key in keys
            if key.startswith(prefix) and (start_after is None or key > start_after)
        )
        return selected if limit is None else selected[:limit]

    async def delete_key(self, key: str) -> None:
        """Remove the object (and its lock and temp files); a missing one is fine.

        Takes the key's lock, so it never interleaves with a ``write`` or
        ``create`` of the same key. Raises :class:`~trioq.StorageUnavailable` as
        ``write`` does (a lock held too long, I/O errors), and
        :class:`~trioq.WriteOutcomeUnknown` if the file was removed but the
        directory ``fsync`` failed (the removal may not survive a crash). Once
        started, it is not abandoned on cancellation.
        """
        name = _key_to_name(key)
        await self._locked(name, lambda: self._delete_sync(name))

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[[str], _T], name: str) -> _T:
        return await trio.to_thread.run_sync(fn, name, limiter=self._limiter)

    async def _locked(self, name: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` in a thread while holding the key's lock, bounded by ``lock_timeout``."""
        deadline = time.monotonic() + self._lock_timeout
        retries = 0
        while True:
            try:
                outcome = await trio.to_thread.run_sync(
                    self._try_locked_sync, name, fn, limiter=self._limiter
                )
            except StorageUnavailable as exc:
                if _cannot_write(exc):
                    self._outage.failed(exc)
                raise
            if not isinstance(outcome, _LockBusy):
                self._outage.succeeded()
                return outcome
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StorageUnavailable(
                    f"{self.describe()}: lock {self._lock_path(name)} is still held by "
                    f"another writer after {self._lock_timeout:g} s"
                )
            retries += 1
            delay = backoff_delay(retries, base=_LOCK_POLL_FIRST, cap=_LOCK_POLL_MAX)
            await trio.sleep(min(remaining, delay))

    def _lock_path(self, name: str) -> Path:
        return self._directory / f".{name}.lock"

    def _temp_path(self, name: str) -> Path:
        return self._directory / f".{name}.tmp"

    def _fail(self, action: str, path: Path, exc: OSError) -> StorageUnavailable:
        """Translate an ``OSError`` met while doing ``action`` on ``path``."""
        if isinstance(exc, FileNotFoundError | NotADirectoryError) and not (
            self._directory.is_dir()
        ):
            return self._missing_directory()
        reason = _CANNOT_WRITE.get(exc.errno or 0, "I/O error")
        return StorageUnavailable(f"{self.describe()}: {reason} while {action} {path}: {exc}")

    def _missing_directory(self) -> BucketNotFound:
        if self._directory.exists():
            return BucketNotFound(f"{self.describe()}: {self._directory} is not a directory")
        return BucketNotFound(f"{self.describe()}: directory {self._directory} does not exist")

    def _prepare_directory(self) -> None:
        if self._directory_ready or not self._create_directory:
            return
        try:
            os.makedirs(self._directory, exist_ok=True)
        except FileExistsError:
            raise self._missing_directory() from None
        except OSError as exc:
            raise self._fail("creating directory", self._directory, exc) from exc
        self._directory_ready = True

    def _corrupt(self, path: Path, problem: str) -> DocumentInvalid:
        return DocumentInvalid(f"{path} (file storage) is damaged: {problem}")

    def _parse_header(self, path: Path, raw: bytes, file_size: int) -> _Header:
        match = _HEADER_RE.fullmatch(raw)
        if match is None:
            return self._foreign(path, raw, file_size)
        header = _Header(match[1].decode("ascii"), int(match[2], 16), int(match[3], 16))
        if file_size != _HEADER_SIZE + header.size:
            cut = " (truncated)" if file_size < _HEADER_SIZE + header.size else ""
            raise self._corrupt(
                path,
                f"the file is {file_size} bytes, its header says {_HEADER_SIZE + header.size}{cut}",
            )
        return header

    def _foreign(self, path: Path, raw: bytes, file_size: int) -> NoReturn:
        """A file without our header: cut short inside it, or not written by trioq."""
        if file_size == 0:
            raise DocumentInvalid(
                f"{path} (file storage) is empty (0 bytes): a file trioq "
                "never writes (its files start with a TRIOQ-FILE/1 header)"
            )
        if raw.startswith(_MAGIC[: len(raw)]) and file_size < _HEADER_SIZE:
            raise self._corrupt(
                path, f"bad header: the file is {file_size} bytes, cut inside its header"
            )
        start = raw[:24]
        raise DocumentInvalid(
            f"{path} (file storage) has a bad header: not a TRIOQ-FILE/1 "
            f"file, so not written by trioq's file backend ({file_size} bytes starting "
            f"{start!r}{'...' if file_size > len(start) else ''})"
        )

    def _open_header(self, path: Path) -> tuple[int, _Header] | None:
        """Open ``path`` and parse its header; ``None`` if absent. Returns (fd, header)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not self._directory.is_dir():
                raise self._missing_directory() from None
            return None
        except OSError as exc:
            raise self._fail("opening", path, exc) from exc
        try:
            raw = os.read(fd, _HEADER_SIZE)
            size = os.fstat(fd).st_size
        except OSError as exc:
            os.close(fd)
            raise self._fail("reading", path, exc) from exc
        try:
            return fd, self._parse_header(path, raw, size)
        except BaseException:
            os.close(fd)
            raise

    # -- thread bodies ----------------------------------------------------------------------

    def _version_sync(self, name: str) -> str | None:
        self._prepare_directory()
        opened = self._open_header(self._directory / name)
        if opened is None:
            return None
        fd, header = opened
        os.close(fd)
        return header.version

    def _read_sync(self, name: str) -> Versioned | None:
        self._prepare_directory()
        path = self._directory / name
        opened = self._open_header(path)
        if opened is None:
            return None
        fd, header = opened
        try:
            with open(fd, "rb", closefd=False) as body:
                data = body.read(header.size + 1)
        except OSError as exc:
            raise self._fail("reading", path, exc) from exc
        finally:
            os.close(fd)
        if len(data) != header.size:
            raise self._corrupt(path, f"body is {len(data)} bytes, header says {header.size}")
        if zlib.crc32(data) != header.crc:
            raise self._corrupt(path, "the CRC-32 of the body does not match the header")
        return Versioned(data, header.version)

    def _try_locked_sync(self, name: str, fn: Callable[[], _T]) -> _T | _LockBusy:
        self._prepare_directory()
        lock_path = self._lock_path(name)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            raise self._fail("opening lock file", lock_path, exc) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return _BUSY
            except OSError as exc:
                raise self._fail("locking", lock_path, exc) from exc
            try:
                if not self._lock_is_current(lock_path, fd):
                    return _BUSY
                return fn()
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _lock_is_current(self, lock_path: Path, fd: int) -> bool:
        """Whether the locked ``fd`` is still the file at ``lock_path``: a
        ``delete_key`` may have removed it after we opened it (module docstring,
        "Writes"), and then our lock excludes nobody."""
        try:
            at_path = os.lstat(lock_path)
            held = os.fstat(fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._fail("checking lock file", lock_path, exc) from exc
        return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)

    def _list_sync(self) -> list[str]:
        self._prepare_directory()
        keys: list[str] = []
        try:
            with os.scandir(self._directory) as entries:
                for entry in entries:
                    key = _name_to_key(entry.name)
                    if key is not None and not entry.is_dir(follow_symlinks=False):
                        keys.append(key)
        except FileNotFoundError:
            raise self._missing_directory() from None
        except NotADirectoryError:
            raise self._missing_directory() from None
        except OSError as exc:
            raise self._fail("listing", self._directory, exc) from exc
        return keys

    def _delete_sync(self, name: str) -> None:
        """Remove the document, a leftover temp file and the lock file; the caller
        holds the key's lock (whose file this removes: see ``_lock_is_current``)."""
        target = self._directory / name
        for path in (target, self._temp_path(name), self._lock_path(name)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise self._fail("deleting", path, exc) from exc
        try:
            self._fsync_directory()
        except OSError as exc:
            raise WriteOutcomeUnknown(
                f"{self.describe()}: {target} was removed but fsync of the directory "
                f"failed, so the removal may not survive a crash: {exc}"
            ) from exc

    def _commit_sync(self, name: str, data: bytes, if_match: str | None) -> str:
        """Check the precondition and publish ``data``; the caller holds the key's lock.

        ``if_match`` is the expected version, or ``None`` for "must be absent".
        """
        target = self._directory / name
        if if_match is None:
            try:
                os.lstat(target)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise self._fail("checking", target, exc) from exc
            else:
                raise CASConflict(f"{self.describe()}: {target} already exists")
        else:
            try:
                opened = self._open_header(target)
            except DocumentInvalid as exc:
                # never replace what cannot be read: it is not at if_match either
                raise CASConflict(f"{self.describe()}: {exc.message}") from exc
            if opened is None:
                raise CASConflict(
                    f"{self.describe()}: {target} does not exist (if_match={if_match!r})"
                )
            fd, current = opened
            os.close(fd)
            if current.version != if_match:
                raise CASConflict(
                    f"{self.describe()}: {target} is at version {current.version!r}, "
                    f"not {if_match!r}"
                )

        version = uuid.uuid4().hex
        header = _encode_header(version, data)
        temp = self._temp_path(name)
        try:
            # A leftover temp file can only come from a killed writer: writers hold the lock.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                with open(fd, "wb", closefd=False) as out:
                    out.write(header)
                    out.write(data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise self._fail("writing", temp, exc) from exc

        # The new document is visible; only its durability is left to establish.
        try:
            self._fsync_directory()
        except OSError as exc:
            raise WriteOutcomeUnknown(
                f"{self.describe()}: {target} was replaced but fsync of the directory "
                f"failed, so the write may not survive a crash: {exc}"
            ) from exc
        return version

    def _fsync_directory(self) -> None:
        fd = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        except OSError as exc:
            # Some file systems cannot fsync a directory; the rename is all they offer.
            if exc.errno != errno.EINVAL:
                raise
        finally:
            os.close(fd)
