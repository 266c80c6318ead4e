"""The response cache itself: lookups, a writer thread, and the file's upkeep.

Lookups are synchronous and cheap enough to make inline on the event loop (`get`, or `get_many`
for a batch; `benchmarks/bench_cache.py`), and `aget_many` moves a batch to a worker thread.
`put` only queues: one writer thread per process commits what is queued in batched `INSERT OR
REPLACE` transactions. Age and size are enforced when the cache opens, every 10,000 answers
stored, and when it closes, never on a lookup.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio

from batchroute.cache.answers import CachedAnswer, decode_answer, encode_answer
from batchroute.cache.file import connect, evict, prepare, unreadable
from batchroute.config import CacheConfig
from batchroute.errors import CacheError

__all__ = ["ResponseCache", "cache_settings", "default_cache_path"]

logger = logging.getLogger("batchroute.cache")

_TOUCH_AFTER_S = 3600.0
"""A hit refreshes its last-use time only when that is older than this: hits are not writes."""
_MAINTAIN_EVERY_WRITES = 10_000
_BATCH_WRITES = 10_000
_LINGER_S = 0.25
_SELECT_ONE = "SELECT answer, created_at, used_at FROM responses WHERE key = ?"
_LOOKUP_CHUNK = 500
"""Keys per `SELECT ... IN (...)`: under SQLite's host-parameter limit on every build."""


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
    `await cache.aopen()` and `await cache.aclose()`). `get`/`get_many` read at once; `put`
    queues the answer for the writer thread, which commits in batches; `flush` waits until
    everything queued is committed.
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
        self._urgent = threading.Event()
        """Set by `flush` and `close`: the writer stops lingering and commits at once."""
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

    @property
    def stats(self) -> dict[str, int]:
        """The counts a run reports (run.json, the summary): hits, misses, writes and so on."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "writes": self.writes,
            "refused": self.refused,
            "evicted": self.evicted,
            "write_errors": self.write_errors,
        }

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
        self._reader = connect(self.path)
        prepare(self._reader, self.path)
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
            self._urgent.set()
            self._writer.join()
            self._writer = None
        with self._lock:
            reader, self._reader = self._reader, None
        if self.write:
            self._maintain(reader)
        reader.close()

    async def aopen(self) -> None:
        """`open` off the event loop: it may drop expired answers and evict."""
        await anyio.to_thread.run_sync(self.open)

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
                raise unreadable(self.path, exc) from None
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
                raise unreadable(self.path, exc) from None
            return [self._settle(key, found.get(key), now) for key in keys]

    def _settle(
        self, key: bytes, row: tuple[str, float, float] | None, now: float
    ) -> CachedAnswer | None:
        """A looked-up row as an answer (None if absent, expired or unreadable), counted.

        Called under `_lock`, so lookups from worker threads (`aget_many`) count correctly.
        """
        answer = None
        if row is not None and now - row[1] < self.ttl_s:
            answer = decode_answer(row[0])
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
        self._urgent.set()
        while not done.wait(1.0):
            if not self._writer.is_alive():
                raise CacheError("the response cache's writer stopped", path=self.path)

    def _queue_touches(self) -> None:
        with self._lock:
            if self._touch:
                self._queue.put(("touch", self._touch))
                self._touch = []

    def _require_open(self) -> sqlite3.Connection:
        if self._reader is None:
            raise RuntimeError("the response cache is not open; use it in a `with` block")
        return self._reader

    def _write_loop(self) -> None:
        """The writer thread: drain the queue, commit in batches, maintain now and then."""
        connection = connect(self.path)
        since_maintenance = 0
        try:
            while True:
                batch = self._next_batch()
                stop = any(entry is None for entry in batch)
                written = self._commit(connection, batch)
                since_maintenance += written
                if since_maintenance >= _MAINTAIN_EVERY_WRITES:
                    try:
                        self._maintain(connection)
                    except CacheError as exc:
                        # The writer must live on, or flush() would wait forever; the next
                        # open reports a damaged file to the user.
                        logger.warning("response cache: upkeep failed: %s", exc)
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
        one per answer; a flush or close (an Event or None) ends the wait at once. The writer
        sleeps through the linger instead of waiting on the queue, so a `put` on the event
        loop never wakes it: one thread switch per transaction, not one per answer (that
        wake-up cost about 12 us of CPU per answer, a sixtieth of a run's; issue 15).
        """
        batch: list[Any] = [self._queue.get()]
        if isinstance(batch[0], tuple):
            self._urgent.wait(_LINGER_S)
        self._urgent.clear()  # whatever set it queued its entry before: the drain below sees it
        get_nowait = self._queue.get_nowait
        while len(batch) < _BATCH_WRITES and isinstance(batch[-1], tuple):
            try:
                batch.append(get_nowait())
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
                    rows.append((key, encode_answer(answer), now, now))
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
            except sqlite3.Error as exc:
                # Busy past busy_timeout (another process holds a long write): try again, then
                # give up on this batch. A lost write costs a request later, never a wrong answer.
                if attempt == 2 or not isinstance(exc, sqlite3.OperationalError):
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
            _, evicted = evict(
                connection,
                created_before=self._clock() - self.ttl_s,
                max_size_bytes=self.max_size_bytes,
            )
        except sqlite3.OperationalError as exc:
            logger.warning("response cache %s: upkeep skipped (%s)", self.path, exc)
            return
        except sqlite3.DatabaseError as exc:
            raise unreadable(self.path, exc) from None
        self.evicted += evicted
