"""The response cache: answers already paid for, kept across runs and jobs in one SQLite file.

A request is looked up by `request_key` (`keys.py`), a hash of the canonical JSON of the request
actually sent: the endpoint's configured base URL and the whole chat-completions body. Only
complete answers are stored (`answers.py`: `put` refuses a truncated or filtered one). The file
(`file.py`) is the stdlib `sqlite3` in WAL mode holding JSON, never pickles, shared safely by
concurrent runs and bounded by age and size. `ResponseCache` (`store.py`) is what a run uses.
"""

from batchroute.cache.answers import CACHEABLE_FINISH_REASONS, CachedAnswer
from batchroute.cache.keys import request_key
from batchroute.cache.store import ResponseCache, cache_settings, default_cache_path

__all__ = [
    "CACHEABLE_FINISH_REASONS",
    "CachedAnswer",
    "ResponseCache",
    "cache_settings",
    "default_cache_path",
    "request_key",
]
