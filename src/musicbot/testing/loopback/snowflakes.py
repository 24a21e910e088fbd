"""Snowflake ids as Discord makes them: milliseconds since the Discord epoch, shifted by 22.

Each id gets its own millisecond, so ids always grow and consecutive guilds land on different
shards (`(guild_id >> 22) % shard_count`), as guilds created at different times do.
"""

from __future__ import annotations

import time

DISCORD_EPOCH_MS = 1_420_070_400_000


class Snowflakes:
    """Hands out realistic, unique, increasing snowflake ids."""

    def __init__(self, *, worker: int = 1, process: int = 0) -> None:
        self._next_ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        self._low = ((worker & 0x1F) << 17) | ((process & 0x1F) << 12)
        self._increment = 0

    def next(self) -> int:
        ms = self._next_ms
        self._next_ms += 1
        self._increment = (self._increment + 1) & 0xFFF
        return (ms << 22) | self._low | self._increment


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard Discord routes a guild's events to."""
    return (guild_id >> 22) % shard_count
