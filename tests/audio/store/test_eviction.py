"""Eviction: past max_bytes, the least recently played songs go; never the one just written,
never one being read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from musicbot.audio.store import StoredSong, StoredSongError, open_store

StoreSong = Callable[..., Awaitable[StoredSong]]


async def song_size(tmp_path: Path, packets: list[bytes], store_song: StoreSong) -> int:
    """The size of a stored song with a key of 6 characters (every key in these tests)."""
    async with open_store(tmp_path / "probe") as probe:
        return (await store_song(probe, "song-x", packets)).size


async def test_the_least_recently_played_song_goes_first(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    tone_packets: list[bytes],
    store_song: StoreSong,
) -> None:
    packets = tone_packets[:100]
    size = await song_size(tmp_path, packets, store_song)
    store_dir = tmp_path / "store"
    async with open_store(
        store_dir, max_bytes=3 * size + size // 2, clock=trio.current_time
    ) as store:
        for key in ("song-a", "song-b", "song-c"):
            await store_song(store, key, packets)
            await trio.sleep(10)
        assert await store.mark_played("song-a")  # now b is the least recently played
        await trio.sleep(10)
        await store_song(store, "song-d", packets)
        statistics = store.statistics()
        assert (statistics.entries, statistics.bytes, statistics.evictions) == (3, 3 * size, 1)
        assert await store.lookup("song-b") is None
        for key in ("song-a", "song-c", "song-d"):
            assert await store.lookup(key) is not None
        assert len(list((store_dir / "songs").iterdir())) == 3

        await store_song(store, "song-e", packets)  # then c (played at 20), not a (at 30)
        assert await store.lookup("song-c") is None
        assert await store.lookup("song-a") is not None
        assert store.statistics().evictions == 2


async def test_the_song_just_written_and_songs_being_read_are_kept(
    tmp_path: Path, tone_packets: list[bytes], store_song: StoreSong
) -> None:
    packets = tone_packets[:100]
    size = await song_size(tmp_path, packets, store_song)
    now = [1000.0]  # a wall clock that an administrator may set back
    async with open_store(
        tmp_path / "store", max_bytes=2 * size + size // 2, clock=lambda: now[0]
    ) as store:
        first = await store_song(store, "song-a", packets)
        await store_song(store, "song-b", packets)
        now[0] = 500.0  # song-c is written "before" the others were played...
        async with store.open_stored(first) as frames:  # ...while song-a is being read
            await store_song(store, "song-c", packets)
            # song-c is the least recently played, song-a is open: song-b goes.
            assert await store.lookup("song-b") is None
            assert [packet async for packet in frames] == packets
        assert await store.lookup("song-a") is not None
        assert await store.lookup("song-c") is not None
        assert store.statistics().evictions == 1

        # With only songs being read left to evict, the store stays over max_bytes for now.
        song_c = await store.lookup("song-c")
        assert song_c is not None
        async with store.open_stored(first), store.open_stored(song_c):
            await store_song(store, "song-d", packets)
            statistics = store.statistics()
            assert (statistics.entries, statistics.evictions) == (3, 1)
            assert statistics.bytes > statistics.max_bytes
        await store_song(store, "song-e", packets)  # the next commit catches up
        statistics = store.statistics()
        assert (statistics.entries, statistics.evictions) == (2, 3)


async def test_a_smaller_budget_evicts_at_open(
    tmp_path: Path, tone_packets: list[bytes], store_song: StoreSong
) -> None:
    packets = tone_packets[:100]
    now = [0.0]
    async with open_store(tmp_path / "store", clock=lambda: now[0]) as store:
        for key in ("song-a", "song-b", "song-c"):
            now[0] += 1
            size = (await store_song(store, key, packets)).size
    async with open_store(tmp_path / "store", max_bytes=size) as store:
        statistics = store.statistics()
        assert (statistics.entries, statistics.bytes, statistics.evictions) == (1, size, 2)
        assert await store.lookup("song-c") is not None


async def test_a_song_held_for_ffmpeg_is_neither_evicted_nor_dropped(
    tmp_path: Path, tone_packets: list[bytes], store_song: StoreSong
) -> None:
    """`holding` (ffmpeg reads the file by its name, for a seek or a volume) keeps the file as
    reading it does; a song being deleted, or gone, cannot be held."""
    packets = tone_packets[:100]
    size = await song_size(tmp_path, packets, store_song)
    async with open_store(tmp_path / "store", max_bytes=size + size // 2) as store:
        first = await store_song(store, "song-a", packets)
        async with store.holding(first):
            assert store.statistics().reading == 1
            assert not await store.drop("song-a")
            await store_song(store, "song-b", packets)  # over budget: song-a is held
            assert await store.lookup("song-a") is not None
            assert first.path.exists()
        assert store.statistics().reading == 0
        assert await store.drop("song-a")
        with pytest.raises(StoredSongError, match="fetched again"):
            async with store.holding(first):
                pass  # pragma: no cover
