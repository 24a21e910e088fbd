"""The store's life cycle: write while playing, look up, read back, refuse what is not kept."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from musicbot.audio import FfmpegSource
from musicbot.audio.store import StoredSong, StoreLocked, StoreStatistics, open_store
from musicbot.audio.store.files import song_name
from musicbot.audio.store.oggcheck import check_file
from musicbot.core.messages import Track
from musicbot.testing.analysis import decode_opus, dominant_frequency

StoreSong = Callable[..., Awaitable[StoredSong]]
ReadSong = Callable[..., Awaitable[list[bytes]]]

EMPTY = StoreStatistics(
    entries=0,
    bytes=0,
    max_bytes=2 * 2**30,
    hits=0,
    misses=0,
    writes_committed=0,
    writes_abandoned=0,
    write_failures=0,
    disk_full=False,
    evictions=0,
    corrupt_dropped=0,
    writing=0,
    reading=0,
)


def files_in(store_dir: Path) -> list[str]:
    return sorted(path.name for path in (store_dir / "songs").iterdir())


async def test_a_transcoded_song_round_trips(
    autojump_clock: trio.testing.MockClock,
    store_dir: Path,
    tone_packets: list[bytes],
    store_song: StoreSong,
    read_song: ReadSong,
) -> None:
    async with open_store(store_dir, clock=trio.current_time) as store:
        assert store.statistics() == EMPTY
        assert await store.lookup("tone") is None
        await trio.sleep(100)
        song = await store_song(store, "tone", tone_packets, title="Four forty")
        assert (song.key, song.title, song.packets, song.play_count) == (
            "tone",
            "Four forty",
            len(tone_packets),
            1,
        )
        assert song.duration == pytest.approx(len(tone_packets) * 0.020)
        assert song.created == song.last_played == 100
        assert song.path.parent == store_dir / "songs"
        assert song.size == song.path.stat().st_size
        check = await trio.to_thread.run_sync(check_file, song.path)
        assert (check.sha256, check.packets, check.pre_skip) == (song.checksum, song.packets, 312)

        assert await store.lookup("tone") == song
        async with store.open_stored(song) as frames:
            assert store.statistics().reading == 1
            back = [frame async for frame in frames]
        assert back == tone_packets
        pcm = decode_opus(back)
        assert dominant_frequency(pcm) == pytest.approx(440, abs=1)

        await trio.sleep(50)
        assert await store.mark_played("tone")
        assert await store.verify("tone")
        assert store.statistics() == attrs.evolve(
            EMPTY, entries=1, bytes=song.size, hits=1, misses=1, writes_committed=1
        )
    async with open_store(store_dir, clock=trio.current_time) as store:  # it lasts
        again = await store.lookup("tone")
        assert again is not None and (again.last_played, again.play_count) == (150, 2)
        assert await read_song(store, again) == tone_packets


async def test_the_first_play_through_ffmpeg_fills_the_store(
    store_dir: Path, tone_file: Path, read_song: ReadSong
) -> None:
    """The way the player uses it: send each packet from ffmpeg, add it, commit at the end;
    the next play reads the same packets from disk, with no ffmpeg."""
    track = Track("Tone", str(tone_file), page_url="https://Example.com/tone#here")
    source = FfmpegSource()
    async with open_store(store_dir) as store:
        key = store.key_for(track)
        assert key == "https://example.com/tone"
        assert await store.lookup(key) is None
        sent = []
        async with (
            source.open(track) as frames,
            store.writer(key, title=track.title, duration=track.duration) as writer,
        ):
            async for packet in frames:
                sent.append(packet)  # voice.send_frame(packet)
                writer.add(packet)
            song = await writer.commit()
        assert song is not None and song.packets == len(sent) > 400

        found = await store.lookup(key)
        assert found == song
        assert await read_song(store, found) == sent


async def test_reading_starts_where_asked(
    store_dir: Path, tone_packets: list[bytes], store_song: StoreSong, read_song: ReadSong
) -> None:
    async with open_store(store_dir) as store:
        song = await store_song(store, "tone", tone_packets)
        assert await read_song(store, song, start=2.0) == tone_packets[100:]
        assert await read_song(store, song, start=2.01) == tone_packets[100:]  # inside packet 100
        assert await read_song(store, song, start=60.0) == []
        with pytest.raises(ValueError, match="start"):
            await read_song(store, song, start=-1.0)


async def test_writers_refuse_what_is_not_kept(
    store_dir: Path, tone_packets: list[bytes], store_song: StoreSong
) -> None:
    async with open_store(store_dir, max_track_seconds=600) as store:
        assert store.key_for(Track("Radio", "https://radio.example/live", live=True)) is None
        assert store.key_for(Track("Long", "https://example.com/a", duration=601)) is None
        assert store.key_for(Track("Fine", "https://example.com/a", duration=600)) is not None

        await store_song(store, "stored", tone_packets[:10])
        async with (
            store.writer(None) as no_key,
            store.writer("long", duration=601.0) as too_long,
            store.writer("stored") as already,
            store.writer("busy") as first,
            store.writer("busy") as second,
        ):
            assert first.active
            for refused, reason in [
                (no_key, "no key"),
                (too_long, "longer than 600 s"),
                (already, "already stored"),
                (second, "another writer"),
            ]:
                assert not refused.active
                assert reason in refused.reason
                refused.add(tone_packets[0])  # taken, and dropped
                assert await refused.commit() is None
            assert store.statistics().writing == 1
            assert await first.commit() is None  # nothing added: not kept
        assert first.reason == "no audio"
        statistics = store.statistics()
        assert (statistics.writes_committed, statistics.writes_abandoned) == (1, 1)
        assert statistics.writing == 0
        assert files_in(store_dir) == [song_name("stored")]


async def test_a_song_past_the_limits_is_given_up_on_the_way(
    store_dir: Path, tone_packets: list[bytes]
) -> None:
    async with open_store(store_dir, max_track_seconds=2.0) as store:
        async with store.writer("long") as writer:  # duration unknown until it runs
            for packet in tone_packets:
                writer.add(packet)
                if not writer.active:
                    break
            assert writer.packets == 101  # 2.02 s > 2 s
            assert writer.reason == "longer than 2 s"
            with trio.fail_after(5):  # its file goes now, not when the song ends
                while files_in(store_dir):  # noqa: ASYNC110 (a file system has no events)
                    await trio.sleep(0.001)
            writer.add(packet)  # taken, and dropped
            assert await writer.commit() is None
        assert store.statistics().writes_abandoned == 1
    async with open_store(store_dir, max_bytes=30_000) as store:
        async with store.writer("big") as writer:
            for packet in tone_packets[:100]:
                writer.add(packet)
            assert not writer.active and "bigger than the store" in writer.reason
        statistics = store.statistics()
        assert (statistics.writes_abandoned, statistics.entries) == (1, 0)
        assert files_in(store_dir) == []


async def test_a_song_cut_short_of_its_announced_duration_is_not_kept(
    store_dir: Path, tone_packets: list[bytes]
) -> None:
    """ffmpeg may end normally on a download cut short; the announced duration catches it."""
    async with open_store(store_dir) as store:
        async with store.writer("cut", duration=10.0) as writer:
            for packet in tone_packets[:350]:  # 7 s of 10
                writer.add(packet)
            assert await writer.commit() is None
        assert writer.reason == "cut short: 7.00 s of the 10 s the source announced"
        async with store.writer("whole", duration=10.0) as writer:  # 10.02 s
            for packet in tone_packets:
                writer.add(packet)
            assert await writer.commit() is not None
        async with store.writer("nearly", duration=11.9) as writer:  # rounding: kept
            for packet in tone_packets:
                writer.add(packet)
            assert await writer.commit() is not None
        statistics = store.statistics()
        assert (statistics.writes_abandoned, statistics.writes_committed) == (1, 2)
        assert files_in(store_dir) == sorted([song_name("whole"), song_name("nearly")])


async def test_misuse_of_a_writer_raises(store_dir: Path, tone_packets: list[bytes]) -> None:
    async with open_store(store_dir) as store:
        async with store.writer("k") as writer:
            writer.add(tone_packets[0])
            assert await writer.commit() is not None
            with pytest.raises(RuntimeError, match="closed"):
                writer.add(tone_packets[1])
            with pytest.raises(RuntimeError, match="closed"):
                await writer.commit()
        with pytest.raises(RuntimeError, match="closed"):
            writer.add(tone_packets[1])


async def test_the_store_is_shared_except_with_who_needs_it_to_itself(store_dir: Path) -> None:
    """Two opens share the store (flocks on separate descriptors exclude each other within a
    process as across processes; test_shared_store.py does it with processes)."""
    async with open_store(store_dir), open_store(store_dir):
        with pytest.raises(StoreLocked, match="stop the musicbot processes using it first"):
            async with open_store(store_dir, exclusive=True):
                pass  # pragma: no cover
    async with open_store(store_dir, exclusive=True):  # released on close
        with pytest.raises(StoreLocked, match=r"to itself .* try again once it is done"):
            async with open_store(store_dir):
                pass  # pragma: no cover
    async with open_store(store_dir), open_store(store_dir):
        pass


async def test_resolved_metadata_outlives_a_restart(
    autojump_clock: trio.testing.MockClock, store_dir: Path
) -> None:
    answer = {"tracks": [{"title": "Ünï", "url": "https://example.com/a"}], "left_out": 0}
    async with open_store(store_dir, clock=trio.current_time) as store:
        await store.put_resolved("never gonna", answer)
        await trio.sleep(100)
        await store.put_resolved("later", [1, 2])
        with pytest.raises(TypeError):
            await store.put_resolved("bad", object())
    async with open_store(store_dir, clock=trio.current_time) as store:
        entry = await store.get_resolved("never gonna")
        assert entry is not None and (entry.data, entry.stored_at) == (answer, 0)
        assert json.dumps(entry.data)  # plain JSON values
        assert await store.get_resolved("never gonna", max_age=99) is None
        assert await store.get_resolved("missing") is None
        assert [e.query for e in await store.all_resolved()] == ["never gonna", "later"]
        assert [e.query for e in await store.all_resolved(max_age=50)] == ["later"]
        assert await store.purge_resolved(max_age=50) == 1
        assert [e.query for e in await store.all_resolved()] == ["later"]


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(sys.platform != "linux", reason="counts descriptors in /proc")
async def test_leaving_a_stored_song_early_releases_it(
    store_dir: Path, tone_packets: list[bytes], store_song: StoreSong
) -> None:
    async with open_store(store_dir) as store:
        song = await store_song(store, "tone", tone_packets)
        before = open_descriptors()
        async with store.open_stored(song) as frames:
            assert open_descriptors() == before + 1
            assert [await frames.__anext__() for _ in range(10)] == tone_packets[:10]
            assert store.statistics().reading == 1
        assert open_descriptors() == before
        assert store.statistics().reading == 0
        with trio.CancelScope() as skip:
            async with store.open_stored(song) as frames:
                async for _ in frames:
                    skip.cancel()
        assert open_descriptors() == before
        assert store.statistics().reading == 0
