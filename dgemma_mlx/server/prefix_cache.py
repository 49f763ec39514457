"""Encoded prompts kept for the next request that extends them (a chat's next turn, an agent's loop).

A chat client sends the whole conversation every turn; its rendering starts with the previous turn's
prompt, so only the new part needs the encoder (as `ChatSession` does for the REPL). Entries are
batch-1 caches holding exactly their prompt; a hit continues a copy. Continuing a cache gives the same
keys and values as encoding the whole prompt at once (causal attention over masked slots adds exact
zeros; checked in tests/test_serve_frames.py), so a hit changes nothing but time.

Bounded by entry count and bytes, least recently used out first: a long-lived server stays flat.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from ..cache import PromptCache


class PrefixCache:
    def __init__(self, max_entries: int = 16, max_bytes: int = 2 << 30):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], PromptCache] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def lookup(self, ids: Sequence[int]) -> tuple[PromptCache | None, int]:
        """A copy of the longest cached prompt that `ids` starts with, and its length (0: none)."""
        key = tuple(ids)
        with self._lock:
            best = max(
                (k for k in self._entries if len(k) <= len(key) and key[: len(k)] == k),
                key=len,
                default=None,
            )
            if best is None:
                return None, 0
            self._entries.move_to_end(best)
            self.hits += 1
            return self._entries[best].copy(), len(best)

    def store(self, ids: Sequence[int], cache: PromptCache) -> None:
        """Keep `cache` (which must hold exactly `ids`); evict the least recently used past the limits."""
        if self.max_entries <= 0:
            return
        key = tuple(ids)
        with self._lock:
            self._entries[key] = cache.copy()
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries or (
                len(self._entries) > 1 and sum(c.nbytes() for c in self._entries.values()) > self.max_bytes
            ):
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
