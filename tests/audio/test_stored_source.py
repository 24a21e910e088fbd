"""StoreBackedSource: a song is transcoded once; after that it plays from its stored file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import psutil
import pytest
import trio

from musicbot.audio.ffmpeg import FfmpegSource
from musicbot.audio.store import ProcessedSongStore, open_store
from musicbot.audio.stored import StoreBackedSource, open_store_backed_source
from musicbot.core.messages import Track
from musicbot.testing.analysis import decode_opus, dominant_frequency
from musicbot.testing.media import MediaServer, open_media_server


@attrs.define
class Rig:
    media: MediaServer
    store: ProcessedSongStore
    source: StoreBackedSource


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with (
        open_media_server(cache_dir=tmp_path / "tones") as media,
        open_store(tmp_path / "store") as store,
        open_store_backed_source(FfmpegSource(), store) as source,
    ):
        yield Rig(media, store, source)


def tone(media: MediaServer, freq: int = 440, seconds: float = 1.0) -> Track:
    url = media.tone_url(freq, seconds)
    return Track(title=f"{freq} Hz", url=url, key=f"url:{url}", duration=seconds)


def ffmpeg_running() -> int:
    return sum("ffmpeg" in p.name() for p in psutil.Process().children(recursive=True))


async def play(rig: Rig, track: Track, *, start: float = 0.0, volume: int = 100) -> list[bytes]:
    packets = []
    async with rig.source.open(track, start=start, volume=volume) as frames:
        async for packet in frames:
            packets.append(packet)
    return packets


async def settled(rig: Rig) -> None:
    """Wait until background copies have been committed or abandoned."""
    with trio.fail_after(10):
        await rig.source.wait_copies_done()


async def test_a_song_played_to_its_end_is_kept_and_then_plays_without_ffmpeg(rig: Rig) -> None:
    track = tone(rig.media, 440, 1)
    first = await play(rig, track)
    await settled(rig)
    assert rig.store.statistics().writes_committed == 1
    ffmpeg_seen = []
    async with rig.source.open(track) as frames:
        again = []
        async for packet in frames:
            ffmpeg_seen.append(ffmpeg_running())
            again.append(packet)
    assert again == first  # the very packets that were sent the first time
    assert set(ffmpeg_seen) == {0}  # no ffmpeg while playing from the store
    stats = rig.source.statistics()
    assert (stats.transcoded_from_network, stats.played_from_store) == (1, 1)
    assert rig.media.request_count(track.url) == 1
    assert dominant_frequency(decode_opus(again)) == pytest.approx(440, abs=5)


async def test_a_song_left_before_its_end_is_not_kept(rig: Rig) -> None:
    track = tone(rig.media, 550, 2)
    async with rig.source.open(track) as frames:
        async for _ in frames:
            break
    await settled(rig)
    stats = rig.store.statistics()
    assert (stats.entries, stats.writes_committed, stats.writes_abandoned) == (0, 0, 1)
    assert list((rig.store.songs_dir).iterdir()) == []


async def test_volume_and_seek_read_the_stored_file_not_the_network(rig: Rig) -> None:
    track = tone(rig.media, 440, 2)
    await play(rig, track)
    await settled(rig)
    quieter = await play(rig, track, start=1.0, volume=50)
    assert 45 <= len(quieter) <= 55
    assert rig.source.statistics().transcoded_from_store_file == 1
    assert rig.media.request_count(track.url) == 1


async def test_warming_stores_a_song_ahead_so_it_plays_from_the_store(rig: Rig) -> None:
    track = tone(rig.media, 660, 3)
    with trio.fail_after(10):
        await rig.source.warm(track)
    assert rig.source.statistics().warmed == 1
    packets = await play(rig, track)
    assert 148 <= len(packets) <= 153
    assert rig.source.statistics().played_from_store == 1
    await rig.source.warm(track)  # already stored: nothing to do
    assert rig.source.statistics().warmed == 1


async def test_a_damaged_stored_file_is_dropped_and_fetched_again(rig: Rig) -> None:
    track = tone(rig.media, 440, 1)
    await play(rig, track)
    await settled(rig)
    (stored,) = list(rig.store.songs_dir.iterdir())
    stored.write_bytes(stored.read_bytes()[:-100])  # truncated on disk
    again = await play(rig, track)
    assert 48 <= len(again) <= 52
    assert rig.source.statistics().transcoded_from_network == 2  # fetched again
    assert rig.media.request_count(track.url) == 2
    assert rig.store.statistics().corrupt_dropped == 1
    await settled(rig)
    assert rig.store.statistics().entries == 1  # and kept again, whole this time


async def test_live_streams_and_tracks_without_a_key_are_never_kept(rig: Rig) -> None:
    for track in (
        attrs.evolve(tone(rig.media, 300, 1), live=True),
        attrs.evolve(tone(rig.media, 310, 1), key=""),
    ):
        await play(rig, track)
    await settled(rig)
    assert rig.store.statistics().entries == 0


async def test_the_most_played_songs_can_be_checked_at_start(rig: Rig) -> None:
    from musicbot.app import verify_most_played

    tracks = [tone(rig.media, 300 + 100 * i, 1) for i in range(3)]
    for track in tracks:
        await play(rig, track)
    await settled(rig)
    for _ in range(2):
        await play(rig, tracks[0])  # now the most played
    songs = {song.key: song for song in await rig.store.songs()}
    damaged = songs[tracks[0].key].path
    data = bytearray(damaged.read_bytes())
    data[-50] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert await verify_most_played(rig.store, 1) == 1
    assert tracks[0].key not in {song.key for song in await rig.store.songs()}
    assert await verify_most_played(rig.store, 5) == 0


async def test_a_download_cut_short_plays_but_is_not_kept(rig: Rig) -> None:
    url = rig.media.truncated_url(300, 2, keep=0.5)
    track = Track(title="cut", url=url, key=f"url:{url}")  # no duration known, as for links
    packets = await play(rig, track)
    assert 30 <= len(packets) <= 70  # what there was
    await settled(rig)
    with trio.fail_after(10):
        await rig.source.warm(track)
    stats = rig.store.statistics()
    assert (stats.entries, stats.writes_committed) == (0, 0)


async def test_a_full_disk_leaves_playback_whole_and_says_so(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from musicbot.audio.store import files as store_files

    def full_disk(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_files, "write_all", full_disk)
    track = tone(rig.media, 440, 2)
    packets = await play(rig, track)
    assert 98 <= len(packets) <= 103  # every frame reached the player
    await settled(rig)
    stats = rig.store.statistics()
    assert stats.disk_full
    assert (stats.entries, stats.write_failures) == (0, 1)
    assert list(rig.store.songs_dir.iterdir()) == []
