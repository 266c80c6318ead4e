"""The run lock: one live batchroute process per run directory.

The lock is the file `<run_dir>/.lock`, holding `{pid, hostname, boot_id, started_at, run_id}`
as JSON, and an exclusive `flock` on it for as long as the run lives. The kernel drops a flock
when its process dies, even by `kill -9`, so liveness never hangs on guessing whether a pid was
reused. Where flock is not supported (some network filesystems), or a holder's flock is not
visible, the recorded pid is checked instead: a lock whose pid is alive on this host and boot
(with the same process start time, when recorded) is honoured.

A lock left behind by a dead process is taken over; `RunLock.stale` tells the runner whose it
was, so it can warn. Releasing deletes the file while the flock is still held; an acquirer that
opened the old file checks that it still is the file at the path, and retries if not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from batchroute.errors import OutputError, RunLockedError
from batchroute.store.rundir import LOCK_NAME

__all__ = ["LockInfo", "RunLock"]

_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class LockInfo:
    """Who holds (or held) a run lock."""

    pid: int
    hostname: str
    boot_id: str | None = None
    process_start: int | None = None
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    started_at: str | None = None
    run_id: str | None = None

    @classmethod
    def current(cls, *, run_id: str | None) -> LockInfo:
        """The lock record for this process."""
        pid = os.getpid()
        return cls(
            pid=pid,
            hostname=socket.gethostname(),
            boot_id=_boot_id(),
            process_start=_process_start(pid),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            run_id=run_id,
        )

    @classmethod
    def parse(cls, raw: bytes) -> LockInfo | None:
        """Read a lock file's text; None when it is empty or unreadable (a half-written lock)."""
        try:
            data = json.loads(raw)
            return cls(
                pid=int(data["pid"]),
                hostname=str(data.get("hostname", "")),
                boot_id=data.get("boot_id"),
                process_start=data.get("process_start"),
                started_at=data.get("started_at"),
                run_id=data.get("run_id"),
            )
        except (ValueError, TypeError, KeyError):
            return None

    def is_alive(self) -> bool:
        """Whether the recorded process is still running, as far as this host can tell."""
        if self.hostname != socket.gethostname():
            return False  # not checkable here; the flock (shared by the kernel or NFS) decides
        if self.boot_id is not None and self.boot_id != _boot_id():
            return False
        if not _pid_exists(self.pid):
            return False
        if self.process_start is not None:
            start = _process_start(self.pid)
            return start is None or start == self.process_start
        return True


class RunLock:
    """An exclusive lock on a run directory, taken on `__enter__` and released on `__exit__`."""

    def __init__(self, run_dir: Path, *, run_id: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.run_id = run_id
        self.stale: LockInfo | None = None
        """The record of a dead process whose lock was taken over, for the runner to warn."""
        self._fd: int | None = None

    @property
    def stale_pid(self) -> int | None:
        """The pid of the dead process whose lock was taken over, if any."""
        return self.stale.pid if self.stale is not None else None

    @property
    def is_held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise `RunLockedError` naming the live holder's pid."""
        if self._fd is not None:
            raise RuntimeError("this RunLock is already held")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"cannot create the run directory ({exc.strerror})", path=self.run_dir
            ) from None
        for _ in range(_ATTEMPTS):
            fd = self._open()
            try:
                taken = self._try_lock(fd)
                if taken is None:  # we locked a file that a releasing holder has just unlinked
                    os.close(fd)
                    continue
                if not taken:
                    raise RunLockedError(run_dir=self.run_dir, pid=_holder_pid(fd))
                previous = LockInfo.parse(_read_all(fd))
                if previous is not None and previous.pid != os.getpid() and previous.is_alive():
                    raise RunLockedError(run_dir=self.run_dir, pid=previous.pid)
                self.stale = previous
                _write_all(fd, json.dumps(asdict(LockInfo.current(run_id=self.run_id))).encode())
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return
        raise OutputError(
            "the lock file keeps changing under this process; is another batchroute starting "
            "in the same run directory? Try again",
            path=self.path,
        )

    def release(self) -> None:
        """Give the lock up: delete the file, then drop the flock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        finally:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self._fd is not None else "free"
        stale = f", took over from pid {self.stale_pid}" if self.stale is not None else ""
        return f"<RunLock {str(self.path)!r} [{state}{stale}]>"

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OutputError(
                f"cannot open the lock file ({exc.strerror})", path=self.path
            ) from None

    def _try_lock(self, fd: int) -> bool | None:
        """True if locked, False if another process holds it, None if the file was replaced."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise OutputError(f"cannot lock ({exc.strerror})", path=self.path) from None
            # No flock on this filesystem: the recorded pid alone decides (see acquire).
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        return True if same else None


def _holder_pid(fd: int) -> int:
    """The pid in a lock someone else holds, waiting briefly if they are still writing it."""
    for _ in range(20):
        holder = LockInfo.parse(_read_all(fd))
        if holder is not None:
            return holder.pid
        time.sleep(0.01)
    return 0


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _pid_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _process_start(pid: int) -> int | None:
    """The start time of a process in clock ticks after boot, from /proc (Linux only)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields: list[Any] = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of stat(5); the first two fields precede ')'
    except (IndexError, ValueError):
        return None
