"""PersistedResolver: what queries resolved to, kept in the song store's index, so that after a
restart a fresh answer is reused instead of running yt-dlp again.

It sits behind the supervisor's in-memory LRU+TTL cache, which it only serves on a miss there;
an answer older than `max_age` (stream links expire) is resolved again.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import attrs

from musicbot.core.messages import Resolved, Track
from musicbot.core.ports import Resolver

log = logging.getLogger(__name__)


class ResolvedStore(Protocol):
    """The part of ProcessedSongStore this needs."""

    async def put_resolved(self, query: str, data: object) -> None: ...
    async def get_resolved(self, query: str, *, max_age: float | None = None) -> Any: ...


def to_json(resolved: Resolved) -> dict[str, Any]:
    return {
        "tracks": [attrs.asdict(track) for track in resolved.tracks],
        "left_out": resolved.left_out,
    }


def from_json(data: Any) -> Resolved | None:
    """Back from what `to_json` wrote; None for anything else (an older format, damage)."""
    try:
        tracks = tuple(Track(**track) for track in data["tracks"])
        return Resolved(tracks, int(data["left_out"]))
    except (KeyError, TypeError, ValueError):
        return None


class PersistedResolver:
    def __init__(self, resolver: Resolver, store: ResolvedStore, *, max_age: float) -> None:
        self._resolver = resolver
        self._store = store
        self._max_age = max_age
        self.reused = 0

    async def resolve(self, query: str) -> Resolved:
        entry = await self._store.get_resolved(query, max_age=self._max_age)
        if entry is not None:
            resolved = from_json(entry.data)
            if resolved is not None:
                self.reused += 1
                return resolved
        resolved = await self._resolver.resolve(query)
        await self._store.put_resolved(query, to_json(resolved))
        return resolved
