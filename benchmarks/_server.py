"""Start the simulator as its own process for benchmarks, so it never shares a core with what
is being measured."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml


@contextmanager
def running_simulator(config: dict[str, Any] | None = None, *, cpu: int = 0) -> Iterator[str]:
    """Run `batchroute sim` in a subprocess pinned to `cpu`; yield its base URL (…/v1)."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "batchroute", "sim", "--port", "0"]
        if config is not None:
            path = Path(tmp) / "sim.yaml"
            path.write_text(yaml.safe_dump(config))
            command += ["--config", str(path)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:
                os.sched_setaffinity(proc.pid, {cpu})
            assert proc.stdout is not None
            line = proc.stdout.readline()
            url = next(word for word in line.split() if word.startswith("http"))
            yield url.rstrip("/")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
