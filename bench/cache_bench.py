"""cache: LRUCache's get/set mix against cachetools.TTLCache and functools.lru_cache."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from typing import Any

import cachetools

from musicbot.core.cache import LRUCache


def _mix(operations: int, keys: int, seed: int = 7) -> list[str]:
    generator = random.Random(seed)
    return [f"query-{generator.randrange(keys)}" for _ in range(operations)]


def _ops_per_second(
    get: Callable[[str], Any], put: Callable[[str, int], None], keys: list[str]
) -> float:
    started = time.perf_counter()
    for value, key in enumerate(keys):
        if get(key) is None:
            put(key, value)
    return len(keys) / (time.perf_counter() - started)


def _lru_cache_rate(keys: list[str], max_size: int) -> float:
    @functools.lru_cache(maxsize=max_size)
    def lookup(key: str) -> str:
        return key

    started = time.perf_counter()
    for key in keys:
        lookup(key)
    return len(keys) / (time.perf_counter() - started)


def run(quick: bool) -> dict[str, Any]:
    operations = 200_000 if quick else 1_000_000
    keys = _mix(operations, keys=2_000)
    rounds = 3 if quick else 5
    best: dict[str, float] = {
        "musicbot.LRUCache": 0.0,
        "cachetools.TTLCache": 0.0,
        "functools.lru_cache": 0.0,
    }
    for _ in range(rounds):
        ours: LRUCache[str, int] = LRUCache(max_size=1_000, ttl=1800, clock=time.monotonic)
        theirs: cachetools.TTLCache[str, int] = cachetools.TTLCache(maxsize=1_000, ttl=1800)
        best["musicbot.LRUCache"] = max(
            best["musicbot.LRUCache"], _ops_per_second(ours.get, ours.set, keys)
        )
        best["cachetools.TTLCache"] = max(
            best["cachetools.TTLCache"], _ops_per_second(theirs.get, theirs.__setitem__, keys)
        )
        best["functools.lru_cache"] = max(best["functools.lru_cache"], _lru_cache_rate(keys, 1_000))
    return {
        "operations": operations,
        "distinct_keys": 2_000,
        "max_size": 1_000,
        "ops_per_second": best,
        "ratio_vs_cachetools_ttlcache": best["musicbot.LRUCache"] / best["cachetools.TTLCache"],
        "goal": "not slower than cachetools.TTLCache (ratio >= 1)",
        "met": best["musicbot.LRUCache"] >= best["cachetools.TTLCache"],
    }
