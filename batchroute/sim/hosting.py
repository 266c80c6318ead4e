"""Where the simulator runs: in the current event loop, in a background thread, or in a process.

- `serve` runs it in the current loop until cancelled (or until an event is set): the CLI.
- `LocalSimulator` is an async context manager in the current loop: async tests.
- `EmbeddedSimulator` runs it in a daemon thread with its own loop: `base_url: simulator`.
- `SimulatorProcess` runs it in a child process, optionally pinned to CPUs: benchmarks, where
  the simulator must not share a core (or a GIL) with the client being measured.

Each binds a loopback port chosen by the OS unless told otherwise, returns only once the socket
is listening, and shuts down cleanly, hanging requests included.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import threading
import urllib.request
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from batchroute.sim.config import SimConfig
from batchroute.sim.server import SIM_STATE, create_app

__all__ = ["EmbeddedSimulator", "LocalSimulator", "SimulatorProcess", "serve"]

SHUTDOWN_TIMEOUT_S = 5.0
"""How long in-flight requests may finish at shutdown (hangs are woken at once)."""


def _base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


class LocalSimulator:
    """The simulator served from the running event loop: `async with LocalSimulator(cfg) as sim`."""

    def __init__(
        self, config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config or SimConfig()
        self.host = host
        self.port = port
        self._app: web.Application | None = None
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. "http://127.0.0.1:PORT/v1"."""
        return _base_url(self.host, self.port)

    async def __aenter__(self) -> Self:
        self._app = create_app(self.config)
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = site.port
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def stats(self) -> dict[str, Any]:
        """The server-side counts (see `SimStats.snapshot`)."""
        assert self._app is not None, "the simulator is not running"
        return self._app[SIM_STATE].stats.snapshot()

    def reset(self) -> None:
        """Zero the server-side counts and restart the fault schedules' clock."""
        assert self._app is not None, "the simulator is not running"
        self._app[SIM_STATE].reset()

    def __repr__(self) -> str:
        state = "running" if self._runner is not None else "stopped"
        return f"<LocalSimulator {self.base_url} [{state}]>"


async def serve(
    config: SimConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready: Callable[[str], object] | None = None,
    until: asyncio.Event | None = None,
) -> None:
    """Serve until cancelled, or until `until` is set; `on_ready` gets the base URL."""
    async with LocalSimulator(config, host=host, port=port) as sim:
        if on_ready is not None:
            on_ready(sim.base_url)
        await (until or asyncio.Event()).wait()


class EmbeddedSimulator:
    """The simulator in a background daemon thread with its own loop: `with ... as sim`."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.config = config or SimConfig()
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self._ready = threading.Event()
        self._error: Exception | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._sim: LocalSimulator | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. "http://127.0.0.1:PORT/v1"."""
        return _base_url(self.host, self.port)

    def __enter__(self) -> Self:
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="batchroute-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.startup_timeout_s):
            raise RuntimeError(
                f"the simulator did not start listening within {self.startup_timeout_s:g}s"
            )
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and thread is not None:
            loop.call_soon_threadsafe(stop.set)
            thread.join()
        self._loop = self._stop = self._thread = self._sim = None
        if self._error is not None and exc_type is None:
            raise self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # handed to the caller's thread, which re-raises it
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with LocalSimulator(self.config, host=self.host, port=self.port) as sim:
            self._sim = sim
            self.port = sim.port
            self._ready.set()
            await self._stop.wait()

    def _call(self, method: Callable[[], Any]) -> Any:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the simulator is not running; use it inside `with`")

        async def call() -> Any:
            return method()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=30)

    def stats(self) -> dict[str, Any]:
        """The server-side counts (see `SimStats.snapshot`), read safely from the server's loop."""
        sim = self._sim
        if sim is None:
            raise RuntimeError("the simulator is not running; use it inside `with`")
        result: dict[str, Any] = self._call(sim.stats)
        return result

    def reset(self) -> None:
        """Zero the server-side counts."""
        sim = self._sim
        if sim is None:
            raise RuntimeError("the simulator is not running; use it inside `with`")
        self._call(sim.reset)

    def __repr__(self) -> str:
        state = "running" if self._sim is not None else "stopped"
        return f"<EmbeddedSimulator {self.base_url} [{state}]>"


def _process_main(
    config_data: dict[str, Any], host: str, port: int, cpus: list[int] | None, conn: Connection
) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    config = SimConfig.model_validate(config_data)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, host=host, port=port, on_ready=conn.send, until=stop)

    try:
        asyncio.run(main())
    finally:
        conn.close()


class SimulatorProcess:
    """The simulator in a child process, optionally pinned to `cpus`: `with ... as sim`."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cpus: Iterable[int] | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.config = config or SimConfig()
        self.host = host
        self.port = port
        self.cpus = sorted(cpus) if cpus is not None else None
        self.startup_timeout_s = startup_timeout_s
        self.base_url = ""
        self._process: Any = None

    @property
    def pid(self) -> int:
        """The child's process id (for psutil's CPU times)."""
        if self._process is None or self._process.pid is None:
            raise RuntimeError("the simulator process is not running")
        pid: int = self._process.pid
        return pid

    def __enter__(self) -> Self:
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_process_main,
            args=(self.config.model_dump(mode="json"), self.host, self.port, self.cpus, sender),
            name="batchroute-sim",
            daemon=True,
        )
        self._process.start()
        sender.close()
        try:
            if not receiver.poll(self.startup_timeout_s):
                raise RuntimeError("the simulator process did not start listening in time")
            self.base_url = receiver.recv()
        except (EOFError, RuntimeError):
            self._stop()
            raise RuntimeError("the simulator process failed to start") from None
        finally:
            receiver.close()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        process.join(SHUTDOWN_TIMEOUT_S + 5)
        if process.is_alive():
            process.kill()
            process.join()
        process.close()

    def _fetch(self, path: str, *, method: str = "GET") -> dict[str, Any]:
        root = self.base_url.removesuffix("/v1")
        request = urllib.request.Request(
            root + path, method=method, data=b"" if method == "POST" else None
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            data: dict[str, Any] = json.loads(response.read())
        return data

    def stats(self) -> dict[str, Any]:
        """The server-side counts, over HTTP (`GET /sim/stats`)."""
        return self._fetch("/sim/stats")

    def reset(self) -> None:
        """Zero the server-side counts (`POST /sim/reset`)."""
        self._fetch("/sim/reset", method="POST")

    def requests(self) -> list[dict[str, str | None]]:
        """Every chat request's model and last user message, in order (`GET /sim/requests`;
        the config needs `log_requests: true`)."""
        log: list[dict[str, str | None]] = self._fetch("/sim/requests")["requests"]
        return log

    def __repr__(self) -> str:
        state = f"pid {self._process.pid}" if self._process is not None else "stopped"
        return f"<SimulatorProcess {self.base_url or '(not started)'} [{state}]>"
