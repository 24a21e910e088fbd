"""A full disk never reaches the player: the writer gives up quietly, once, and counts it."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from musicbot.audio.ogg import OggError
from musicbot.audio.store import ProcessedSongStore, StoredSong, open_store
from musicbot.audio.store import files as store_files
from musicbot.audio.store import writer as store_writer
from musicbot.audio.store.index import SongIndex
from musicbot.audio.store.oggcheck import FileCheck, check_file

StoreSong = Callable[..., Awaitable[StoredSong]]


async def play_into(store: ProcessedSongStore, key: str, packets: list[bytes]) -> StoredSong | None:
    """What the player does: a packet every 20 ms (virtual time), add, commit at the end."""
    async with store.writer(key, title=key) as writer:
        for packet in packets:
            await trio.sleep(0.020)  # voice.send_frame(packet), on time
            writer.add(packet)
        return await writer.commit()


def songs_in(store: ProcessedSongStore) -> list[str]:
    return sorted(os.listdir(store.songs_dir))


@pytest.fixture
def disk_fills_after(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Make song-file writes fail with ENOSPC once `limit` bytes are written."""

    def install(limit: int) -> None:
        written = [0]
        write_all = store_files.write_all

        def full_disk(fd: int, data: bytes) -> None:
            room = limit - written[0]
            if len(data) > room:
                write_all(fd, data[: max(room, 0)])
                written[0] = limit
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            write_all(fd, data)
            written[0] += len(data)

        monkeypatch.setattr(store_files, "write_all", full_disk)

    return install


async def test_a_full_disk_mid_song_is_quiet_and_counted(
    autojump_clock: trio.testing.MockClock,
    store_dir: Path,
    tone_packets: list[bytes],
    disk_fills_after: Callable[[int], None],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with open_store(store_dir) as store:
        disk_fills_after(100_000)
        with caplog.at_level(logging.DEBUG, logger="musicbot.audio.store"):
            assert await play_into(store, "first", tone_packets) is None  # no exception
            assert await play_into(store, "second", tone_packets) is None
        statistics = store.statistics()
        assert (statistics.write_failures, statistics.disk_full) == (2, True)
        assert (statistics.writes_committed, statistics.writes_abandoned) == (0, 0)
        assert (statistics.entries, statistics.writing) == (0, 0)
        assert songs_in(store) == []  # the partial files are gone: the space is back
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "No space left on device" in warnings[0].getMessage()

        monkeypatch.undo()  # space was freed
        assert await play_into(store, "third", tone_packets) is not None
        statistics = store.statistics()
        assert (statistics.writes_committed, statistics.disk_full) == (1, False)


async def test_a_quota_hit_at_fsync_is_a_failure_too(
    store_dir: Path, tone_packets: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    def over_quota(fd: int) -> None:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    async with open_store(store_dir) as store:
        monkeypatch.setattr(os, "fsync", over_quota)
        async with store.writer("song") as writer:
            for packet in tone_packets:
                writer.add(packet)
            assert await writer.commit() is None
        assert "quota" in writer.reason.lower()
        statistics = store.statistics()
        assert (statistics.write_failures, statistics.disk_full, statistics.entries) == (1, True, 0)
        assert songs_in(store) == []


async def test_other_os_errors_are_failures_but_not_a_full_disk(
    store_dir: Path, tone_packets: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    def cannot_create(path: Path) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    async with open_store(store_dir) as store:
        monkeypatch.setattr(store_files, "create_exclusive", cannot_create)
        async with store.writer("song") as writer:
            assert not writer.active
            for packet in tone_packets:
                writer.add(packet)
            assert await writer.commit() is None
        statistics = store.statistics()
        assert (statistics.write_failures, statistics.disk_full) == (1, False)


async def test_a_full_index_unfiles_the_song(
    store_dir: Path, tone_packets: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    def database_full(self: SongIndex, song: StoredSong) -> None:
        error = sqlite3.OperationalError("database or disk is full")
        error.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
        raise error

    async with open_store(store_dir) as store:
        monkeypatch.setattr(SongIndex, "put", database_full)
        async with store.writer("song") as writer:
            for packet in tone_packets:
                writer.add(packet)
            assert await writer.commit() is None
        statistics = store.statistics()
        assert (statistics.write_failures, statistics.disk_full, statistics.entries) == (1, True, 0)
        assert songs_in(store) == []  # renamed into place, then removed again


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 160 KiB tmpfs (root only; skipped elsewhere): a really full disk."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


async def test_a_really_full_disk(
    autojump_clock: trio.testing.MockClock,
    tiny_disk: Path,
    tone_packets: list[bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_store(tiny_disk / "store") as store:
        assert await play_into(store, "too-big", tone_packets) is None  # 188 KB into 160 KiB
        assert "No space left on device" in caplog.text
        statistics = store.statistics()
        assert (statistics.write_failures, statistics.disk_full) == (1, True)
        assert songs_in(store) == []
        # The space came back: a short song fits.
        song = await play_into(store, "short", tone_packets[:50])
        assert song is not None and await store.verify("short")
        assert store.statistics().disk_full is False


@pytest.mark.parametrize("fault", ["different bytes", "bad structure"])
async def test_a_file_that_reads_back_wrong_is_not_kept(
    store_dir: Path, tone_packets: list[bytes], monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """A disk that returns other bytes than were written: commit's read-back catches it."""

    def bad_disk(path: Path) -> FileCheck:
        check = check_file(path)
        if fault == "bad structure":
            raise OggError("Ogg page 7 is corrupt")
        return attrs.evolve(check, sha256="0" * 64)

    monkeypatch.setattr(store_writer, "check_file", bad_disk)
    async with open_store(store_dir) as store:
        async with store.writer("song") as writer:
            for packet in tone_packets:
                writer.add(packet)
            assert await writer.commit() is None
        assert "not what was written" in writer.reason
        statistics = store.statistics()
        assert (statistics.write_failures, statistics.disk_full, statistics.entries) == (
            1,
            False,
            0,
        )
        assert songs_in(store) == []
