"""The `batchroute` command line: a thin edge over the library.

Each command lives in its own module and is imported only when it runs, so `batchroute sim`
never pays for scikit-learn and `--help` stays fast. `BatchrouteError` is caught once, here, and
turned into one clear line on stderr and the error's documented exit code.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from batchroute import __version__
from batchroute.errors import BatchrouteError

__all__ = ["entry", "main"]

_freeze_imports = False
"""Set by `entry`: the process is the command's alone, so its imports may be frozen."""

_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""Set to 1 by `entry` unless the user set them: see `_one_blas_thread`."""

_COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("batchroute.cli.run", "run_command"),
    "validate": ("batchroute.cli.validate", "validate_command"),
    "plan": ("batchroute.cli.plan", "plan_command"),
    "prices": ("batchroute.cli.prices", "prices_command"),
    "report": ("batchroute.cli.report", "report_command"),
    "sim": ("batchroute.cli.sim", "sim_command"),
    "train": ("batchroute.cli.train", "train_command"),
    "eval-classifier": ("batchroute.cli.evaluate", "eval_classifier_command"),
    "calibrate": ("batchroute.cli.calibrate", "calibrate_command"),
    "init": ("batchroute.cli.init", "init_command"),
    "failures": ("batchroute.cli.failures", "failures_command"),
    "runs": ("batchroute.cli.runs", "runs_command"),
}


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause garbage collection while a command's modules import, then freeze what they built.

    Importing builds only long-lived objects (modules, classes, the SDK's models), so the
    collections the allocations trigger find nothing to free and only cost time: about a tenth
    of a `batchroute run`'s start-up. In the console script's own process (`entry`) they are
    then frozen, which matters as much as the pause: else the first collection after it walks
    every object the imports made, and later older-generation collections walk them again
    (about 0.1 s of CPU, issue 15). An in-process caller of `main` keeps its collector as is.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if _freeze_imports:
            gc.freeze()
        if was_enabled:
            gc.enable()


class _LazyGroup(click.Group):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target
        with _collector_paused():
            module = importlib.import_module(module_name)
        command: click.Command = getattr(module, attr)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatchrouteError as exc:
            from batchroute.logs import is_json_logging

            if is_json_logging():  # keep stderr one JSON object per line
                from batchroute.logs import log_event

                log_event(
                    logging.getLogger("batchroute"),
                    "error",
                    str(exc),
                    level=logging.ERROR,
                    error=type(exc).__name__,
                    exit_code=exc.exit_code,
                )
            else:
                click.echo(f"batchroute: error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchroute")
def main() -> None:
    """Run a dataset of prompts through the cheapest LLM that can handle each row."""


def entry() -> None:
    """The `batchroute` console script: `main` with numpy's BLAS on one thread
    (`_one_blas_thread`), then an exit without a final full collection.

    Everything still alive at exit is freed by the operating system. Freezing it first spares
    the interpreter the collection it otherwise runs at exit over the whole heap (the SDK's
    models, polars, the job), about 0.1 s of CPU for every command. Python does not promise
    to run `__del__` at exit, and batchroute closes its files and clients explicitly.
    """
    global _freeze_imports
    _freeze_imports = True
    _one_blas_thread()
    try:
        main()
    finally:
        gc.freeze()


def _one_blas_thread() -> None:
    """Keep numpy's BLAS to one thread in the command's process, unless the user chose otherwise.

    numpy's OpenBLAS starts a thread per core when it is imported, and they cost CPU before any
    work: 0.10 s of the 0.80 s a 10-row `batchroute run` used on a 2-core machine (issue 15).
    batchroute multiplies no large matrices (the router sums sparse features with `bincount`), so
    one thread loses nothing; polars keeps its own thread pool. Only the command line does this,
    before numpy is imported: a program that imports batchroute keeps its own settings.
    """
    if "numpy" in sys.modules:  # too late: the threads are up
        return
    for name in _BLAS_THREADS:
        os.environ.setdefault(name, "1")
