"""LRUCache: a size-bounded, time-to-live cache with O(1) get and set, and its statistics.

Every entry lives `ttl` seconds from its last `set`. Because the TTL is the same for all entries,
the order entries were last set in is also the order they expire in; a second ordered dict keeps
that order, so `purge_expired` touches only expired entries and `set` can reclaim an expired slot
before it evicts a live one.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar, overload

import attrs

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")


@attrs.frozen
class CacheStatistics:
    size: int
    max_size: int
    ttl: float
    hits: int
    misses: int
    evictions: int
    """Live entries dropped to make room (least recently used first)."""
    expirations: int
    """Entries dropped because their time-to-live ran out."""

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class LRUCache(Generic[K, V]):
    """Least-recently-used eviction past `max_size`, expiry `ttl` seconds after each `set`.

    `clock` returns seconds; inside Trio pass `trio.current_time` so tests run on virtual time.
    An expired entry is never returned: a lookup that finds one counts a miss and an expiration.
    `len()` counts stored entries, which may include expired ones until they are looked up,
    reclaimed by `set`, or removed by `purge_expired()`.
    """

    __slots__ = (
        "_by_expiry",
        "_clock",
        "_entries",
        "_evictions",
        "_expirations",
        "_hits",
        "_misses",
        "max_size",
        "ttl",
    )

    def __init__(
        self,
        max_size: int = 100,
        ttl: float = 1800.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, not {max_size}")
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, not {ttl}")
        self.max_size = max_size
        self.ttl = ttl
        self._clock = clock
        # key -> (value, expires_at), least recently used first.
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()
        # key -> None, soonest to expire first (the order of their last `set`).
        self._by_expiry: OrderedDict[K, None] = OrderedDict()
        self._hits = self._misses = self._evictions = self._expirations = 0

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...
    def get(self, key: K, default: object = None) -> object:
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return default
        value, expires_at = entry
        if self._clock() >= expires_at:
            self._remove(key)
            self._expirations += 1
            self._misses += 1
            return default
        self._entries.move_to_end(key)
        self._hits += 1
        return value

    def set(self, key: K, value: V) -> None:
        entries = self._entries
        by_expiry = self._by_expiry
        now = self._clock()
        entries[key] = (value, now + self.ttl)
        entries.move_to_end(key)
        by_expiry[key] = None
        by_expiry.move_to_end(key)
        while len(entries) > self.max_size:
            soonest = next(iter(by_expiry))
            if entries[soonest][1] <= now:
                self._remove(soonest)
                self._expirations += 1
            else:
                oldest, _ = entries.popitem(last=False)
                del by_expiry[oldest]
                self._evictions += 1

    @overload
    def pop(self, key: K) -> V | None: ...
    @overload
    def pop(self, key: K, default: D) -> V | D: ...
    def pop(self, key: K, default: object = None) -> object:
        """Remove `key` and return its value; `default` if absent or expired (counted as expiry)."""
        entry = self._entries.get(key)
        if entry is None:
            return default
        self._remove(key)
        value, expires_at = entry
        if self._clock() >= expires_at:
            self._expirations += 1
            return default
        return value

    def __contains__(self, key: object) -> bool:
        """Whether `key` has a live entry. Does not count as a lookup nor refresh recency."""
        entry = self._entries.get(key)  # type: ignore[arg-type]
        return entry is not None and self._clock() < entry[1]

    def __len__(self) -> int:
        return len(self._entries)

    def purge_expired(self) -> int:
        """Remove every expired entry; returns how many were removed."""
        now = self._clock()
        entries = self._entries
        by_expiry = self._by_expiry
        removed = 0
        while by_expiry:
            soonest = next(iter(by_expiry))
            if entries[soonest][1] > now:
                break
            self._remove(soonest)
            removed += 1
        self._expirations += removed
        return removed

    def clear(self) -> None:
        self._entries.clear()
        self._by_expiry.clear()

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(
            size=len(self._entries),
            max_size=self.max_size,
            ttl=self.ttl,
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            expirations=self._expirations,
        )

    def _remove(self, key: K) -> None:
        del self._entries[key]
        del self._by_expiry[key]
