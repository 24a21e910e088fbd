"""Stateful property test: LRUCache against a plain reference model, with time moving on."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from musicbot.core.cache import LRUCache

KEYS = st.sampled_from("abcdefg")
TTL = 10.0


class ReferenceCache:
    """The specification, written the slow and obvious way: a list in recency order."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.items: list[tuple[str, int, float]] = []  # (key, value, expires_at), LRU first
        self.set_order: list[str] = []  # keys in the order of their last set: expiry order
        self.hits = self.misses = self.evictions = self.expirations = 0

    def _find(self, key: str) -> int | None:
        return next((i for i, item in enumerate(self.items) if item[0] == key), None)

    def get(self, key: str, now: float) -> int | None:
        i = self._find(key)
        if i is None:
            self.misses += 1
            return None
        k, value, expires_at = self.items.pop(i)
        if now >= expires_at:
            self._forget(k)
            self.misses += 1
            self.expirations += 1
            return None
        self.items.append((k, value, expires_at))
        self.hits += 1
        return value

    def set(self, key: str, value: int, now: float) -> None:
        i = self._find(key)
        if i is not None:
            self.items.pop(i)
        self.items.append((key, value, now + TTL))
        self._forget(key)
        self.set_order.append(key)
        while len(self.items) > self.max_size:
            # Of entries that expire at the same moment, the one set first goes first.
            soonest = self._find(self.set_order[0])
            assert soonest is not None
            if self.items[soonest][2] <= now:
                self._forget(self.items.pop(soonest)[0])
                self.expirations += 1
            else:
                self._forget(self.items.pop(0)[0])
                self.evictions += 1

    def _forget(self, key: str) -> None:
        if key in self.set_order:
            self.set_order.remove(key)

    def pop(self, key: str, now: float) -> int | None:
        i = self._find(key)
        if i is None:
            return None
        _, value, expires_at = self.items.pop(i)
        self._forget(key)
        if now >= expires_at:
            self.expirations += 1
            return None
        return value

    def contains(self, key: str, now: float) -> bool:
        i = self._find(key)
        return i is not None and now < self.items[i][2]

    def purge(self, now: float) -> int:
        before = len(self.items)
        self.items = [item for item in self.items if item[2] > now]
        self.set_order = [k for k in self.set_order if self._find(k) is not None]
        removed = before - len(self.items)
        self.expirations += removed
        return removed


class CacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.model: ReferenceCache | None = None
        self.cache: LRUCache[str, int] | None = None

    @precondition(lambda self: self.cache is None)
    @rule(max_size=st.integers(min_value=1, max_value=5))
    def create(self, max_size: int) -> None:
        self.model = ReferenceCache(max_size)
        self.cache = LRUCache(max_size=max_size, ttl=TTL, clock=lambda: self.now)

    @precondition(lambda self: self.cache is not None)
    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 3.0, 9.99, 10.0, 25.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: self.cache is not None)
    @rule(key=KEYS, value=st.integers())
    def set(self, key: str, value: int) -> None:
        assert self.cache is not None and self.model is not None
        self.cache.set(key, value)
        self.model.set(key, value, self.now)

    @precondition(lambda self: self.cache is not None)
    @rule(key=KEYS)
    def get(self, key: str) -> None:
        assert self.cache is not None and self.model is not None
        assert self.cache.get(key) == self.model.get(key, self.now)

    @precondition(lambda self: self.cache is not None)
    @rule(key=KEYS)
    def pop(self, key: str) -> None:
        assert self.cache is not None and self.model is not None
        assert self.cache.pop(key) == self.model.pop(key, self.now)

    @precondition(lambda self: self.cache is not None)
    @rule(key=KEYS)
    def contains(self, key: str) -> None:
        assert self.cache is not None and self.model is not None
        assert (key in self.cache) == self.model.contains(key, self.now)

    @precondition(lambda self: self.cache is not None)
    @rule()
    def purge(self) -> None:
        assert self.cache is not None and self.model is not None
        assert self.cache.purge_expired() == self.model.purge(self.now)

    @invariant()
    def statistics_agree(self) -> None:
        if self.cache is None or self.model is None:
            return
        stats = self.cache.statistics()
        model = self.model
        assert stats.size == len(self.cache) == len(model.items)
        assert stats.size <= stats.max_size
        assert (stats.hits, stats.misses, stats.evictions, stats.expirations) == (
            model.hits,
            model.misses,
            model.evictions,
            model.expirations,
        )


CacheMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
TestCacheAgainstModel = CacheMachine.TestCase
