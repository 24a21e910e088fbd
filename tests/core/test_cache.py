import pytest

from musicbot.core.cache import LRUCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_get_returns_what_was_set_and_counts_hits_and_misses(clock: FakeClock) -> None:
    cache: LRUCache[str, int] = LRUCache(max_size=2, ttl=10, clock=clock)
    cache.set("a", 1)
    assert cache.get("a") == 1
    assert cache.get("b") is None
    assert cache.get("b", -1) == -1
    stats = cache.statistics()
    assert (stats.hits, stats.misses, stats.size, stats.max_size) == (1, 2, 1, 2)
    assert stats.hit_rate == pytest.approx(1 / 3)


def test_hit_rate_is_zero_before_any_lookup() -> None:
    assert LRUCache[str, int]().statistics().hit_rate == 0.0


def test_least_recently_used_entry_is_evicted(clock: FakeClock) -> None:
    cache: LRUCache[str, int] = LRUCache(max_size=2, ttl=10, clock=clock)
    cache.set("a", 1)
    cache.set("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.set("c", 3)
    assert "b" not in cache
    assert cache.get("a") == 1
    assert cache.get("c") == 3
    assert cache.statistics().evictions == 1


def test_set_of_an_existing_key_refreshes_it_without_evicting(clock: FakeClock) -> None:
    cache: LRUCache[str, int] = LRUCache(max_size=2, ttl=10, clock=clock)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.set("a", 10)
    cache.set("c", 3)
    assert cache.get("a") == 10
    assert "b" not in cache
    assert len(cache) == 2


def test_expired_entry_is_never_returned_and_counts_as_miss_and_expiration(
    clock: FakeClock,
) -> None:
    cache: LRUCache[str, int] = LRUCache(max_size=4, ttl=10, clock=clock)
    cache.set("a", 1)
    clock.now = 9.999
    assert cache.get("a") == 1
    clock.now = 10.0
    assert cache.get("a") is None
    stats = cache.statistics()
    assert (stats.hits, stats.misses, stats.expirations, stats.size) == (1, 1, 1, 0)


def test_set_restarts_the_time_to_live(clock: FakeClock) -> None:
    cache: LRUCache[str, int] = LRUCache(max_size=4, ttl=10, clock=clock)
    cache.set("a", 1)
    clock.now = 8
    cache.set("a", 2)
    clock.now = 15
    assert cache.get("a") == 2


def test_get_does_not_extend_the_time_to_live(clock: FakeClock) -> None:
    cache: LRUCache[str, int] = LRUCache(max_size=4, ttl=10, clock=clock)
    cache.set("a", 1)
    clock.now = 9
    assert cache.get("a") == 1
    clock.now = 11
    assert cache.get("a") is None


def test_purge_expired_removes_only_expired_entries(clock: FakeClock) -> None:
    cache: LRUCache[str, int] = LRUCache(max_size=10, ttl=10, clock=clock)
    cache.set("a", 1)
    clock.now = 5
    cache.set("b", 2)
    cache.set("c", 3)
    clock.now = 12
    assert cache.purge_expired() == 1
    assert len(cache) == 2
    assert cache.statistics().expirations == 1
    clock.now = 100
    assert cache.purge_expired() == 2
    assert len(cache) == 0


def test_set_at_capacity_reclaims_an_expired_entry_before_evicting_a_live_one(
    clock: FakeClock,
) -> None:
    cache: LRUCache[str, int] = LRUCache(max_size=2, ttl=10, clock=clock)
    cache.set("old", 1)
    clock.now = 5
    cache.set("live", 2)
    assert cache.get("old") == 1  # "live" is least recently used, but "old" expires first
    clock.now = 11
    cache.set("new", 3)
    assert cache.get("live") == 2
    stats = cache.statistics()
    assert (stats.evictions, stats.expirations) == (0, 1)


def test_pop_removes_and_returns(clock: FakeClock) -> None:
    cache: LRUCache[str, int] = LRUCache(max_size=2, ttl=10, clock=clock)
    cache.set("a", 1)
    assert cache.pop("a") == 1
    assert cache.pop("a") is None
    assert cache.pop("a", 0) == 0
    cache.set("b", 2)
    clock.now = 10
    assert cache.pop("b", -1) == -1
    assert cache.statistics().expirations == 1
    assert len(cache) == 0


def test_contains_neither_counts_nor_refreshes(clock: FakeClock) -> None:
    cache: LRUCache[str, int] = LRUCache(max_size=2, ttl=10, clock=clock)
    cache.set("a", 1)
    cache.set("b", 2)
    assert "a" in cache
    cache.set("c", 3)  # "a" stayed least recently used
    assert "a" not in cache
    stats = cache.statistics()
    assert (stats.hits, stats.misses) == (0, 0)
    clock.now = 10
    assert "b" not in cache


def test_clear_empties_the_cache(clock: FakeClock) -> None:
    cache: LRUCache[str, int] = LRUCache(max_size=2, ttl=10, clock=clock)
    cache.set("a", 1)
    cache.clear()
    assert len(cache) == 0
    assert cache.purge_expired() == 0


@pytest.mark.parametrize(("max_size", "ttl"), [(0, 10.0), (-1, 10.0), (1, 0.0), (1, -5.0)])
def test_rejects_nonsense_limits(max_size: int, ttl: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        LRUCache(max_size=max_size, ttl=ttl)


async def test_runs_on_trio_virtual_time(autojump_clock: object) -> None:
    import trio

    cache: LRUCache[str, int] = LRUCache(max_size=2, ttl=1800, clock=trio.current_time)
    cache.set("a", 1)
    await trio.sleep(1799)
    assert cache.get("a") == 1
    await trio.sleep(1)
    assert cache.get("a") is None
