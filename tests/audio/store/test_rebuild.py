"""Rebuilding a damaged index from the song files: each file's tags (`read_comments`), the row
it stands for (`song_from_file`), and the swap of the fresh index for the damaged one
(`replace_index`)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import struct
import zlib
from pathlib import Path

import pytest

from musicbot.audio.ogg import OggError
from musicbot.audio.store import open_store
from musicbot.audio.store.files import song_name
from musicbot.audio.store.index import SongIndex
from musicbot.audio.store.oggcheck import MAX_HEADER_BYTES, read_comments
from musicbot.audio.store.oggwrite import (
    OggOpusWriter,
    build_page,
    lacing_values,
    opus_head,
    opus_tags,
)
from musicbot.audio.store.rebuild import replace_index, song_from_file
from musicbot.audio.store.values import RebuildReport, StoredSong


def ogg_bytes(packets: list[bytes], tags: list[tuple[str, str]], *, serial: int = 7) -> bytes:
    writer = OggOpusWriter(serial=serial, tags=tags)
    return b"".join(writer.add(packet) for packet in packets) + writer.finish()


def stored_file(
    songs_dir: Path, key: str, packets: list[bytes], *, title: str = "A song", name: str = ""
) -> Path:
    """A file as the store writes it: tagged with its key, named after it (or `name`)."""
    songs_dir.mkdir(parents=True, exist_ok=True)
    path = songs_dir / (name or song_name(key))
    tags = [("TITLE", title), ("MUSICBOT_KEY", key)] if title else [("MUSICBOT_KEY", key)]
    path.write_bytes(ogg_bytes(packets, tags, serial=zlib.crc32(key.encode())))
    return path


def header_pages(*packets: bytes) -> bytes:
    """Each packet alone on a page (the first flagged beginning-of-stream)."""
    return b"".join(
        build_page(
            flags=0x02 if sequence == 0 else 0,
            granule=0,
            serial=7,
            sequence=sequence,
            lacing=lacing_values(len(packet)),
            body=packet,
        )
        for sequence, packet in enumerate(packets)
    )


# --- read_comments -------------------------------------------------------------------------------


def test_comments_are_read_by_upper_cased_name(tmp_path: Path, tone_packets: list[bytes]) -> None:
    path = tmp_path / "song.opus"
    tags = [("title", "Ünïcode = fine"), ("MUSICBOT_KEY", "Youtube:abc"), ("Empty", "")]
    path.write_bytes(ogg_bytes(tone_packets[:20], tags))
    assert read_comments(path) == {
        "TITLE": "Ünïcode = fine",  # only the first '=' separates
        "MUSICBOT_KEY": "Youtube:abc",
        "EMPTY": "",
    }


def test_tags_over_several_pages_and_chunks_are_read(
    tmp_path: Path, tone_packets: list[bytes]
) -> None:
    """A title of 200 KB: OpusTags continues over many pages, past the first 64 KiB read."""
    title = "la " * 70_000
    path = tmp_path / "long.opus"
    path.write_bytes(ogg_bytes(tone_packets[:5], [("TITLE", title), ("MUSICBOT_KEY", "k")]))
    assert read_comments(path) == {"TITLE": title, "MUSICBOT_KEY": "k"}


def test_headers_past_the_limit_are_refused(tmp_path: Path, tone_packets: list[bytes]) -> None:
    path = tmp_path / "huge.opus"
    title = "x" * MAX_HEADER_BYTES
    path.write_bytes(ogg_bytes(tone_packets[:5], [("TITLE", title), ("MUSICBOT_KEY", "k")]))
    with pytest.raises(OggError, match="no OpusTags packet at the start"):
        read_comments(path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "no OpusTags packet"),
        (os.urandom(4096), "not an Ogg page"),
        (header_pages(opus_head()), "no OpusTags packet"),  # cut after OpusHead
        (header_pages(opus_head(), b"NotTags!" + bytes(20)), "does not start with OpusHead"),
        (header_pages(opus_tags(), opus_head()), "does not start with OpusHead"),
        (header_pages(opus_head(), b"OpusTags" + struct.pack("<I", 1000)), "malformed"),
        (
            header_pages(opus_head(), b"OpusTags" + struct.pack("<I", 0) + struct.pack("<I", 3)),
            "malformed",
        ),
        (header_pages(opus_head(), opus_tags(tags=[("T", "x")])[:-1] + b"\xff"), "malformed"),
    ],
    ids=[
        "empty",
        "noise",
        "cut-after-head",
        "not-tags",
        "tags-first",
        "vendor-too-long",
        "comments-missing",
        "not-utf8",
    ],
)
def test_files_without_proper_headers_are_refused(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "bad.opus"
    path.write_bytes(content)
    with pytest.raises(OggError, match=problem):
        read_comments(path)


def test_a_damaged_header_page_is_refused(tmp_path: Path, tone_packets: list[bytes]) -> None:
    path = tmp_path / "song.opus"
    data = bytearray(ogg_bytes(tone_packets[:5], [("TITLE", "t"), ("MUSICBOT_KEY", "k")]))
    data[data.index(b"musicbot")] ^= 0x20  # in the OpusTags page: its CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(OggError, match="CRC"):
        read_comments(path)


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_comments(tmp_path / "nothing.opus")


# --- song_from_file ------------------------------------------------------------------------------


def test_a_stored_file_gives_back_its_row(tmp_path: Path, tone_packets: list[bytes]) -> None:
    path = stored_file(tmp_path / "songs", "Youtube:abc", tone_packets, title="Tone")
    os.utime(path, (1_700_000_000, 1_700_000_000))
    data = path.read_bytes()
    assert song_from_file(path) == StoredSong(
        key="Youtube:abc",
        path=path,
        title="Tone",
        duration=len(tone_packets) * 0.020,  # ffmpeg's 20 ms packets
        size=len(data),
        packets=len(tone_packets),
        created=1_700_000_000.0,
        last_played=1_700_000_000.0,
        play_count=1,
        checksum=hashlib.sha256(data).hexdigest(),
    )
    untitled = stored_file(tmp_path / "songs", "no-title", tone_packets[:10], title="")
    song = song_from_file(untitled)
    assert song is not None and (song.key, song.title) == ("no-title", "")


def test_files_that_are_not_the_song_they_say_give_nothing(
    tmp_path: Path, tone_packets: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    songs = tmp_path / "songs"
    renamed = stored_file(songs, "song-a", tone_packets[:50], name=song_name("song-b"))
    untagged = songs / song_name("untagged")
    untagged.write_bytes(ogg_bytes(tone_packets[:50], [("TITLE", "no key")]))
    truncated = stored_file(songs, "truncated", tone_packets[:50])
    os.truncate(truncated, truncated.stat().st_size - 10)
    noise = songs / song_name("noise")
    noise.write_bytes(os.urandom(2000))
    for path in (renamed, untagged, truncated, noise, songs / song_name("missing")):
        assert song_from_file(path) is None, path
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert "does not hold the song its tags name ('song-a')" in warned
    assert "cannot be indexed again: truncated" in warned


# --- replace_index -------------------------------------------------------------------------------


def row(songs_dir: Path, key: str, size: int = 100) -> StoredSong:
    return StoredSong(
        key=key,
        path=songs_dir / song_name(key),
        title=key,
        duration=1.0,
        size=size,
        packets=50,
        created=1.0,
        last_played=1.0,
        play_count=1,
        checksum="ab" * 32,
    )


def test_a_damaged_index_is_set_aside_and_replaced(tmp_path: Path) -> None:
    index_path, songs = tmp_path / "index.sqlite3", tmp_path / "songs"
    noise = os.urandom(8192)
    index_path.write_bytes(noise)
    (tmp_path / "index.sqlite3-wal").write_bytes(b"the damaged index's journal")
    (tmp_path / "index.sqlite3-shm").write_bytes(b"its shared memory")
    # A rebuild cut short before, and the damaged copy of an earlier one.
    (tmp_path / "index.sqlite3.rebuilt").write_bytes(b"half a rebuild")
    (tmp_path / "index.sqlite3.rebuilt-wal").write_bytes(b"its journal")
    (tmp_path / "index.sqlite3.damaged").write_bytes(b"an older damage")

    rows = [row(songs, "a"), row(songs, "b", size=50)]
    fresh, aside = replace_index(index_path, songs, rows, None)
    try:
        assert fresh.songs() == rows
        assert fresh.totals() == (2, 150)
    finally:
        fresh.close()
    assert aside == tmp_path / "index.sqlite3.damaged"
    assert aside.read_bytes() == noise
    assert (tmp_path / "index.sqlite3.damaged-wal").read_bytes() == b"the damaged index's journal"
    left = sorted(path.name for path in tmp_path.iterdir())
    assert left == ["index.sqlite3", "index.sqlite3.damaged", "index.sqlite3.damaged-wal"]
    reopened = SongIndex.open(index_path, songs)
    try:
        assert reopened.songs() == rows  # a proper index, as written
    finally:
        reopened.close()


def test_an_open_damaged_index_is_closed_first(tmp_path: Path) -> None:
    index_path, songs = tmp_path / "index.sqlite3", tmp_path / "songs"
    damaged = SongIndex.open(index_path, songs)
    damaged.put(row(songs, "stale"))
    fresh, aside = replace_index(index_path, songs, [row(songs, "kept")], damaged)
    try:
        assert [song.key for song in fresh.songs()] == ["kept"]
        with pytest.raises(sqlite3.ProgrammingError):  # closed
            damaged.songs()
    finally:
        fresh.close()
    assert aside is not None and aside.exists()


def test_without_an_index_there_is_nothing_to_set_aside(tmp_path: Path) -> None:
    index_path, songs = tmp_path / "index.sqlite3", tmp_path / "songs"
    fresh, aside = replace_index(index_path, songs, [], None)
    try:
        assert (fresh.totals(), aside) == ((0, 0), None)
    finally:
        fresh.close()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["index.sqlite3"]


# --- the store's rebuild at open -----------------------------------------------------------------


async def test_opening_a_store_with_a_damaged_index_rebuilds_it(
    store_dir: Path, tone_packets: list[bytes]
) -> None:
    async with open_store(store_dir) as store:
        for key in ("song-a", "song-b"):
            async with store.writer(key, title=key.upper()) as writer:
                for packet in tone_packets[:100]:
                    writer.add(packet)
                assert await writer.commit() is not None
        await store.mark_played("song-a")
        await store.put_resolved("query", [1])
    songs = store_dir / "songs"
    (songs / song_name("junk")).write_bytes(b"not a song at all")
    (store_dir / "index.sqlite3").write_bytes(os.urandom(4096))

    async with open_store(store_dir) as store:
        assert store.rebuilt == RebuildReport(
            songs=2, unreadable=1, damaged_copy=store_dir / "index.sqlite3.damaged"
        )
        statistics = store.statistics()
        assert (statistics.index_rebuilds, statistics.index_damaged, statistics.entries) == (
            1,
            False,
            2,
        )
        song = await store.lookup("song-a")
        # What the files say is kept; play counts and resolved queries were the index's.
        assert song is not None and (song.title, song.play_count) == ("SONG-A", 1)
        assert await store.get_resolved("query") is None
        assert await store.verify("song-b")
        assert sorted(os.listdir(songs)) == sorted([song_name("song-a"), song_name("song-b")])
    async with open_store(store_dir) as store:  # the rebuilt index is a proper one
        assert store.rebuilt is None and store.statistics().entries == 2
