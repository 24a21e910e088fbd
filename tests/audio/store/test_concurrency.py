"""Many writers at once, writers cancelled or skipped, a disk too slow to keep up."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from musicbot.audio.store import Outcome, ProcessedSongStore, SongWriter, open_store
from musicbot.audio.store import files as store_files
from musicbot.audio.store.files import song_name
from musicbot.audio.store.oggwrite import OggOpusWriter
from musicbot.audio.store.writer import Filing, WriterLimits, open_writer


def songs_in(store: ProcessedSongStore) -> list[str]:
    return sorted(os.listdir(store.songs_dir))


async def test_a_cancelled_writer_leaves_no_file(
    autojump_clock: trio.testing.MockClock, store_dir: Path, tone_packets: list[bytes]
) -> None:
    async with open_store(store_dir) as store:
        with trio.CancelScope() as skip:
            async with store.writer("skipped") as writer:
                for index, packet in enumerate(tone_packets):
                    await trio.sleep(0.020)
                    writer.add(packet)
                    if index == 300:  # past a few flushed chunks
                        assert any(name.endswith(".part") for name in songs_in(store))
                        skip.cancel(reason="/skip")
        assert skip.cancelled_caught
        assert (writer.outcome, writer.reason) == (
            Outcome.ABANDONED,
            "left before the whole song was written",
        )
        assert songs_in(store) == []

        with trio.CancelScope() as stop:
            async with store.writer("stopped at the end") as writer:
                for packet in tone_packets:
                    writer.add(packet)
                stop.cancel(reason="/stop")
                await writer.commit()  # cancelled at its first checkpoint
        assert stop.cancelled_caught and writer.outcome is Outcome.ABANDONED
        assert songs_in(store) == []

        async with store.writer("failed upstream") as writer:  # e.g. ffmpeg died
            writer.add(tone_packets[0])
        statistics = store.statistics()
        assert (statistics.writes_abandoned, statistics.entries, statistics.writing) == (3, 0, 0)
        assert songs_in(store) == []


async def test_a_cancelled_commit_is_all_or_nothing(
    store_dir: Path, tone_packets: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancel a commit after each of its worker-thread calls in turn: every time, the song is
    either filed (file and row, counted as committed) or not at all, and no temporary file is
    left."""
    real_run_sync = trio.to_thread.run_sync
    cancel_after = [0]
    scope = trio.CancelScope()

    async def run_sync_then_cancel(*args: Any, **kwargs: Any) -> Any:
        result = await real_run_sync(*args, **kwargs)
        cancel_after[0] -= 1
        if cancel_after[0] == 0:
            scope.cancel(reason="a skip at the worst moment")
        return result

    outcomes = []
    async with open_store(store_dir, max_bytes=200_000) as store:
        monkeypatch.setattr(trio.to_thread, "run_sync", run_sync_then_cancel)
        for calls in range(1, 12):
            key = f"song-{calls}"
            with trio.CancelScope() as scope:
                async with store.writer(key) as writer:
                    for packet in tone_packets[:200]:
                        writer.add(packet)
                    await trio.testing.wait_all_tasks_blocked()  # chunks flushed
                    cancel_after[0] = calls
                    await writer.commit()
            cancel_after[0] = 0
            outcomes.append(writer.outcome)
            filed = await store.lookup(key)
            if writer.outcome is Outcome.COMMITTED:
                assert filed is not None and await store.verify(key)
            else:
                assert writer.outcome is Outcome.ABANDONED and filed is None
            on_disk = songs_in(store)
            assert (song_name(key) in on_disk) == (filed is not None)
            assert not [name for name in on_disk if name.endswith(".part")]
        statistics = store.statistics()
        assert statistics.writes_committed == outcomes.count(Outcome.COMMITTED)
        assert statistics.writes_abandoned == outcomes.count(Outcome.ABANDONED)
        assert statistics.entries == len(on_disk)
    # The early cancels abandon the song, the late ones (eviction) find it filed already.
    assert outcomes[0] is Outcome.ABANDONED and outcomes[-1] is Outcome.COMMITTED


async def test_many_writers_at_once(
    autojump_clock: trio.testing.MockClock, store_dir: Path, tone_packets: list[bytes]
) -> None:
    """Twenty songs written at once, every fourth skipped before its end."""
    songs = {f"song-{n:02}": tone_packets[n * 20 : n * 20 + 100] for n in range(20)}
    committed = {}

    async def play(store: ProcessedSongStore, key: str, packets: list[bytes]) -> None:
        async with store.writer(key, title=key) as writer:
            for index, packet in enumerate(packets):
                await trio.sleep(0.020)
                writer.add(packet)
                if int(key[-2:]) % 4 == 3 and index == 50:
                    return  # skipped
            committed[key] = await writer.commit()

    async with open_store(store_dir) as store:
        async with trio.open_nursery() as players:
            for key, packets in songs.items():
                players.start_soon(play, store, key, packets)
            await trio.testing.wait_all_tasks_blocked()
            assert store.statistics().writing == 20
        assert len(committed) == 15 and all(song is not None for song in committed.values())
        for key, song in committed.items():
            assert song is not None
            async with store.open_stored(song) as frames:
                assert [packet async for packet in frames] == songs[key]
        statistics = store.statistics()
        assert (statistics.writes_committed, statistics.writes_abandoned) == (15, 5)
        assert statistics.entries == 15
        assert statistics.bytes == sum(song.size for song in committed.values() if song)
        assert songs_in(store) == sorted(song_name(key) for key in committed)
        report = await store.verify_all()
        assert (report.checked, report.corrupt) == (15, ())


async def test_a_disk_too_slow_to_keep_up_is_given_up_on(
    tmp_path: Path, tone_packets: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer never waits for the disk: when too much waits for it, it stops writing."""
    stuck = threading.Event()
    write_all = store_files.write_all

    def slow_write(fd: int, data: bytes) -> None:
        stuck.wait()
        write_all(fd, data)

    monkeypatch.setattr(store_files, "write_all", slow_write)
    reports: list[tuple[str, Outcome, str]] = []

    async def publish(*_: object) -> object:
        raise AssertionError("nothing to publish")  # pragma: no cover

    async def after_commit(key: str) -> None:
        raise AssertionError("nothing to commit")  # pragma: no cover

    filing = Filing(
        WriterLimits(max_seconds=600, max_bytes=2**30, max_backlog=100_000),
        trio.CapacityLimiter(1),
        publish,  # type: ignore[arg-type]
        lambda key, outcome, reason, error: reports.append((key, outcome, reason)),
        after_commit,
    )
    writer = SongWriter("slow", ogg=OggOpusWriter(), filing=filing)
    try:
        async with open_writer(writer, tmp_path, "slow.part"):
            for packet in tone_packets:
                writer.add(packet)
                await trio.lowlevel.checkpoint()  # the flusher gets to run: its write hangs
                if not writer.active:
                    break
            assert 64 * 1024 + writer.packets * 400 > 100_000
            stuck.set()
    finally:
        stuck.set()
    assert reports == [("slow", Outcome.FAILED, reports[0][2])]
    assert "the disk is too slow" in reports[0][2]
    assert os.listdir(tmp_path) == []
