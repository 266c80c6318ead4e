"""The response cache: keys, what is stored, concurrency, age and size bounds, a bad file."""

from __future__ import annotations

import copy
import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from batchroute.cache import (
    CachedAnswer,
    ResponseCache,
    cache_settings,
    default_cache_path,
    request_key,
)
from batchroute.config import CacheConfig, parse_job
from batchroute.errors import BatchrouteError, CacheError, JobError

BASE_URL = "https://api.example.com/v1"


def _body(**params: Any) -> dict[str, Any]:
    """A chat-completions body shaped the way the dispatcher builds one."""
    return {
        "model": "gpt-5.5-mini",
        "max_tokens": 256,
        "temperature": 0.0,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the capital of Australia?"},
        ],
        **params,
    }


def _answer(content: str = "Canberra.", **changes: Any) -> CachedAnswer:
    fields: dict[str, Any] = {
        "content": content,
        "finish_reason": "stop",
        "model": "gpt-5.5-mini-2026-01-01",
        "input_tokens": 21,
        "output_tokens": 3,
        "cached_tokens": 8,
        "reasoning_tokens": 1,
        "created": 1_780_000_000,
    }
    fields.update(changes)
    return CachedAnswer(**fields)


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_stored_answer_is_a_hit_and_an_unknown_request_a_miss(tmp_path: Path) -> None:
    key = request_key(BASE_URL, _body())
    with ResponseCache(tmp_path / "c.sqlite3") as cache:
        assert cache.get(key) is None
        assert cache.put(key, _answer())
        cache.flush()
        assert cache.get(key) == _answer()
        assert cache.get(request_key(BASE_URL, _body(seed=7))) is None
        assert (cache.hits, cache.misses, cache.writes) == (1, 2, 1)
    with ResponseCache(tmp_path / "c.sqlite3") as reopened:
        assert reopened.get(key) == _answer()


@pytest.mark.parametrize(
    "change",
    [
        lambda b: b.update(model="gpt-5.5"),
        lambda b: b.update(temperature=0.2),
        lambda b: b.update(max_tokens=257),
        lambda b: b.update(top_p=0.9),
        lambda b: b.update(response_format={"type": "json_object"}),
        lambda b: b["messages"][1].update(content="What is the capital of Austria?"),
        lambda b: b["messages"][0].update(role="developer"),
        lambda b: b["messages"].append({"role": "assistant", "content": "Hm?"}),
        lambda b: b.update(tools=[{"type": "function", "function": {"name": "f"}}]),
    ],
    ids=[
        "model",
        "temperature",
        "max_tokens",
        "new-key",
        "nested-new",
        "message",
        "role",
        "extra-message",
        "tools",
    ],
)
def test_any_changed_field_of_the_body_changes_the_key(change: Any) -> None:
    body = _body(
        response_format={"type": "json_schema", "json_schema": {"name": "a", "strict": True}},
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"a": 1}}}],
    )
    changed = copy.deepcopy(body)
    change(changed)
    assert request_key(BASE_URL, changed) != request_key(BASE_URL, body)


def test_a_deeply_nested_parameter_changes_the_key() -> None:
    schema: dict[str, Any] = {
        "type": "json_schema",
        "json_schema": {"schema": {"properties": {"a": {"x": 1}}}},
    }
    changed = copy.deepcopy(schema)
    changed["json_schema"]["schema"]["properties"]["a"]["x"] = 2
    assert request_key(BASE_URL, _body(response_format=schema)) != request_key(
        BASE_URL, _body(response_format=changed)
    )


def test_the_key_ignores_key_order_but_not_the_endpoint() -> None:
    body = _body(seed=1, top_p=0.5)
    reordered = dict(reversed(list(body.items())))
    assert request_key(BASE_URL, reordered) == request_key(BASE_URL, body)
    assert request_key(BASE_URL + "/", body) == request_key(BASE_URL, body)
    assert request_key("https://other.example.com/v1", body) != request_key(BASE_URL, body)


@pytest.mark.parametrize(
    "answer",
    [
        _answer(finish_reason="length"),
        _answer(finish_reason="content_filter"),
        _answer(finish_reason=None),
        _answer(content=None),  # type: ignore[arg-type]
    ],
    ids=["truncated", "filtered", "no-finish-reason", "no-content"],
)
def test_incomplete_answers_are_never_stored(tmp_path: Path, answer: CachedAnswer) -> None:
    key = request_key(BASE_URL, _body())
    with ResponseCache(tmp_path / "c.sqlite3") as cache:
        assert not cache.put(key, answer)
        cache.flush()
        assert cache.get(key) is None
        assert (cache.refused, cache.writes) == (1, 0)


def test_tool_call_answers_are_stored(tmp_path: Path) -> None:
    key = request_key(BASE_URL, _body())
    with ResponseCache(tmp_path / "c.sqlite3") as cache:
        assert cache.put(key, _answer(finish_reason="tool_calls"))
        cache.flush()
        assert cache.get(key) is not None


def test_a_trickle_of_answers_is_committed_in_few_transactions(tmp_path: Path) -> None:
    with ResponseCache(tmp_path / "c.sqlite3") as cache:
        for i in range(200):
            cache.put(request_key(BASE_URL, _body(seed=i)), _answer())
        cache.flush()
        assert cache.writes == 200
        assert cache.commits <= 2, "the writer gathers queued answers into one transaction"


def test_answers_expire_after_ttl_days_and_are_dropped_on_open(tmp_path: Path) -> None:
    clock = _Clock()
    key = request_key(BASE_URL, _body())
    path = tmp_path / "c.sqlite3"
    with ResponseCache(path, ttl_days=2, clock=clock) as cache:
        cache.put(key, _answer())
        cache.flush()
        clock.now += 2 * 86_400 - 60
        assert cache.get(key) is not None
        clock.now += 120
        assert cache.get(key) is None
    with ResponseCache(path, ttl_days=2, clock=clock):
        pass
    assert sqlite3.connect(path).execute("SELECT count(*) FROM responses").fetchone() == (0,)


def test_over_max_size_the_least_recently_used_answers_go(tmp_path: Path) -> None:
    clock = _Clock()
    path = tmp_path / "c.sqlite3"
    keys = [request_key(BASE_URL, _body(seed=i)) for i in range(400)]
    big = "x" * 2000
    # 400 answers of ~2 KB is ~0.85 MB; the bound is 0.5 MB.
    with ResponseCache(path, max_size_mb=0.5, clock=clock) as cache:
        for i, key in enumerate(keys):
            clock.now += 1
            cache.put(key, _answer(f"{i}{big}"))
            cache.flush()
        clock.now += 2 * 3600  # the first ten are used again, long after they were written
        assert all(cache.get_many(keys[:10]))
    with sqlite3.connect(path) as db:
        pages, free, page_size = (
            db.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_count", "freelist_count", "page_size")
        )
        count = db.execute("SELECT count(*) FROM responses").fetchone()[0]
    assert (pages - free) * page_size <= 0.5 * 1024 * 1024
    assert 100 < count < 400
    with ResponseCache(path, clock=clock) as cache:
        assert all(cache.get_many(keys[:10])), "recently used answers are kept"
        assert cache.get(keys[10]) is None, "the oldest unused answers are evicted first"
        assert cache.get(keys[-1]) is not None


def test_read_off_never_serves_but_stores_fresh_answers(tmp_path: Path) -> None:
    key = request_key(BASE_URL, _body())
    path = tmp_path / "c.sqlite3"
    with ResponseCache(path) as cache:
        cache.put(key, _answer("old"))
    refresh = cache_settings(CacheConfig(path=path), no_cache=False, refresh_cache=True)
    with ResponseCache.from_config(refresh) as cache:
        assert cache.get(key) is None
        cache.put(key, _answer("new"))
    with ResponseCache(path) as cache:
        assert cache.get(key) == _answer("new")


def test_no_cache_never_touches_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "c.sqlite3"
    off = cache_settings(CacheConfig(path=path), no_cache=True, refresh_cache=False)
    with ResponseCache.from_config(off) as cache:
        key = request_key(BASE_URL, _body())
        assert not cache.put(key, _answer())
        assert cache.get(key) is None
    assert not path.parent.exists()


def test_no_secret_and_no_prompt_reaches_the_file(tmp_path: Path) -> None:
    """The key is a hash of the body alone: API keys and headers never enter the file."""
    secret = "sk-test-DO-NOT-STORE-1234567890"
    body = _body()
    path = tmp_path / "c.sqlite3"
    with ResponseCache(path) as cache:
        cache.put(request_key(BASE_URL, body), _answer())
        cache.flush()
        files = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    files += path.read_bytes()
    assert b"Canberra." in files
    assert secret.encode() not in files
    assert b"capital of Australia" not in files
    assert path.stat().st_mode & 0o077 == 0, "answers are private to the user"


def test_a_corrupt_file_is_a_clear_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    path.write_bytes(b"this is not a database, it was overwritten by mistake" * 100)
    with pytest.raises(CacheError) as caught:
        ResponseCache(path).open()
    assert isinstance(caught.value, BatchrouteError)
    assert caught.value.path == path
    assert str(path) in str(caught.value)
    assert "--no-cache" in str(caught.value)


def test_a_cache_in_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="cache.path"):
        ResponseCache(blocker / "c.sqlite3").open()


def _worker(path: str, start: int, count: int, queue: Any, barrier: Any) -> None:
    """One run in its own process: look each request up, then store its answer."""
    hits = 0
    with ResponseCache(path) as cache:
        barrier.wait(30)  # both processes start together, so their transactions overlap
        for i in range(start, start + count):
            key = request_key(BASE_URL, _body(seed=i))
            if cache.get(key) is not None:
                hits += 1
            cache.put(key, _answer(f"answer {i}"))
            cache.flush()  # one short transaction per answer: as much contention as can be
    queue.put(hits)


def test_two_processes_share_the_cache_safely(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sqlite3")
    with ResponseCache(path):
        pass  # created once, so both workers race on writes and reads, not on creation
    context = multiprocessing.get_context("spawn")
    results, barrier = context.Queue(), context.Barrier(2)
    workers = [
        context.Process(target=_worker, args=(path, start, 1000, results, barrier))
        for start in (0, 500)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert results.get(timeout=5) + results.get(timeout=5) <= 500
    with ResponseCache(path) as cache:
        answers = cache.get_many([request_key(BASE_URL, _body(seed=i)) for i in range(1500)])
    assert [a.content if a else None for a in answers] == [f"answer {i}" for i in range(1500)]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_flush_reports_a_dead_writer_instead_of_waiting_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: ResponseCache, connection: object, batch: object) -> int:
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(ResponseCache, "_commit", broken)
    with ResponseCache(tmp_path / "c.sqlite3") as cache:
        cache.put(request_key(BASE_URL, _body()), _answer())
        with pytest.raises(CacheError, match="writer stopped"):
            cache.flush()


def test_lookups_work_from_async_code(tmp_path: Path) -> None:
    key = request_key(BASE_URL, _body())

    async def main() -> list[CachedAnswer | None]:
        cache = ResponseCache(tmp_path / "c.sqlite3")
        await cache.aopen()
        cache.put(key, _answer())
        cache.flush()
        found = await cache.aget_many([key, request_key(BASE_URL, _body(seed=1))])
        await cache.aclose()
        return found

    assert anyio.run(main) == [_answer(), None]


def test_repr_shows_live_state(tmp_path: Path) -> None:
    with ResponseCache(tmp_path / "c.sqlite3") as cache:
        cache.get(request_key(BASE_URL, _body()))
        assert "misses: 1" in repr(cache) and "open" in repr(cache)
        assert cache.stats["misses"] == 1 and cache.stats["hits"] == 0
        assert str(tmp_path) in repr(cache)


def test_default_path_follows_xdg_cache_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_path() == tmp_path / "batchroute" / "responses.sqlite3"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_path() == Path.home() / ".cache" / "batchroute" / "responses.sqlite3"
    assert ResponseCache.from_config(CacheConfig()).path == default_cache_path()


def test_a_relative_or_home_path_is_resolved(tmp_path: Path) -> None:
    relative = ResponseCache.from_config(CacheConfig(path=Path("c/r.sqlite3")), base_dir=tmp_path)
    assert relative.path == tmp_path / "c" / "r.sqlite3"
    home = ResponseCache.from_config(CacheConfig(path=Path("~/r.sqlite3")), base_dir=tmp_path)
    assert home.path == Path.home() / "r.sqlite3"


def test_the_cache_section_is_validated_at_load(tmp_path: Path) -> None:
    job = {
        "name": "j",
        "input": {"path": "x.jsonl"},
        "tiers": {"standard": "m"},
        "models": {"m": {}},
    }
    config = parse_job({**job, "cache": {"ttl_days": 7, "read": False}}, path=Path("j.yaml"))
    assert (config.cache.ttl_days, config.cache.read, config.cache.write) == (7, False, True)
    assert parse_job(job, path=Path("j.yaml")).cache == CacheConfig()
    with pytest.raises(JobError, match="cache.ttl"):
        parse_job({**job, "cache": {"ttl": 7}}, path=Path("j.yaml"))
    with pytest.raises(JobError, match="cache.max_size_mb"):
        parse_job({**job, "cache": {"max_size_mb": 0}}, path=Path("j.yaml"))
