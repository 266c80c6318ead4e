"""The cache's SQLite file: how it is opened, its one table, and its upkeep (age and size).

Every connection is in WAL mode with a busy timeout, so any number of processes share the file:
readers never wait for a writer, and writers wait their turn for up to `BUSY_TIMEOUT_MS`.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from batchroute.errors import CacheError

__all__ = ["BUSY_TIMEOUT_MS", "connect", "evict", "prepare", "unreadable", "used_bytes"]

BUSY_TIMEOUT_MS = 10_000
_SCHEMA_VERSION = 1
_EVICT_ROUNDS = 8
"""Eviction deletes by row count and checks the pages freed; a few rounds reach the target."""
_EVICT_TO = 0.9
"""Eviction frees space down to this share of the bound, so it does not run on every write."""


def unreadable(path: Path, exc: sqlite3.Error) -> CacheError:
    """The error for a file SQLite cannot use, saying what the user can do about it."""
    return CacheError(
        f"the response cache cannot be used ({exc}); delete this file with its -wal and "
        "-shm files to start an empty cache, set cache.path elsewhere, or run with --no-cache",
        path=path,
    )


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode, autocommit (transactions are explicit and short)."""
    try:
        connection = sqlite3.connect(
            path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,  # the cache guards its reader with a lock
        )
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = _enter_wal(connection)
        connection.execute("PRAGMA synchronous = NORMAL")
        # The hash index takes random inserts and lookups: keep its pages in memory, read the
        # file through mmap, and checkpoint less often so a page rewritten by several batches
        # is copied back once (bench_cache.py: about half the CPU per write).
        connection.execute("PRAGMA cache_size = -32768")
        connection.execute("PRAGMA mmap_size = 1073741824")
        connection.execute("PRAGMA wal_autocheckpoint = 10000")
    except sqlite3.DatabaseError as exc:
        raise unreadable(path, exc) from None
    if mode != "wal":
        connection.close()
        raise CacheError(
            f"SQLite could not put the response cache in WAL mode (got {mode!r}); it needs a "
            "local file system, not a network share: set cache.path elsewhere",
            path=path,
        )
    return connection


def _enter_wal(connection: sqlite3.Connection) -> str:
    """Switch to WAL, waiting out another process doing the same to a new file.

    Changing the journal mode takes the file alone, and SQLite may answer "database is locked"
    at once, without its busy handler, while another connection holds it: retry until the
    busy timeout, as every other statement here waits.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode: str = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            return mode
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def prepare(connection: sqlite3.Connection, path: Path) -> None:
    """Create the table in a new file; refuse a file of another format."""
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):
            raise CacheError(
                f"the response cache has format {version}, this batchroute reads format "
                f"{_SCHEMA_VERSION}; point cache.path elsewhere or delete the file",
                path=path,
            )
        if version == 0:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute(
                    # A rowid table with the hash as a unique index: answers are appended in
                    # time order, and only the small index takes random inserts (several times
                    # cheaper to write than the hash as the table's own key).
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
        raise unreadable(path, exc) from None


def evict(
    connection: sqlite3.Connection, *, created_before: float, max_size_bytes: int
) -> tuple[int, int]:
    """Drop answers stored before `created_before`, then the least recently used until the
    pages in use are under 90% of `max_size_bytes`; (expired, evicted) counts.

    Only pages-in-use are read to decide (O(1)); the deletes use the time indexes.
    """
    expired = connection.execute(
        "DELETE FROM responses WHERE created_at < ?", (created_before,)
    ).rowcount
    evicted = 0
    used = used_bytes(connection)
    if used <= max_size_bytes:
        return expired, evicted
    target = int(max_size_bytes * _EVICT_TO)
    for _ in range(_EVICT_ROUNDS):
        if used <= target:
            break
        count = connection.execute("SELECT count(*) FROM responses").fetchone()[0]
        if count == 0:
            break
        # Free the share of rows that brings the store to the target, oldest use first.
        victims = max(1, int(count * (used - target) / used) + 1)
        evicted += connection.execute(
            "DELETE FROM responses WHERE id IN (SELECT id FROM responses ORDER BY used_at LIMIT ?)",
            (victims,),
        ).rowcount
        used = used_bytes(connection)
    return expired, evicted


def used_bytes(connection: sqlite3.Connection) -> int:
    """The bytes in the file's pages in use; free pages are reused for new answers first."""
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    free = connection.execute("PRAGMA freelist_count").fetchone()[0]
    size = connection.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)
