"""The response cache: answers already paid for, kept across runs and jobs in one SQLite file.

A request is looked up by `request_key`, a blake2b hash of the canonical JSON of the request
actually sent: the endpoint's configured base URL and the whole chat-completions body (the
model's wire name, every message and every parameter). Nothing is picked from the body, so any
field that can change the answer changes the key. Headers and API keys never enter the key, and
the file holds only hashes and answers: no prompt, no key.

The store is the stdlib `sqlite3` in WAL mode holding JSON (never pickles), so runs in several
processes share it: reads never wait for a writer, writes are short `INSERT OR REPLACE`
transactions made by one writer thread per process, and a busy database is waited for
(`busy_timeout`). Lookups are synchronous and cheap enough to make inline on the event loop
(`benchmarks/bench_cache.py`); `aget_many` moves a whole batch of lookups to a thread.

Only complete answers are stored: `put` itself refuses anything whose finish reason is not a
normal end (`stop`, `tool_calls`), so a truncated (`length`) or content-filtered answer can never
be served later. Age (`ttl_days`) and size (`max_size_mb`, least recently used first) bound the
file; both are enforced when the cache opens, every few thousand writes, and when it closes,
never on a lookup.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from batchroute.config import CacheConfig
from batchroute.errors import CacheError

__all__ = [
    "CACHEABLE_FINISH_REASONS",
    "CachedAnswer",
    "ResponseCache",
    "cache_settings",
    "default_cache_path",
    "request_key",
]

logger = logging.getLogger("batchroute.cache")

CACHEABLE_FINISH_REASONS: frozenset[str] = frozenset({"stop", "tool_calls"})
"""A normal end of an answer; anything else (length, content_filter, None) is never stored."""

_KEY_VERSION = 1
"""Part of every key: a change to what is hashed must change every key, not reuse old answers."""
_SCHEMA_VERSION = 1
# Encoders made once: json.dumps with any option builds a new encoder on every call.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_TOUCH_AFTER_S = 3600.0
"""A hit refreshes its last-use time only when that is older than this: hits are not writes."""
_MAINTAIN_EVERY_WRITES = 10_000
_BATCH_WRITES = 10_000
_LINGER_S = 0.25
_SELECT_ONE = "SELECT answer, created_at, used_at FROM responses WHERE key = ?"
_LOOKUP_CHUNK = 500
"""Keys per `SELECT ... IN (...)`: under SQLite's host-parameter limit on every build."""
_BUSY_TIMEOUT_MS = 10_000
_EVICT_ROUNDS = 8
"""Eviction deletes by row count and checks the pages freed; a few rounds reach the target."""
_EVICT_TO = 0.9
"""Eviction frees space down to this share of `max_size_mb`, so it does not run on every write."""


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """What a successful row needs from an answer; stored as JSON."""

    content: str
    finish_reason: str
    model: str
    """The model's wire name, as the endpoint reported it."""
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    created: int | None = None
    """The response's own `created` time (unix seconds), when the endpoint gave one."""

    @property
    def is_cacheable(self) -> bool:
        """A complete answer: a normal finish reason and some content."""
        return self.finish_reason in CACHEABLE_FINISH_REASONS and self.content is not None


def request_key(base_url: str, body: Mapping[str, Any]) -> bytes:
    """The cache key of one request: a 16-byte (128-bit) blake2b of its canonical JSON.

    `base_url` is the endpoint as configured (`simulator` stays `simulator`, not a loopback
    port); `body` is the whole request body as sent, `model` and `messages` included.
    """
    canonical = _CANONICAL.encode([_KEY_VERSION, base_url.rstrip("/"), body])
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).digest()


def default_cache_path() -> Path:
    """`$XDG_CACHE_HOME/batchroute/responses.sqlite3`, else under `~/.cache`."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "batchroute" / "responses.sqlite3"


def cache_settings(config: CacheConfig, *, no_cache: bool, refresh_cache: bool) -> CacheConfig:
    """The job's cache settings with the command line's overrides laid on top.

    `--no-cache` neither reads nor writes (the file is not even opened); `--refresh-cache` sends
    every request and stores the fresh answers over the old ones.
    """
    if no_cache:
        return config.model_copy(update={"read": False, "write": False})
    if refresh_cache:
        return config.model_copy(update={"read": False})
    return config


class ResponseCache:
    """Answers by request key, in a SQLite file shared by every run on the machine.

    Open it with `with ResponseCache(...) as cache:` (or `open()`/`close()`; from async code,
    `await cache.aclose()`). `get`/`get_many` read at once; `put` queues the answer for the
    writer thread, which commits in batches; `flush` waits until everything queued is committed.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        ttl_days: float = 30.0,
        max_size_mb: float = 1024.0,
        read: bool = True,
        write: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path).expanduser()
        self.ttl_s = ttl_days * 86_400.0
        self.max_size_bytes = int(max_size_mb * 1024 * 1024)
        self.read = read
        self.write = write
        self._clock = clock
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.refused = 0
        self.evicted = 0
        self.write_errors = 0
        self.commits = 0
        self._reader: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._touch: list[bytes] = []

    @classmethod
    def from_config(cls, config: CacheConfig, *, base_dir: Path | None = None) -> ResponseCache:
        """A cache as the job's `cache:` section describes it; relative paths join `base_dir`."""
        path = config.path.expanduser() if config.path is not None else default_cache_path()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        return cls(
            path,
            ttl_days=config.ttl_days,
            max_size_mb=config.max_size_mb,
            read=config.read,
            write=config.write,
        )

    @property
    def is_active(self) -> bool:
        """Whether the cache touches its file at all (`--no-cache` turns both sides off)."""
        return self.read or self.write

    def __repr__(self) -> str:
        state = "open" if self._reader is not None else "closed"
        modes = "".join(("r" if self.read else "-", "w" if self.write else "-"))
        return (
            f"<ResponseCache {str(self.path)!r} [{state}, {modes}, hits: {self.hits}, "
            f"misses: {self.misses}, writes: {self.writes}, refused: {self.refused}, "
            f"pending: {self._queue.qsize()}]>"
        )

    def __enter__(self) -> ResponseCache:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Create or open the file, drop expired answers, and start the writer thread."""
        if not self.is_active or self._reader is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                # Answers can be as private as the prompts: the file is the user's alone.
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as exc:
            raise CacheError(
                f"cannot create the response cache ({exc.strerror}); set cache.path to a "
                "writable place, or run with --no-cache",
                path=self.path,
            ) from None
        self._reader = self._connect()
        self._prepare_schema(self._reader)
        self._maintain(self._reader)
        if self.write:
            self._writer = threading.Thread(
                target=self._write_loop, name=f"batchroute-cache:{self.path.name}", daemon=True
            )
            self._writer.start()

    def close(self) -> None:
        """Commit what is queued, enforce the age and size bounds, and close the file."""
        if self._reader is None:
            return
        if self._writer is not None:
            self._queue_touches()
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        with self._lock:
            reader, self._reader = self._reader, None
        if self.write:
            self._maintain(reader)
        reader.close()

    async def aclose(self) -> None:
        """`close` off the event loop: it waits for the writer and may evict."""
        await anyio.to_thread.run_sync(self.close)

    def get(self, key: bytes) -> CachedAnswer | None:
        """The stored answer for `key`, or None on a miss (always None when reading is off)."""
        if not self.read:
            self.misses += 1
            return None
        reader = self._require_open()
        with self._lock:
            try:
                row = reader.execute(_SELECT_ONE, (key,)).fetchone()
            except sqlite3.DatabaseError as exc:
                raise self._unreadable(exc) from None
            return self._settle(key, row, self._clock())

    def get_many(self, keys: Sequence[bytes]) -> list[CachedAnswer | None]:
        """The stored answers for `keys`, in order; None where there is none or it has expired."""
        if not self.read or not keys:
            if keys:
                self.misses += len(keys)
            return [None] * len(keys)
        reader = self._require_open()
        now = self._clock()
        found: dict[bytes, tuple[str, float, float]] = {}
        with self._lock:
            try:
                for start in range(0, len(keys), _LOOKUP_CHUNK):
                    chunk = keys[start : start + _LOOKUP_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    for key, *row in reader.execute(
                        "SELECT key, answer, created_at, used_at FROM responses "
                        f"WHERE key IN ({marks})",
                        chunk,
                    ):
                        found[key] = tuple(row)
            except sqlite3.DatabaseError as exc:
                raise self._unreadable(exc) from None
            return [self._settle(key, found.get(key), now) for key in keys]

    def _settle(
        self, key: bytes, row: tuple[str, float, float] | None, now: float
    ) -> CachedAnswer | None:
        """A looked-up row as an answer (None if absent, expired or unreadable), counted.

        Called under `_lock`, so lookups from worker threads (`aget_many`) count correctly.
        """
        answer = None
        if row is not None and now - row[1] < self.ttl_s:
            answer = _decode(row[0])
        if answer is None or row is None:
            self.misses += 1
            return None
        self.hits += 1
        if self.write and now - row[2] > _TOUCH_AFTER_S:
            self._touch.append(key)
            if len(self._touch) >= _BATCH_WRITES:
                self._queue.put(("touch", self._touch))
                self._touch = []
        return answer

    async def aget_many(self, keys: Sequence[bytes]) -> list[CachedAnswer | None]:
        """`get_many` in a worker thread, for a batch large enough to be worth the hop."""
        return await anyio.to_thread.run_sync(self.get_many, keys)

    def put(self, key: bytes, answer: CachedAnswer) -> bool:
        """Queue a complete answer for storage; False (and nothing stored) if it is not one.

        Truncated, filtered and empty answers are refused here, whatever the caller thinks.
        """
        if not self.write:
            return False
        if not answer.is_cacheable:
            self.refused += 1
            return False
        self._require_open()
        self._queue.put((key, answer))
        return True

    def put_many(self, items: Iterable[tuple[bytes, CachedAnswer]]) -> int:
        """`put` for several answers; the number queued."""
        return sum(self.put(key, answer) for key, answer in items)

    def flush(self) -> None:
        """Wait until every answer queued so far is committed."""
        if self._writer is None:
            return
        done = threading.Event()
        self._queue_touches()
        self._queue.put(done)
        done.wait()

    def _queue_touches(self) -> None:
        with self._lock:
            if self._touch:
                self._queue.put(("touch", self._touch))
                self._touch = []

    def _require_open(self) -> sqlite3.Connection:
        if self._reader is None:
            raise RuntimeError("the response cache is not open; use it in a `with` block")
        return self._reader

    def _connect(self) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(
                self.path,
                timeout=_BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # autocommit; transactions are explicit and short
                check_same_thread=False,  # guarded by self._lock (reader) or owned by one thread
            )
            connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            connection.execute("PRAGMA synchronous = NORMAL")
            # The hash index takes random inserts and lookups: keep its pages in memory, read the
            # file through mmap, and checkpoint less often so a page rewritten by several
            # batches is copied back once (bench_cache.py: about half the CPU per write).
            connection.execute("PRAGMA cache_size = -32768")
            connection.execute("PRAGMA mmap_size = 1073741824")
            connection.execute("PRAGMA wal_autocheckpoint = 10000")
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from None
        if mode != "wal":
            connection.close()
            raise CacheError(
                f"SQLite could not put the response cache in WAL mode (got {mode!r}); it "
                "needs a local file system, not a network share: set cache.path elsewhere",
                path=self.path,
            )
        return connection

    def _prepare_schema(self, connection: sqlite3.Connection) -> None:
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                raise CacheError(
                    f"the response cache has format {version}, this batchroute reads format "
                    f"{_SCHEMA_VERSION}; point cache.path elsewhere or delete the file",
                    path=self.path,
                )
            if version == 0:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    connection.execute(
                        # A rowid table with the hash as a unique index: answers are appended
                        # in time order, and only the small index takes random inserts
                        # (several times cheaper to write than the hash as the table's key).
                        "CREATE TABLE IF NOT EXISTS responses (id INTEGER PRIMARY KEY, "
                        "key BLOB NOT NULL UNIQUE, answer TEXT NOT NULL, "
                        "created_at REAL NOT NULL, used_at REAL NOT NULL)"
                    )
                    connection.execute(
                        "CREATE INDEX IF NOT EXISTS responses_used_at ON responses (used_at)"
                    )
                    connection.execute(
                        "CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at)"
                    )
                    connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                    connection.execute("COMMIT")
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from None

    def _unreadable(self, exc: sqlite3.DatabaseError) -> CacheError:
        return CacheError(
            f"the response cache cannot be used ({exc}); delete this file with its -wal and "
            "-shm files to start an empty cache, set cache.path elsewhere, or run with --no-cache",
            path=self.path,
        )

    def _write_loop(self) -> None:
        """The writer thread: drain the queue, commit in batches, maintain now and then."""
        connection = self._connect()
        since_maintenance = 0
        try:
            while True:
                batch = self._next_batch()
                stop = any(entry is None for entry in batch)
                written = self._commit(connection, batch)
                since_maintenance += written
                if since_maintenance >= _MAINTAIN_EVERY_WRITES:
                    self._maintain(connection)
                    since_maintenance = 0
                for entry in batch:
                    if isinstance(entry, threading.Event):
                        entry.set()
                if stop:
                    return
        finally:
            connection.close()

    def _next_batch(self) -> list[Any]:
        """What the queue holds: up to `_BATCH_WRITES` entries gathered for `_LINGER_S`.

        Lingering makes a steady trickle of answers one transaction every quarter second, not
        one per answer; a flush or close (an Event or None) ends the wait at once.
        """
        batch: list[Any] = [self._queue.get()]
        deadline = time.monotonic() + _LINGER_S
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while len(batch) < _BATCH_WRITES and isinstance(batch[-1], tuple):
            try:
                batch.append(get_nowait())
                continue
            except queue.Empty:
                timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                batch.append(get(timeout=timeout))
            except queue.Empty:
                break
        return batch

    def _commit(self, connection: sqlite3.Connection, batch: list[Any]) -> int:
        now = self._clock()
        rows: list[tuple[bytes, str, float, float]] = []
        touched: list[tuple[float, bytes]] = []
        for entry in batch:
            if isinstance(entry, tuple):
                if entry[0] == "touch":
                    touched.extend((now, key) for key in entry[1])
                else:
                    key, answer = entry
                    rows.append((key, _encode(answer), now, now))
        if not rows and not touched:
            return 0
        for attempt in range(3):
            try:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    connection.executemany(
                        "INSERT OR REPLACE INTO responses (key, answer, created_at, used_at) "
                        "VALUES (?, ?, ?, ?)",
                        rows,
                    )
                    connection.executemany(
                        "UPDATE responses SET used_at = ? WHERE key = ?", touched
                    )
                    connection.execute("COMMIT")
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                # Busy past busy_timeout (another process holds a long write): try again, then
                # give up on this batch. A lost write costs a request later, never a wrong answer.
                if attempt == 2:
                    self.write_errors += len(rows)
                    logger.warning(
                        "response cache %s: %d answers not stored (%s)", self.path, len(rows), exc
                    )
                    return 0
                continue
            self.writes += len(rows)
            self.commits += 1
            return len(rows)
        return 0

    def _maintain(self, connection: sqlite3.Connection) -> None:
        """Drop expired answers, then the least recently used until under the size bound."""
        if not self.write:
            return
        try:
            connection.execute(
                "DELETE FROM responses WHERE created_at < ?", (self._clock() - self.ttl_s,)
            )
            used = _used_bytes(connection)
            if used <= self.max_size_bytes:
                return
            target = int(self.max_size_bytes * _EVICT_TO)
            for _ in range(_EVICT_ROUNDS):
                if used <= target:
                    break
                count = connection.execute("SELECT count(*) FROM responses").fetchone()[0]
                if count == 0:
                    break
                # Free the share of rows that brings the store to the target, oldest use first.
                victims = max(1, int(count * (used - target) / used) + 1)
                self.evicted += connection.execute(
                    "DELETE FROM responses WHERE id IN "
                    "(SELECT id FROM responses ORDER BY used_at LIMIT ?)",
                    (victims,),
                ).rowcount
                used = _used_bytes(connection)
        except sqlite3.OperationalError as exc:
            logger.warning("response cache %s: maintenance skipped (%s)", self.path, exc)
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from None


def _used_bytes(connection: sqlite3.Connection) -> int:
    """The bytes in the file's pages in use; free pages are reused for new answers first."""
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    free = connection.execute("PRAGMA freelist_count").fetchone()[0]
    size = connection.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def _encode(answer: CachedAnswer) -> str:
    # Spelled out rather than dataclasses.asdict, which deep-copies and costs several times more.
    fields = {
        "content": answer.content,
        "finish_reason": answer.finish_reason,
        "model": answer.model,
        "input_tokens": answer.input_tokens,
        "output_tokens": answer.output_tokens,
        "cached_tokens": answer.cached_tokens,
        "reasoning_tokens": answer.reasoning_tokens,
        "created": answer.created,
    }
    return _COMPACT.encode(fields)


def _decode(text: str) -> CachedAnswer | None:
    """An answer from its JSON; None (a miss) if the row is not one this version can read."""
    try:
        return CachedAnswer(**json.loads(text))
    except (ValueError, TypeError):
        return None
