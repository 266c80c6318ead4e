"""`batchroute sim`: serve the OpenAI-compatible simulator until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click

from batchroute.sim.config import SimConfig

__all__ = ["sim_command"]


async def _serve_until_signalled(config: SimConfig, *, host: str, port: int) -> None:
    from batchroute.sim.hosting import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve(config, host=host, port=port, on_ready=lambda url: click.echo(url), until=stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@click.command("sim")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to bind.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="The port to bind; 0 picks a free one.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A simulator config YAML, or a job file whose `simulator:` section to use.",
)
def sim_command(host: str, port: int, config_path: Path | None) -> None:
    """Serve the OpenAI-compatible simulator; print its base URL; stop on Ctrl-C or SIGTERM."""
    from batchroute.sim.loader import load_sim_config

    config = load_sim_config(config_path) if config_path is not None else SimConfig()
    try:
        asyncio.run(_serve_until_signalled(config, host=host, port=port))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port} ({exc.strerror})") from None
