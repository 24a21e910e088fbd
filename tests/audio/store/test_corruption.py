"""Damaged files are found (on reading, on lookup, by verify) and dropped, to be fetched again."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio

from musicbot.audio.store import StoredSong, StoredSongError, StoredStream, open_store
from musicbot.audio.store.oggcheck import PageChecker
from musicbot.core.ports import SourceError

StoreSong = Callable[..., Awaitable[StoredSong]]


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


async def read_into(read: list[bytes], opening: AbstractAsyncContextManager[StoredStream]) -> None:
    async with opening as frames:
        async for packet in frames:
            read.append(packet)


def last_page_start(path: Path) -> int:
    return path.read_bytes().rindex(b"OggS")


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda path: flip(path, 40), "CRC"),  # in OpusHead
        (lambda path: flip(path, path.stat().st_size // 2), "CRC"),  # audio, mid-way
        (lambda path: flip(path, 0), "not an Ogg page"),  # the capture pattern
        (lambda path: os.truncate(path, path.stat().st_size - 100), "ends inside a page"),
        (lambda path: os.truncate(path, last_page_start(path)), "no end-of-stream page"),
    ],
    ids=["header", "audio", "capture-pattern", "cut-in-a-page", "cut-at-a-page"],
)
async def test_reading_a_damaged_file_raises_and_the_entry_is_dropped(
    store_dir: Path,
    tone_packets: list[bytes],
    store_song: StoreSong,
    damage: Callable[[Path], None],
    problem: str,
) -> None:
    async with open_store(store_dir) as store:
        song = await store_song(store, "tone", tone_packets)
        damage(song.path)
        read: list[bytes] = []
        with pytest.raises(StoredSongError) as caught:
            await read_into(read, store.open_stored(song))
        error = caught.value
        assert isinstance(error, SourceError)  # a player that knows no store copes
        assert (error.key, problem in error.reason) == ("tone", True), error.reason
        assert "fetched again" in str(error)  # what the user reads
        assert read == tone_packets[: len(read)]  # what came before the damage was right
        assert store.statistics().reading == 0

        assert await store.drop("tone")
        assert not song.path.exists()
        assert await store.lookup("tone") is None
        statistics = store.statistics()
        assert (statistics.entries, statistics.bytes, statistics.corrupt_dropped) == (0, 0, 1)
        assert not await store.drop("tone")  # once


async def test_a_lookup_drops_what_a_reader_found_damaged(
    store_dir: Path, tone_packets: list[bytes], store_song: StoreSong
) -> None:
    async with open_store(store_dir) as store:
        song = await store_song(store, "tone", tone_packets)
        flip(song.path, song.size - 10)
        with pytest.raises(StoredSongError):
            await read_into([], store.open_stored(song))
        assert await store.lookup("tone") is None  # the caller never dropped it: lookup does
        statistics = store.statistics()
        assert (statistics.entries, statistics.corrupt_dropped, statistics.misses) == (0, 1, 1)


async def test_a_cheap_lookup_catches_missing_and_resized_files(
    store_dir: Path, tone_packets: list[bytes], store_song: StoreSong
) -> None:
    async with open_store(store_dir) as store:
        gone = await store_song(store, "gone", tone_packets[:50])
        cut = await store_song(store, "cut", tone_packets[:50])
        gone.path.unlink()
        os.truncate(cut.path, cut.size - 1)
        with pytest.raises(StoredSongError, match="saved copy") as caught:
            async with store.open_stored(gone):
                pass  # pragma: no cover
        assert "cannot open" in caught.value.reason
        assert await store.lookup("gone") is None
        assert await store.lookup("cut") is None
        assert not cut.path.exists()
        statistics = store.statistics()
        assert (statistics.entries, statistics.corrupt_dropped, statistics.misses) == (0, 2, 2)


async def test_verify_reads_everything_and_drops_what_fails(
    store_dir: Path, tone_packets: list[bytes], store_song: StoreSong
) -> None:
    async with open_store(store_dir) as store:
        songs = [await store_song(store, key, tone_packets[:150]) for key in ("a", "b", "c")]
        flip(songs[1].path, songs[1].size // 2)  # same size: only a full read finds it
        assert await store.lookup("b") is not None
        assert await store.verify("a")
        assert not await store.verify("missing")
        report = await store.verify_all()
        assert (report.checked, report.corrupt) == (3, ("b",))
        assert not songs[1].path.exists()
        statistics = store.statistics()
        assert (statistics.entries, statistics.corrupt_dropped) == (2, 1)
        assert (await store.verify_all()).corrupt == ()


async def test_a_file_replaced_by_other_valid_ogg_fails_verify(
    store_dir: Path, tone_packets: list[bytes], store_song: StoreSong
) -> None:
    """Structure alone is not enough: the checksum ties the file to its row."""
    async with open_store(store_dir) as store:
        song_a = await store_song(store, "song-a", tone_packets[:60])
        song_b = await store_song(store, "song-b", tone_packets[60:120])
        data = song_b.path.read_bytes()
        checker = PageChecker()
        assert checker.feed(data) == data
        await trio.to_thread.run_sync(song_a.path.write_bytes, data)
        assert not await store.verify("song-a")
        assert await store.verify("song-b")
