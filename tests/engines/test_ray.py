"""The Ray engine on a local multi-node cluster, against the simulator over loopback.

One cluster for the whole session (`ray.cluster_utils.Cluster`: a head and two worker nodes,
one CPU each); each test runs a job with the test process as the driver.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchroute.config import load_job
from batchroute.engines.ending import RunSummary
from batchroute.engines.local import RunOptions, run_job
from batchroute.exitcodes import ExitCode
from batchroute.progress import Progress
from batchroute.sim import EmbeddedSimulator
from batchroute.sim.config import SimConfig
from tests.conftest import sample_rows

ray = pytest.importorskip("ray", reason="the Ray engine's tests need ray: pip install -e '.[ray]'")
cluster_utils = pytest.importorskip("ray.cluster_utils")

JobFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    cluster = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def _run(job_path: Path, **options: Any) -> RunSummary:
    job = load_job(job_path)
    return run_job(job, RunOptions(**options), progress=Progress(live=False, enabled=False))


def _endpoint(sim: EmbeddedSimulator) -> dict[str, Any]:
    return {"base_url": sim.base_url, "api_key_env": None, "timeout_s": 10}


def _one_model(**model: Any) -> dict[str, Any]:
    """Every tier on one model, so one limit governs every row."""
    return {
        "tiers": {"complex": "m", "standard": "m", "structured": "m", "bulk": "m"},
        "models": {"m": {"input_per_mtok": 3, "output_per_mtok": 15, **model}},
        "baseline_model": "m",
    }


def test_same_results_as_the_local_engine(ray_cluster: Any, make_job: JobFactory) -> None:
    with EmbeddedSimulator(SimConfig()) as sim:
        job = make_job(sample_rows(60), endpoint=_endpoint(sim))
        local = _run(job, run_dir=Path("runs/local"), no_cache=True)  # Ray pays for every row
        on_ray = _run(job, run_dir=Path("runs/ray"), engine="ray")
    assert local.exit_code == on_ray.exit_code == ExitCode.OK
    columns = ["id", "row_index", "row_key", "tier", "model_used", "status", "content"]
    columns += ["input_tokens", "output_tokens", "cost_usd"]
    a = pl.read_parquet("runs/local/results.parquet")
    b = pl.read_parquet("runs/ray/results.parquet")
    assert a.schema == b.schema
    assert a.height == b.height == 60
    assert a.select(columns).equals(b.select(columns))
    assert a["cost_usd"].sum() == b["cost_usd"].sum() == local.cost_usd == on_ray.cost_usd
    attempts_a = pl.read_parquet("runs/local/attempts.parquet")
    attempts_b = pl.read_parquet("runs/ray/attempts.parquet")
    assert attempts_a.schema == attempts_b.schema and attempts_a.height == attempts_b.height
    manifest = json.loads(Path("runs/ray/run.json").read_text())
    assert manifest["engine"]["kind"] == "ray"
    assert manifest["engine"]["workers"] == 3
    assert len(manifest["engine"]["nodes"]) >= 2, "SPREAD puts the shards on several nodes"


def test_resume_across_engines(ray_cluster: Any, make_job: JobFactory) -> None:
    """A run started on the local engine goes on on Ray, and finishes on the local engine."""
    with EmbeddedSimulator(SimConfig()) as sim:
        job = make_job(sample_rows(30), endpoint=_endpoint(sim))
        first = _run(job, run_dir=Path("runs/x"), limit=10)
        assert first.sent_rows == 10
        second = _run(job, run_dir=Path("runs/x"), engine="ray", limit=20)
        assert (second.reused_rows, second.sent_rows) == (10, 10)
        third = _run(job, run_dir=Path("runs/x"))
        sent = int(sim.stats()["total"])
    assert third.exit_code == ExitCode.OK
    assert (third.reused_rows, third.sent_rows) == (20, 10)
    assert sent == 30, "no row is paid twice"
    results = pl.read_parquet("runs/x/results.parquet")
    assert results["row_index"].to_list() == list(range(30))
    assert results["status"].unique().to_list() == ["ok"]


def test_the_limit_is_cluster_wide(ray_cluster: Any, make_job: JobFactory) -> None:
    """The server admits 600 rpm and at most 10 in any one second; three workers together
    stay inside both: the simulator, which counts every sliding second and minute on arrival as
    a provider does, refused none of their requests.

    The client's own send stamps are not checked against the windows: on a loaded machine a
    task that resumes late stamps late, so two sends that reached the server a second apart can
    look bunched (this check flaked). The server's count is the one a provider would make."""
    rpm = 600
    sim_config = SimConfig(default={"rpm": rpm, "per_second": True})  # type: ignore[arg-type]
    with EmbeddedSimulator(sim_config) as sim:
        job = make_job(sample_rows(90), endpoint=_endpoint(sim), **_one_model(rpm=rpm))
        summary = _run(job, engine="ray")
        stats = sim.stats()
    assert summary.exit_code == ExitCode.OK, summary.message
    assert stats["limited"] == {}, f"self-caused 429s: {stats}"
    assert stats["total"] == 90, f"every row sent once, none retried: {stats}"


def test_budget_cap_holds_across_workers(ray_cluster: Any, make_job: JobFactory) -> None:
    cap = Decimal("0.01")
    with EmbeddedSimulator(SimConfig()) as sim:
        job = make_job(
            sample_rows(120),
            endpoint=_endpoint(sim),
            budget={"max_cost_usd": 0.01},
            **_one_model(rpm=600, max_concurrency=4),  # paced: every worker sends when the cap hits
        )
        summary = _run(job, engine="ray")
    attempts = pl.read_parquet("runs/t/attempts.parquet")
    assert Decimal(str(attempts["cost_usd"].sum())) <= cap
    assert summary.cost_usd <= cap
    assert summary.exit_code == ExitCode.BUDGET
    results = pl.read_parquet("runs/t/results.parquet")
    assert results.height == 120
    counts = dict(results["status"].value_counts().iter_rows())
    assert counts.get("skipped_budget", 0) > 0 and counts.get("ok", 0) > 0
    workers_that_sent = len(set(attempts["row_index"] * 3 // 120))
    assert workers_that_sent >= 2, "the cap was shared, not spent by one worker"


def test_worker_death_loses_and_repeats_no_row(ray_cluster: Any, make_job: JobFactory) -> None:
    """Kill a worker process mid-run: Ray retries its shard, which resumes from its journal."""
    rows = 60
    sim_config = SimConfig(default={"latency_ms": 30})  # type: ignore[arg-type]
    with EmbeddedSimulator(sim_config) as sim:
        job = make_job(
            sample_rows(rows),
            endpoint=_endpoint(sim),
            run={"max_in_flight": 4},
            **_one_model(rpm=1200, max_concurrency=2),
        )
        with killing_a_worker(when=lambda: int(sim.stats()["total"]) >= 30) as killed:
            summary = _run(job, engine="ray")
        good = int(sim.stats()["requests"]["m"].get("200", 0))
    assert killed, "a worker was killed mid-run"
    assert summary.exit_code == ExitCode.OK, summary.message
    results = pl.read_parquet("runs/t/results.parquet")
    assert results["row_index"].to_list() == list(range(rows)), "every row exactly once"
    assert results["status"].unique().to_list() == ["ok"]
    # A row holds its slot until its answer is durable: the dead worker re-buys at most its
    # run.max_in_flight rows (requests in flight and answers not yet committed).
    assert rows <= good <= rows + 4


@contextmanager
def killing_a_worker(*, when: Callable[[], bool]) -> Iterator[list[int]]:
    """SIGKILL a shard's worker process once `when()` holds, from a thread, while the body runs.

    Yields the killed pids (empty if the body ended first), so the test can check the kill came.
    """
    killed: list[int] = []
    done = threading.Event()

    def kill() -> None:
        while not done.is_set():
            if when():
                pid = _a_shard_worker_pid()
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                return
            done.wait(0.01)

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        yield killed
    finally:
        done.set()
        killer.join()


def _a_shard_worker_pid() -> int | None:
    """The pid of a Ray worker process running a shard task now (Ray titles it so)."""
    import psutil

    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or ())
        if cmdline.startswith("ray::run_shard"):
            return int(process.info["pid"])
    return None


def test_sigterm_at_the_driver_stops_every_worker(ray_cluster: Any, make_job: JobFactory) -> None:
    sim_config = SimConfig(default={"latency_ms": 20})  # type: ignore[arg-type]
    with EmbeddedSimulator(sim_config) as sim:
        job = make_job(
            sample_rows(300),
            endpoint=_endpoint(sim),
            run={"grace_s": 2},
            **_one_model(rpm=600),
        )
        done = threading.Event()

        def terminate() -> None:
            while not done.is_set():
                if int(sim.stats()["total"]) >= 10:
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                done.wait(0.01)

        killer = threading.Thread(target=terminate)
        killer.start()
        try:
            summary = _run(job, engine="ray")
        finally:
            done.set()
            killer.join()
        sent_at_end = int(sim.stats()["total"])
        time.sleep(0.5)
        assert int(sim.stats()["total"]) == sent_at_end, "nothing is sent after the run ends"
    assert summary.exit_code == ExitCode.INTERRUPTED
    results = pl.read_parquet("runs/t/results.parquet")
    assert results.height == 300
    counts = dict(results["status"].value_counts().iter_rows())
    assert counts["skipped_interrupted"] > 200
    assert counts["ok"] == sent_at_end


def test_cli_engine_flag(ray_cluster: Any, make_job: JobFactory) -> None:
    from click.testing import CliRunner

    from batchroute.cli import main

    with EmbeddedSimulator(SimConfig()) as sim:
        job = make_job(sample_rows(12), endpoint=_endpoint(sim))
        result = CliRunner().invoke(main, ["run", str(job), "--engine", "ray", "--quiet"])
        assert result.exit_code == 0, result.output
        assert int(sim.stats()["total"]) == 12
    assert json.loads(Path("runs/t/run.json").read_text())["engine"]["kind"] == "ray"


ROOM = {"max_tokens": 1024}
"""Room to finish (`stop`, not `length`): only complete answers are stored."""


def _paid(sim: EmbeddedSimulator) -> int:
    """Requests the simulator has received so far."""
    return int(sim.stats()["total"])


def test_a_second_run_is_served_from_the_cache(ray_cluster: Any, make_job: JobFactory) -> None:
    """The workers' answers are stored through the driver node's cache host: a second Ray run
    of the job, in a fresh run directory, sends nothing, and a local run shares its keys."""
    with EmbeddedSimulator(SimConfig()) as sim:
        job = make_job(sample_rows(40), endpoint=_endpoint(sim), request=ROOM)
        first = _run(job, run_dir=Path("runs/a"), engine="ray")
        sent_first = _paid(sim)
        second = _run(job, run_dir=Path("runs/b"), engine="ray")
        sent_second = _paid(sim) - sent_first
        local = _run(job, run_dir=Path("runs/c"))
        sent_local = _paid(sim) - sent_first - sent_second
    assert first.exit_code == second.exit_code == local.exit_code == ExitCode.OK
    assert (sent_first, first.cached_rows) == (40, 0)
    assert (sent_second, second.sent_rows, second.cached_rows) == (0, 0, 40)
    assert (sent_local, local.cached_rows) == (0, 40), "a local run reads the Ray run's answers"
    a = pl.read_parquet("runs/a/results.parquet")
    b = pl.read_parquet("runs/b/results.parquet")
    assert a.schema == b.schema
    assert not a["cache_hit"].any() and b["cache_hit"].all()
    same = ["id", "row_key", "tier", "model_used", "status", "content"]
    same += ["input_tokens", "output_tokens"]
    assert a.select(same).equals(b.select(same))
    assert second.cost_usd == 0 and b["cost_usd"].sum() == 0
    manifest = json.loads(Path("runs/b/run.json").read_text())
    assert manifest["sessions"][-1]["cached_rows"] == manifest["cache_hits"] == 40
    assert Decimal(str(manifest["cache_saved_usd"])) == first.cost_usd > 0


def test_the_cache_flags_hold_on_ray(ray_cluster: Any, make_job: JobFactory) -> None:
    """`--no-cache` on Ray stores nothing; `--refresh-cache` reads nothing, and stores."""
    with EmbeddedSimulator(SimConfig()) as sim:
        job = make_job(sample_rows(20), endpoint=_endpoint(sim), request=ROOM)
        _run(job, run_dir=Path("runs/a"), engine="ray", no_cache=True)
        assert _paid(sim) == 20
        _run(job, run_dir=Path("runs/b"))  # nothing was stored: every row is sent again
        assert _paid(sim) == 40
        refreshed = _run(job, run_dir=Path("runs/c"), engine="ray", refresh_cache=True)
        assert _paid(sim) == 60 and refreshed.cached_rows == 0
        again = _run(job, run_dir=Path("runs/d"), engine="ray")
        assert _paid(sim) == 60 and again.cached_rows == 20


def test_a_worker_finds_a_fallback_answer_in_the_cache(
    ray_cluster: Any, make_job: JobFactory
) -> None:
    """A row that falls back is looked up at the fallback, in the worker, through the host."""
    sim_config = SimConfig(models={"s": {"not_found": True}})  # type: ignore[dict-item]
    with EmbeddedSimulator(sim_config) as sim:
        job = make_job(
            sample_rows(30),
            endpoint=_endpoint(sim),
            request=ROOM,
            tiers={"complex": "s", "standard": "s", "structured": "s", "bulk": "s"},
            models={
                "s": {"input_per_mtok": 1, "output_per_mtok": 2, "fallback": "m"},
                "m": {"input_per_mtok": 3, "output_per_mtok": 15},
            },
            baseline_model="m",
        )
        _run(job, run_dir=Path("runs/a"), engine="ray")
        answered_by_m = sim.stats()["requests"]["m"].get("200", 0)
        second = _run(job, run_dir=Path("runs/b"), engine="ray")
        assert sim.stats()["requests"]["m"].get("200", 0) == answered_by_m == 30
    assert second.exit_code == ExitCode.OK
    results = pl.read_parquet("runs/b/results.parquet")
    assert results["cache_hit"].all()
    assert results["model_used"].unique().to_list() == ["m"]
    assert results["fallback_depth"].unique().to_list() == [1]


def test_the_cache_host_runs_on_the_drivers_node(ray_cluster: Any, make_job: JobFactory) -> None:
    """The cache file need not be shared: the one process that opens it for the workers is on
    the driver's node, where a local run would keep it."""
    from batchroute.cache.cluster import start_cache_host

    job = load_job(make_job(sample_rows(2)))
    host = start_cache_host(ray, job, no_cache=False, refresh_cache=False)
    try:
        assert ray.get(host.node.remote()) == ray.get_runtime_context().get_node_id()
    finally:
        ray.get(host.close.remote())
        ray.kill(host)
    assert (Path(os.environ["XDG_CACHE_HOME"]) / "batchroute" / "responses.sqlite3").exists()


def test_ray_warns_like_the_local_engine(
    ray_cluster: Any, make_job: JobFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A model gone for the run (found by every worker) is warned once; spend past the forecast
    is warned at the end; both are in the log, the summary, run.json and the reports."""
    from click.testing import CliRunner

    from batchroute.cli import main

    sim_config = SimConfig(models={"small": {"not_found": True}})  # type: ignore[dict-item]
    with EmbeddedSimulator(sim_config) as sim:
        job = make_job(sample_rows(30), endpoint=_endpoint(sim), run={"warn_overrun_pct": 0})
        with caplog.at_level("WARNING", logger="batchroute"):
            summary = _run(job, engine="ray")
    assert summary.exit_code == ExitCode.OK, summary.message
    gone = [w for w in summary.warnings if "small is gone for this run" in w]
    over = [w for w in summary.warnings if w.startswith("over the forecast: spend")]
    assert len(gone) == 1 and len(over) == 1
    logged = [record.getMessage() for record in caplog.records]
    assert gone[0] in logged and over[0] in logged
    recorded = json.loads(Path("runs/t/run.json").read_text())["warnings"]
    assert recorded == list(summary.warnings)
    report = CliRunner().invoke(main, ["report", "runs/t"])
    assert "Warned during the run: model small is gone" in report.stdout
    assert "Warned during the run: over the forecast: spend" in report.stdout


def test_run_control_relays_each_workers_warning_once() -> None:
    """Every worker finds the same model gone: the driver hears it once, in first-seen order."""
    from batchroute.engines.shard import RunControl

    control = RunControl()
    control.report(0, {}, {}, ("model small is gone", "spend is running past"))
    control.report(1, {}, {}, ("model small is gone",))
    control.report(0, {}, {}, ("model small is gone", "spend is running past"))
    control.report(2, {}, {}, ("model big is gone", "model small is gone"))
    _, _, warnings = control.progress()
    assert warnings == ["model small is gone", "spend is running past", "model big is gone"]


def _wait_until_dead(actor: Any) -> None:
    """`ray.kill` lands asynchronously: a call made just after it may still be answered."""
    for _ in range(300):
        try:
            ray.get(actor.node.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.1)
    pytest.fail("the killed actor still answers after 300 calls")


def test_a_lost_cache_host_is_a_miss_not_a_failed_row(
    ray_cluster: Any, make_job: JobFactory
) -> None:
    """If the host dies, a worker's fallback lookup misses (the row is sent) and its stores are
    dropped: nothing raises into the walk; `failed` makes the shard record a warning."""
    from batchroute.cache.answers import CachedAnswer
    from batchroute.cache.cluster import RemoteResponses, start_cache_host

    job = load_job(make_job(sample_rows(2)))
    host = start_cache_host(ray, job, no_cache=False, refresh_cache=False)
    ray.kill(host)
    _wait_until_dead(host)
    responses = RemoteResponses(host, read=True, write=True)
    answer = CachedAnswer("hi", "stop", "m", 1, 1)
    assert responses.get(b"k" * 16) is None and responses.failed
    stores = RemoteResponses(host, read=True, write=True)
    assert stores.put(b"k" * 16, answer)
    stores.close()
    assert stores.failed, "a store the host never received is reported"


def test_a_tier_with_checks_is_not_served_from_the_cache_on_ray(
    ray_cluster: Any, make_job: JobFactory
) -> None:
    """As on the local engine: answers must pass this run's checks, so they are sent again."""
    with EmbeddedSimulator(SimConfig()) as sim:
        job = make_job(
            sample_rows(12),
            endpoint=_endpoint(sim),
            request=ROOM,
            verify={"default": ["not_truncated"]},
        )
        _run(job, run_dir=Path("runs/a"), engine="ray")
        first = _paid(sim)
        again = _run(job, run_dir=Path("runs/b"), engine="ray")
        assert _paid(sim) == 2 * first and again.cached_rows == 0
    assert not pl.read_parquet("runs/b/results.parquet")["cache_hit"].any()


CLIMB_ROWS = 8
SLOW_MID_MS = 1500
CLIMB_SIM: dict[str, Any] = {
    "seed": 3,
    "log_requests": True,
    # Every cheap answer is cut short, so every bulk row fails `not_truncated` and climbs to
    # standard (mid), which is slow: a climb is caught with its request in flight.
    "models": {"small": {"truncate_rate": 1.0}, "mid": {"latency_ms": SLOW_MID_MS}},
}
CLIMB_VERIFY: dict[str, Any] = {"default": ["not_truncated"], "max_escalations": 2}


def _asked(sim: EmbeddedSimulator, model: str) -> list[int]:
    """The rows (by their `(case N)`) the simulator's request log says `model` was asked."""
    import urllib.request

    url = sim.base_url.removesuffix("/v1") + "/sim/requests"
    with urllib.request.urlopen(url, timeout=30) as response:
        log = json.loads(response.read())["requests"]
    return [_case(str(request["prompt"])) for request in log if request["model"] == model]


def _case(prompt: str) -> int:
    import re

    match = re.search(r"\(case (\d+)\)", prompt)
    assert match, prompt
    return int(match.group(1))


def _climb_job(make_job: JobFactory, sim: EmbeddedSimulator) -> Path:
    return make_job(
        [{**row, "tier": "bulk"} for row in sample_rows(CLIMB_ROWS)],
        endpoint=_endpoint(sim),
        verify=CLIMB_VERIFY,
        request={"max_tokens": 200},
        run={"max_in_flight": 16},  # 16 slots shared by 4 tiers: 4 bulk rows at a time
        engine={"kind": "ray", "workers": 1},
    )


def test_a_worker_killed_mid_climb_resumes_the_climb(
    ray_cluster: Any, make_job: JobFactory
) -> None:
    """Kill the shard's worker while its rows wait on the tier they climbed to: Ray's retry
    resumes each journaled climb at that tier, so no rejected answer is bought twice, and the
    results and spend equal an uninterrupted run's (the climb is durable on Ray too)."""
    with EmbeddedSimulator(SimConfig.model_validate(CLIMB_SIM)) as sim:
        job = _climb_job(make_job, sim)
        whole = _run(job, run_dir=Path("runs/whole"), engine="local", no_cache=True)
        assert whole.exit_code == ExitCode.OK, whole.message
        sim.reset()
        before = len(_asked(sim, "small")), len(_asked(sim, "mid"))
        climbed: set[int] = set()

        def mid_climb() -> bool:  # the first wave's climbs are durable, mid in flight
            climbed.update(_asked(sim, "mid")[before[1] :])
            return len(climbed) >= 4

        with killing_a_worker(when=mid_climb) as killed:
            summary = _run(job, no_cache=True)
        small = _asked(sim, "small")[before[0] :]
        mid = _asked(sim, "mid")[before[1] :]
    assert killed, "the worker was killed mid-climb"
    assert summary.exit_code == ExitCode.OK, summary.message
    for row in climbed:
        assert small.count(row) == 1, f"row {row}: its rejected answer was bought again"
    assert sorted(set(small)) == list(range(CLIMB_ROWS))
    assert len(mid) - CLIMB_ROWS <= 4, "only the standard requests in flight at the kill"

    compared = ["id", "status", "model_used", "content", "verified", "verify_failures"]
    compared += ["escalated_from", "escalation_depth", "attempts", "cost_usd", "failed_cost_usd"]
    results = pl.read_parquet("runs/t/results.parquet")
    expected = pl.read_parquet("runs/whole/results.parquet")
    assert results["row_index"].to_list() == list(range(CLIMB_ROWS)), "every row exactly once"
    assert results.select(compared).equals(expected.select(compared))
    attempts = pl.read_parquet("runs/t/attempts.parquet")
    assert attempts.filter(pl.col("verify") == "failed").height == CLIMB_ROWS, (
        "each rejected answer is recorded, and costed, once"
    )
    assert attempts.filter(pl.col("model") == "small").height == CLIMB_ROWS
    spend = results["cost_usd"].sum() + results["failed_cost_usd"].sum()
    assert summary.cost_usd == whole.cost_usd
    assert spend == attempts["cost_usd"].sum() == summary.cost_usd


# -- start-up: both engines start through engines/startup.py ----------------------------------

ENGINES = ["local", "ray"]


def _engine(request: pytest.FixtureRequest, engine: str) -> str:
    if engine == "ray":
        request.getfixturevalue("ray_cluster")
    return engine


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("engine", ENGINES)
def test_both_engines_warn_when_they_take_over_a_dead_runs_lock(
    engine: str,
    request: pytest.FixtureRequest,
    make_job: JobFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import socket

    engine = _engine(request, engine)
    pid = _dead_pid()
    Path("runs/t").mkdir(parents=True)
    lock = {"pid": pid, "hostname": socket.gethostname(), "run_id": "dead"}
    Path("runs/t/.lock").write_text(json.dumps(lock))
    with EmbeddedSimulator(SimConfig()) as sim:
        job = make_job(sample_rows(3), endpoint=_endpoint(sim))
        with caplog.at_level("WARNING", logger="batchroute"):
            summary = _run(job, engine=engine, no_cache=True)
    assert summary.exit_code == ExitCode.OK, summary.message
    stale = [r for r in caplog.records if getattr(r, "reason", None) == "stale_lock"]
    assert len(stale) == 1, [r.getMessage() for r in caplog.records]
    assert f"left by process {pid}" in stale[0].getMessage()


@pytest.mark.parametrize("engine", ENGINES)
def test_both_engines_refuse_a_run_dir_another_live_run_holds(
    engine: str, request: pytest.FixtureRequest, make_job: JobFactory
) -> None:
    from batchroute.errors import RunLockedError
    from batchroute.store.lock import RunLock

    engine = _engine(request, engine)
    job = make_job(sample_rows(3))
    with RunLock(Path("runs/t")), pytest.raises(RunLockedError) as refused:
        _run(job, engine=engine)
    assert refused.value.pid == os.getpid()


def _batch_bulk_job(make_job: JobFactory) -> Path:
    """Three bulk rows whose tier goes through the Batch API."""
    tiers = {"complex": "big", "standard": "mid", "structured": "mid"}
    return make_job(
        [{**row, "tier": "bulk"} for row in sample_rows(3)],
        tiers={**tiers, "bulk": {"model": "small", "mode": "batch"}},
    )


def test_ray_refuses_batch_mode_tiers_before_anything_is_paid(make_job: JobFactory) -> None:
    """Ray shards cannot share the Batch API's spool and ledger yet: a clear error up front,
    not a shard failing three times (or, with --no-wait, a run reported done with batches open)."""
    from batchroute.errors import JobError

    job = _batch_bulk_job(make_job)
    with pytest.raises(JobError, match="tier bulk goes through the Batch API") as refused:
        _run(job, engine="ray")
    assert "--engine local" in str(refused.value)
    assert not Path("runs").exists()


@pytest.mark.parametrize("engine", ENGINES)
def test_both_engines_check_no_wait_before_making_a_run_dir(
    engine: str, request: pytest.FixtureRequest, make_job: JobFactory
) -> None:
    """`--no-wait` with batches on the embedded simulator (which ends with the run) is a user
    error on either engine, raised before a run directory exists."""
    from batchroute.errors import JobError

    engine = _engine(request, engine)
    job = _batch_bulk_job(make_job)
    with pytest.raises(JobError, match="--no-wait leaves batches open"):
        _run(job, engine=engine, wait=False)
    assert not Path("runs").exists()


def test_a_climb_a_crashed_local_run_journaled_resumes_on_ray(
    ray_cluster: Any, make_job: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Across engines: a local session dies with rows waiting on the tier they climbed to; the
    run finishes on Ray, whose shard resumes each climb there (small is not asked again)."""
    from batchroute.dispatch import walk

    class _Crash(BaseException):
        """The process dies: nothing after it runs as a normal exit would."""

    with EmbeddedSimulator(SimConfig.model_validate(CLIMB_SIM)) as sim:
        job = _climb_job(make_job, sim)
        real = walk.send_chat
        climbed: set[int] = set()  # rows that asked mid: their climb was durable by then

        async def dies_on_the_fourth_mid_request(client: Any, body: Any) -> Any:
            if body["model"] == "mid":
                climbed.add(_case(body["messages"][-1]["content"]))
                if len(climbed) == 4:
                    raise _Crash
            return await real(client, body)

        with monkeypatch.context() as patch:
            patch.setattr(walk, "send_chat", dies_on_the_fourth_mid_request)
            with pytest.raises(BaseException) as crash:
                _run(job, engine="local", no_cache=True)
        if isinstance(crash.value, BaseExceptionGroup):
            assert crash.group_contains(_Crash)
        else:
            assert crash.type is _Crash
        assert len(climbed) == 4
        summary = _run(job, no_cache=True)  # the job's engine: Ray
        small = _asked(sim, "small")
    assert summary.exit_code == ExitCode.OK, summary.message
    for row in climbed:
        assert small.count(row) == 1, f"row {row}: its rejected answer was bought again"
    results = pl.read_parquet("runs/t/results.parquet")
    assert results["row_index"].to_list() == list(range(CLIMB_ROWS))
    assert (results["escalation_depth"] == 1).all() and results["verified"].all()
    attempts = pl.read_parquet("runs/t/attempts.parquet")
    assert attempts.filter(pl.col("verify") == "failed").height == CLIMB_ROWS
