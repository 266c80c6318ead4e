"""The run lock: a live holder is refused by pid; a dead one's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchroute.errors import RunLockedError
from batchroute.store.lock import LockInfo, RunLock

_HOLDER = """
import sys, time
from pathlib import Path
from batchroute.store.lock import RunLock
lock = RunLock(Path(sys.argv[1]), run_id="holder")
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock on tmp_path/run."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait()
    proc.stdout.close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_live_holder_is_refused_with_its_pid_named(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(RunLockedError) as caught, RunLock(tmp_path / "run"):
        pass
    assert caught.value.pid == holder.pid
    assert f"pid {holder.pid}" in str(caught.value)
    assert caught.value.exit_code == 6


def test_lock_of_a_killed_process_is_taken_over(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with RunLock(tmp_path / "run", run_id="mine") as lock:
        assert lock.stale_pid == holder.pid
        assert lock.stale is not None and lock.stale.run_id == "holder"
        recorded = json.loads((tmp_path / "run" / ".lock").read_text())
        assert recorded["pid"] == os.getpid()
        assert recorded["run_id"] == "mine"


def test_second_lock_in_the_same_process_is_refused(tmp_path: Path) -> None:
    with RunLock(tmp_path) as first:
        assert first.is_held and first.stale_pid is None
        with pytest.raises(RunLockedError) as caught:
            RunLock(tmp_path).acquire()
        assert caught.value.pid == os.getpid()


def test_release_removes_the_lock_and_frees_the_directory(tmp_path: Path) -> None:
    with RunLock(tmp_path) as lock:
        assert "held" in repr(lock)
    assert not (tmp_path / ".lock").exists()
    assert "free" in repr(lock)
    with RunLock(tmp_path) as again:
        assert again.stale_pid is None  # a clean release leaves nothing stale


def test_lock_file_naming_a_dead_pid_is_taken_over(tmp_path: Path) -> None:
    pid = _dead_pid()
    record = {"pid": pid, "hostname": socket.gethostname(), "run_id": "old"}
    (tmp_path / ".lock").write_text(json.dumps(record))
    with RunLock(tmp_path) as lock:
        assert lock.stale_pid == pid
        assert f"took over from pid {pid}" in repr(lock)


def test_lock_file_naming_a_live_pid_is_refused_even_without_its_flock(tmp_path: Path) -> None:
    """On filesystems where flock is not shared, the recorded live pid still protects the run."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"pid": sleeper.pid, "hostname": socket.gethostname()}
        (tmp_path / ".lock").write_text(json.dumps(record))
        with pytest.raises(RunLockedError) as caught:
            RunLock(tmp_path).acquire()
        assert caught.value.pid == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()


def test_reused_pid_with_another_start_time_is_not_alive() -> None:
    me = LockInfo.current(run_id=None)
    assert me.is_alive()
    if me.process_start is not None:  # Linux records the start time
        reused = LockInfo(pid=me.pid, hostname=me.hostname, process_start=me.process_start + 1)
        assert not reused.is_alive()
    assert not LockInfo(pid=os.getpid(), hostname="another-host").is_alive()


def test_garbage_lock_file_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / ".lock").write_bytes(b"\x00half-written")
    with RunLock(tmp_path) as lock:
        assert lock.stale is None
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
