"""The run manifest, `run.json`: what ran, from which job, how it ended, and its resume history.

The manifest is rewritten atomically at the start and the end of every session, so it is
always a complete JSON document: after a crash it still shows the crashed session, started but
not ended. `run_id` and `finished_at` describe the latest session; `started_at` is when the
run's first session began; `sessions` lists every session, oldest first.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from batchroute import __version__
from batchroute.errors import OutputError
from batchroute.exitcodes import ExitCode
from batchroute.store.rundir import MANIFEST_NAME, atomic_file

__all__ = [
    "MANIFEST_VERSION",
    "RunManifest",
    "SessionRecord",
    "new_run_id",
    "read_manifest",
    "write_manifest",
]

MANIFEST_VERSION = 1


class _Record(BaseModel):
    # Unknown keys are ignored, not refused: a manifest written by a newer batchroute must still
    # be readable by an older one resuming the same run directory.
    model_config = ConfigDict(extra="ignore", frozen=True)


class SessionRecord(_Record):
    """One process's turn at a run: a first run, or a resume."""

    run_id: str
    pid: int | None = None
    started_at: datetime
    ended_at: datetime | None = None
    """None while the session runs, and forever if it crashed."""
    exit_status: str | None = None
    exit_code: int | None = None
    sent_rows: int = 0
    """Rows this session dispatched."""
    reused_rows: int = 0
    """Rows settled by an earlier session and not sent again."""
    warnings: tuple[str, ...] = ()
    """What this session warned the operator about (also logged on stderr as it happened)."""
    cached_rows: int = 0
    """Rows this session settled from the response cache, without a request."""


class RunManifest(_Record):
    """The contents of `run.json`."""

    manifest_version: int = MANIFEST_VERSION
    run_id: str
    """The latest session's run id (logs carry the same id)."""
    job_path: str
    job_sha256: str
    batchroute_version: str = __version__
    started_at: datetime
    """When the run's first session started."""
    finished_at: datetime | None = None
    """When the latest session ended; None while it runs or if it crashed."""
    exit_status: str | None = None
    exit_code: int | None = None
    counts: dict[str, int] = {}
    """Result rows by status."""
    total_cost_usd: Decimal = Decimal(0)
    """Written as a decimal string, so no float ever rounds money."""
    spend: dict[str, Decimal] = {}
    """The parts of `total_cost_usd`: answers kept, answers superseded, failed attempts."""
    budget_hit: bool = False
    stop_reason: str | None = None
    """Why the latest session stopped early (budget cap, abort, signal); None if it did not."""
    rejected_rows: int = 0
    """Input lines set aside in rejects.parquet (`on_invalid_row: skip`)."""
    price_source: str | None = None
    price_sha256: str | None = None
    warnings: tuple[str, ...] = ()
    """Every session's warnings, oldest first, each once: a tier's model gone for the run,
    spend past the forecast by more than `run.warn_overrun_pct`."""
    sessions: tuple[SessionRecord, ...] = ()
    cache_hits: int = 0
    """Answers in the results served by the response cache (over every session)."""
    cache_saved_usd: Decimal = Decimal(0)
    """Their list cost: what they would have cost to send again."""
    """The resume history, oldest first."""
    engine: dict[str, Any] | None = None
    """The latest session's engine when not the local one: `{"kind": "ray", "workers": N,
    "nodes": [...]}`."""

    @classmethod
    def for_session(
        cls,
        previous: RunManifest | None,
        *,
        job_path: Path | str,
        job_sha256: str,
        run_id: str,
        started_at: datetime,
        finished_at: datetime | None = None,
        counts: Mapping[str, int] | None = None,
        total_cost_usd: Decimal = Decimal(0),
        spend: Mapping[str, Decimal] | None = None,
        exit_code: ExitCode | None = None,
        budget_hit: bool = False,
        stop_reason: str | None = None,
        rejected_rows: int = 0,
        price_source: str | None = None,
        price_sha256: str | None = None,
        sent_rows: int = 0,
        reused_rows: int = 0,
        pid: int | None = None,
        warnings: tuple[str, ...] = (),
        cached_rows: int = 0,
        cache_hits: int = 0,
        cache_saved_usd: Decimal = Decimal(0),
    ) -> RunManifest:
        """The manifest while (finished_at None) or after the session `run_id` runs.

        `previous` is the manifest as the session found it; its history is kept, and an entry
        for this same session (written when it started) is replaced rather than repeated.
        """
        status = exit_code.name.lower() if exit_code is not None else None
        code = int(exit_code) if exit_code is not None else None
        session = SessionRecord(
            run_id=run_id,
            pid=pid,
            started_at=started_at,
            ended_at=finished_at,
            exit_status=status,
            exit_code=code,
            sent_rows=sent_rows,
            reused_rows=reused_rows,
            warnings=warnings,
            cached_rows=cached_rows,
        )
        history = previous.sessions if previous is not None else ()
        sessions = (*(entry for entry in history if entry.run_id != run_id), session)
        return cls(
            run_id=run_id,
            job_path=str(job_path),
            job_sha256=job_sha256,
            batchroute_version=__version__,
            started_at=previous.started_at if previous is not None else started_at,
            finished_at=finished_at,
            exit_status=status,
            exit_code=code,
            counts=dict(counts or {}),
            total_cost_usd=total_cost_usd,
            spend=dict(spend or {}),
            budget_hit=budget_hit,
            stop_reason=stop_reason,
            rejected_rows=rejected_rows,
            price_source=price_source,
            price_sha256=price_sha256,
            warnings=tuple(dict.fromkeys(w for entry in sessions for w in entry.warnings)),
            sessions=sessions,
            cache_hits=cache_hits,
            cache_saved_usd=cache_saved_usd,
        )


def new_run_id(*, now: datetime | None = None) -> str:
    """A run id that sorts by time and is safe in a file name: `20261127T031500Z-a1b2c3`."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def write_manifest(run_dir: Path, manifest: RunManifest) -> Path:
    """Write `run.json` atomically; return its path."""
    path = Path(run_dir) / MANIFEST_NAME
    data = json.dumps(manifest.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"
    try:
        with atomic_file(path) as handle:
            handle.write(data.encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write the run manifest ({exc.strerror})", path=path) from None
    return path


def read_manifest(run_dir: Path) -> RunManifest | None:
    """Read `run.json`; None when there is none, `OutputError` when it is damaged."""
    path = Path(run_dir) / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(f"cannot read the run manifest ({exc.strerror})", path=path) from None
    try:
        return RunManifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        detail = f"{where}: {first['msg']}" if where else first["msg"]
        raise OutputError(
            f"the run manifest is damaged ({detail}); move the run directory aside, or start "
            "over with --fresh",
            path=path,
        ) from None
