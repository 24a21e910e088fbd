"""Several processes sharing one store directory (a bot's shard processes, `musicbot cache
warm` beside a bot): each test drives real, separate Python processes, each with the store open
through `open_store` in a `trio.run` of its own (STORE_PROCESS below), over a line of JSON per
command on its stdin and per answer on its stdout.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from musicbot.audio.store import open_store
from musicbot.audio.store.files import song_name, temp_name
from musicbot.testing.leaks import census, no_leaks_since

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX only")

WAIT = 30.0
"""Seconds any one answer may take, on a loaded machine (they take milliseconds)."""


def song_packets(key: str, count: int) -> list[bytes]:
    """`count` 20 ms Opus packets (TOC 0xFC: CELT, fullband, 20 ms, one frame) of 385 bytes,
    different for every key: the store checks the framing, not the audio."""
    return [
        bytes([0xFC]) + hashlib.sha256(f"{key}/{n}".encode()).digest() * 12 for n in range(count)
    ]


def digest(packets: list[bytes]) -> str:
    return hashlib.sha256(b"".join(packets)).hexdigest()


STORE_PROCESS = (
    textwrap.dedent(
        """
        import hashlib, json, os, sys
        import attrs, trio
        from musicbot.audio.store import StoreLocked, open_store
        from musicbot.audio.store.files import temp_name

        """
    )
    + inspect.getsource(song_packets)
    + inspect.getsource(digest)
    + textwrap.dedent(
        """

        class StoreProcess:
            def __init__(self, nursery):
                self.nursery = nursery
                self.store = None
                self.waiting = {}  # a key -> the event that lets its writer or reader go on
                self.done = {}  # a key -> (an event, what the writer or reader ended with)

            async def do_open(self, directory, **options):
                try:
                    self.store = await self.nursery.start(self.keep_open, directory, options)
                except StoreLocked as exc:
                    return {"error": str(exc)}
                return {"reconciled": attrs.asdict(self.store.reconciled)}

            async def keep_open(self, directory, options, task_status):
                self.closing = trio.Event()
                async with open_store(directory, **options) as store:
                    async with trio.open_nursery() as self.work:
                        task_status.started(store)
                        await self.closing.wait()
                        self.work.cancel_scope.cancel()
                self.closed.set()

            async def do_close(self):
                self.closed = trio.Event()
                self.closing.set()
                await self.closed.wait()
                return {"closed": True}

            async def do_write(self, key, count):
                async with self.store.writer(key, title=key) as writer:
                    for packet in song_packets(key, count):
                        writer.add(packet)
                    song = await writer.commit()
                return {"committed": song is not None, "reason": writer.reason,
                        "size": None if song is None else song.size}

            async def do_begin(self, key, count):
                return await self.work.start(self.writing, key, count)

            async def writing(self, key, count, task_status):
                async with self.store.writer(key, title=key) as writer:
                    if not writer.active:
                        task_status.started({"active": False, "reason": writer.reason})
                        return
                    for packet in song_packets(key, count):
                        writer.add(packet)
                        await trio.sleep(0)
                    part = self.store.songs_dir / temp_name(key)
                    while not part.exists() or part.stat().st_size == 0:
                        await trio.sleep(0.01)  # the flusher's first chunk
                    self.waiting[key] = go_on = trio.Event()
                    self.done[key] = ended, result = trio.Event(), {}
                    task_status.started({"active": True, "part": part.name})
                    await go_on.wait()
                    song = await writer.commit()
                    result.update(committed=song is not None, reason=writer.reason)
                ended.set()

            async def do_hold(self, key):
                return await self.work.start(self.holding, key)

            async def holding(self, key, task_status):
                song = await self.store.lookup(key)
                if song is None:
                    task_status.started({"held": False})
                    return
                async with self.store.open_stored(song) as frames:
                    read = [await frames.__anext__()]
                    self.waiting[key] = go_on = trio.Event()
                    self.done[key] = ended, result = trio.Event(), {}
                    task_status.started({"held": True})
                    await go_on.wait()
                    read += [packet async for packet in frames]
                result.update(packets=len(read), sha256=digest(read))
                ended.set()

            async def do_go_on(self, key):
                self.waiting.pop(key).set()
                ended, result = self.done.pop(key)
                await ended.wait()
                return result

            async def do_read(self, key):
                song = await self.store.lookup(key)
                if song is None:
                    return {"found": False}
                async with self.store.open_stored(song) as frames:
                    read = [packet async for packet in frames]
                return {"found": True, "packets": len(read), "sha256": digest(read)}

            async def do_lookup(self, key):
                return {"found": await self.store.lookup(key) is not None}

            async def do_verify(self, key):
                return {"intact": await self.store.verify(key)}

            async def do_drop(self, key):
                return {"dropped": await self.store.drop(key)}

            async def do_songs(self):
                return {"keys": sorted(song.key for song in await self.store.songs())}

            async def do_stats(self):
                statistics = attrs.asdict(self.store.statistics())
                rebuilt = self.store.rebuilt
                return {**statistics, "fds": len(os.listdir("/proc/self/fd")),
                        "rebuilt": None if rebuilt is None else rebuilt.songs}


        async def main():
            async with trio.open_nursery() as nursery:
                process = StoreProcess(nursery)
                while line := await trio.to_thread.run_sync(sys.stdin.readline):
                    command = json.loads(line)
                    answer = await getattr(process, "do_" + command.pop("do"))(**command)
                    print(json.dumps(answer), flush=True)
                nursery.cancel_scope.cancel()


        trio.run(main)
        """
    )
)


class StoreProcess:
    """A separate Python process running STORE_PROCESS: `await ask("open", directory=...)`."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._received = bytearray()
        self.killed = False

    async def send(self, do: str, **arguments: Any) -> None:
        await self._stdin.send_all(json.dumps({"do": do, **arguments}).encode() + b"\n")

    async def answer(self) -> dict[str, Any]:
        with trio.fail_after(WAIT):
            while b"\n" not in self._received:
                chunk = await self._stdout.receive_some()
                if not chunk:
                    raise AssertionError(f"the store process ended ({await self.process.wait()})")
                self._received += chunk
        line, _, rest = bytes(self._received).partition(b"\n")
        self._received[:] = rest
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def ask(self, do: str, **arguments: Any) -> dict[str, Any]:
        await self.send(do, **arguments)
        return await self.answer()

    async def end(self) -> int:
        """End the process (its stdin closes: it closes its store, if open, and exits)."""
        await self._stdin.aclose()
        with trio.move_on_after(WAIT):
            return await self.process.wait()
        self.process.kill()
        return await self.process.wait()

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        with trio.fail_after(WAIT):
            assert await self.process.wait() == -signal.SIGKILL
        self.killed = True


@asynccontextmanager
async def store_processes(count: int) -> AsyncIterator[list[StoreProcess]]:
    """`count` store processes; at the end each is ended, and must exit cleanly (but for
    those the test killed)."""
    started: list[StoreProcess] = []
    try:
        for _ in range(count):
            process = await trio.lowlevel.open_process(
                [sys.executable, "-c", STORE_PROCESS],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            started.append(StoreProcess(process))
        yield started
        ended = [await process.end() for process in started if not process.killed]
        assert ended == [0] * len(ended)
    finally:
        with trio.CancelScope(shield=True):
            for store_process in started:
                store_process.process.kill()
                await store_process.process.wait()
                await store_process._stdin.aclose()
                await store_process._stdout.aclose()


async def ask_all(processes: list[StoreProcess], do: str, **arguments: Any) -> list[dict[str, Any]]:
    """Send the same command to every process at once, then collect the answers."""
    for process in processes:
        await process.send(do, **arguments)
    return [await process.answer() for process in processes]


def songs_dir_listing(directory: Path) -> tuple[list[str], list[str], list[str]]:
    """(song files, temporary files, key lock files)."""
    names = os.listdir(directory / "songs")
    return (
        sorted(name for name in names if name.endswith(".opus")),
        sorted(name for name in names if name.endswith(".part")),
        sorted(os.listdir(directory / "locks")),
    )


async def song_size(tmp_path: Path, key: str, count: int) -> int:
    """The size of the file of a song of `count` packets with a key as long as `key`."""
    async with open_store(tmp_path / "probe") as probe, probe.writer(key, title=key) as writer:
        for packet in song_packets(key, count):
            writer.add(packet)
        song = await writer.commit()
    assert song is not None
    return song.size


# --- (1) two processes open one store at once ----------------------------------------------------


async def test_two_processes_open_one_store_at_once(tmp_path: Path) -> None:
    """No StoreLocked, even on a directory neither has made yet (both create the index, put it
    in WAL mode and migrate it at once); each sees what the other writes."""
    async with store_processes(3) as (first, second, operator):
        for attempt in range(3):
            directory = str(tmp_path / f"store-{attempt}")
            opened = await ask_all([first, second], "open", directory=directory)
            assert all("reconciled" in answer for answer in opened), opened
            # `musicbot cache clear` needs the store to itself: refused, in words, while shared.
            refused = await operator.ask("open", directory=directory, exclusive=True)
            assert "stop the musicbot processes using it first" in refused["error"]
            assert (await first.ask("write", key="from-first", count=50))["committed"]
            assert (await second.ask("write", key="from-second", count=50))["committed"]
            for process in (first, second):
                keys = await process.ask("songs")
                assert keys == {"keys": ["from-first", "from-second"]}
            await ask_all([first, second], "close")
            # Once they have closed, it has the store to itself, and then nobody else may open.
            assert "error" not in await operator.ask("open", directory=directory, exclusive=True)
            refused = await first.ask("open", directory=directory)
            assert "try again once it is done" in refused["error"]
            assert await operator.ask("close") == {"closed": True}


# --- (2) a song written by one is read whole by the other ----------------------------------------


async def test_a_song_written_by_one_process_is_read_whole_by_another(tmp_path: Path) -> None:
    directory = str(tmp_path / "store")
    async with store_processes(2) as (writer, reader):
        await ask_all([writer, reader], "open", directory=directory)
        assert await reader.ask("read", key="song") == {"found": False}
        assert (await writer.ask("write", key="song", count=500))["committed"]
        read = await reader.ask("read", key="song")
        assert read == {"found": True, "packets": 500, "sha256": digest(song_packets("song", 500))}
        assert await reader.ask("verify", key="song") == {"intact": True}
        # Counters are each process's own; entries and bytes come from the shared index.
        reader_stats = await reader.ask("stats")
        assert (reader_stats["hits"], reader_stats["misses"], reader_stats["writes_committed"]) == (
            1,
            1,
            0,
        )
        assert (await writer.ask("stats"))["writes_committed"] == 1
        await ask_all([writer, reader], "close")


# --- (3) both write the same song at once --------------------------------------------------------


async def test_one_writer_per_song_across_processes(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    async with store_processes(2) as (first, second):
        await ask_all([first, second], "open", directory=str(directory))
        # While one writes the song, the other plays it from the network without copying it.
        assert (await first.ask("begin", key="song", count=300))["active"]
        refused = await second.ask("write", key="song", count=300)
        assert (refused["committed"], refused["reason"]) == (False, "another process is writing it")
        assert await second.ask("lookup", key="song") == {"found": False}  # not half of it
        assert await first.ask("go_on", key="song") == {"committed": True, "reason": "committed"}
        refused = await second.ask("write", key="song", count=300)
        assert (refused["committed"], refused["reason"]) == (False, "already stored")

        # Both at the very same moment, again and again: exactly one keeps each song.
        for race in range(8):
            key = f"race-{race}"
            outcomes = await ask_all([first, second], "write", key=key, count=300)
            assert sorted(outcome["committed"] for outcome in outcomes) == [False, True], outcomes
            (loser,) = [outcome for outcome in outcomes if not outcome["committed"]]
            assert loser["reason"] in {"another process is writing it", "already stored"}
        songs, parts, key_locks = songs_dir_listing(directory)
        keys = ["song", *(f"race-{race}" for race in range(8))]
        assert songs == sorted(song_name(key) for key in keys)
        assert (parts, key_locks) == ([], [])
        for process in (first, second):
            assert await process.ask("songs") == {"keys": sorted(keys)}
            statistics = await process.ask("stats")
            assert statistics["writing"] == 0
        assert (await first.ask("read", key="song"))["sha256"] == digest(song_packets("song", 300))
        await ask_all([first, second], "close")


# --- (4) eviction skips a song another process is reading ----------------------------------------


async def test_eviction_skips_a_song_another_process_is_reading(tmp_path: Path) -> None:
    count = 100
    size = await song_size(tmp_path, "song-x", count)
    directory = str(tmp_path / "store")
    room_for_two = 2 * size + size // 2
    async with store_processes(2) as (evicting, playing):
        await evicting.ask("open", directory=directory, max_bytes=room_for_two)
        await playing.ask("open", directory=directory, max_bytes=room_for_two)
        baseline = (await playing.ask("stats"))["fds"]
        for key in ("song-a", "song-b"):
            assert (await evicting.ask("write", key=key, count=count))["committed"]
        # song-a is the least recently played, but the other process is playing it.
        assert await playing.ask("hold", key="song-a") == {"held": True}
        assert (await evicting.ask("write", key="song-c", count=count))["committed"]
        assert await evicting.ask("songs") == {"keys": ["song-a", "song-c"]}
        statistics = await evicting.ask("stats")
        assert (statistics["evictions"], statistics["entries"], statistics["bytes"]) == (
            1,
            2,
            2 * size,
        )
        whole = {"packets": count, "sha256": digest(song_packets("song-a", count))}
        assert await playing.ask("go_on", key="song-a") == whole

        # Once the reader is done, the next commit over budget evicts it.
        assert (await evicting.ask("write", key="song-d", count=count))["committed"]
        assert await evicting.ask("songs") == {"keys": ["song-c", "song-d"]}
        assert (await evicting.ask("stats"))["evictions"] == 2

        # Nor does a drop delete a song from under a reader; it does once the reader is done.
        assert await playing.ask("hold", key="song-c") == {"held": True}
        assert await evicting.ask("drop", key="song-c") == {"dropped": False}
        assert (await playing.ask("go_on", key="song-c"))["packets"] == count
        assert await evicting.ask("drop", key="song-c") == {"dropped": True}
        assert await evicting.ask("songs") == {"keys": ["song-d"]}
        assert songs_dir_listing(Path(directory)) == ([song_name("song-d")], [], [])
        statistics = await playing.ask("stats")
        assert (statistics["reading"], statistics["fds"]) == (0, baseline)  # no lock left held
        await ask_all([evicting, playing], "close")


async def test_a_damaged_song_played_elsewhere_is_dropped_once_free(tmp_path: Path) -> None:
    """`verify` finds it damaged while another process plays it: reported, kept until then."""
    directory = tmp_path / "store"
    async with store_processes(2) as (checking, playing):
        await ask_all([checking, playing], "open", directory=str(directory))
        assert (await checking.ask("write", key="song", count=100))["committed"]
        assert await playing.ask("hold", key="song") == {"held": True}  # all read ahead
        path = directory / "songs" / song_name("song")
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        assert await checking.ask("verify", key="song") == {"intact": False}
        assert await checking.ask("songs") == {"keys": ["song"]}  # not from under the player
        assert (await playing.ask("go_on", key="song"))["packets"] == 100
        assert await checking.ask("lookup", key="song") == {"found": False}  # dropped now
        assert await playing.ask("songs") == {"keys": []}
        assert (await checking.ask("stats"))["corrupt_dropped"] == 1
        assert songs_dir_listing(directory) == ([], [], [])


# --- (5) a writer killed mid-write ---------------------------------------------------------------


async def test_a_writer_killed_mid_write_leaves_the_song_to_others(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    before = census()
    async with store_processes(3) as (survivor, doomed, another_doomed):
        await ask_all([survivor, doomed, another_doomed], "open", directory=str(directory))
        begun = await doomed.ask("begin", key="song", count=400)
        assert begun == {"active": True, "part": temp_name("song")}
        assert (await survivor.ask("write", key="song", count=400))["reason"] == (
            "another process is writing it"
        )
        await doomed.kill()  # SIGKILL: no cleanup at all; the kernel lets go of its locks
        _, parts, key_locks = songs_dir_listing(directory)
        assert (parts, len(key_locks)) == ([temp_name("song")], 1)
        assert (directory / "songs" / parts[0]).stat().st_size > 0

        # The running process writes it now, and its temporary file replaces the dead one's.
        assert (await survivor.ask("write", key="song", count=400))["committed"]
        assert songs_dir_listing(directory) == ([song_name("song")], [], [])

        # A new process starting after a crash cleans up, and can write the song too.
        assert (await another_doomed.ask("begin", key="other", count=400))["active"]
        await another_doomed.kill()
        async with store_processes(1) as (newcomer,):
            opened = await newcomer.ask("open", directory=str(directory))
            assert opened["reconciled"] == {
                "orphan_files": 0,
                "orphan_rows": 0,
                "temporary_files": 1,
                "adopted_files": 0,
                "left_in_use": 0,
            }
            assert songs_dir_listing(directory) == ([song_name("song")], [], [])
            assert (await newcomer.ask("write", key="other", count=400))["committed"]
            read = await survivor.ask("read", key="other")
            assert read["sha256"] == digest(song_packets("other", 400))
            await ask_all([survivor, newcomer], "close")
    await no_leaks_since(before)  # every process reaped, every pipe closed


# --- (6) two processes reconcile at once beside a live writer ------------------------------------


async def test_two_processes_reconcile_at_once_beside_a_live_writer(tmp_path: Path) -> None:
    """A live writer's temporary file survives both reconciliations and its song commits; the
    song files that lost their row are indexed again once, not deleted; a dead writer's
    temporary file and lock go."""
    directory = tmp_path / "store"
    lost = [f"lost-{n:02}" for n in range(12)]
    async with store_processes(3) as (writer, first, second):
        await writer.ask("open", directory=str(directory))
        for key in lost:  # big enough that reading them back takes a while
            assert (await writer.ask("write", key=key, count=1500))["committed"]
        assert (await writer.ask("begin", key="live", count=600))["active"]
        # What a crash (or a power cut losing index transactions) leaves behind.
        db = sqlite3.connect(directory / "index.sqlite3", isolation_level=None, timeout=WAIT)
        try:
            db.execute("DELETE FROM songs WHERE key LIKE 'lost-%'")
        finally:
            db.close()
        dead = song_name("dead").removesuffix(".opus")
        (directory / "songs" / f".{dead}.part").write_bytes(b"OggS half a song")
        (directory / "locks" / f"{dead}.lock").touch()

        answers = await ask_all([first, second], "open", directory=str(directory))
        reports = [answer["reconciled"] for answer in answers]
        print(f"two processes reconciling at once: {reports}")
        assert sum(report["temporary_files"] for report in reports) == 1  # the dead one only
        assert sum(report["adopted_files"] for report in reports) == len(lost)
        assert [report["orphan_files"] for report in reports] == [0, 0]
        assert [report["orphan_rows"] for report in reports] == [0, 0]
        assert all(report["left_in_use"] >= 1 for report in reports)  # the live writer's
        songs, parts, key_locks = songs_dir_listing(directory)
        assert parts == [temp_name("live")]
        assert key_locks == [f"{song_name('live').removesuffix('.opus')}.lock"]
        assert len(songs) == len(lost)

        assert await writer.ask("go_on", key="live") == {"committed": True, "reason": "committed"}
        for process in (first, second):
            read = await process.ask("read", key="live")
            assert (read["packets"], read["sha256"]) == (600, digest(song_packets("live", 600)))
            assert await process.ask("songs") == {"keys": sorted([*lost, "live"])}
        assert songs_dir_listing(directory) == (
            sorted(song_name(key) for key in [*lost, "live"]),
            [],
            [],
        )
        await ask_all([writer, first, second], "close")


# --- (7) a damaged index, rebuilt by one process while others run --------------------------------


CHECKPOINT = "PRAGMA wal_checkpoint(TRUNCATE)"


async def test_an_index_damaged_under_running_processes_is_rebuilt_once(tmp_path: Path) -> None:
    """Whichever process finds the damage first rebuilds the index and swaps it in; the others
    open that one (no second rebuild), and they all go on sharing it."""
    directory = tmp_path / "store"
    index = directory / "index.sqlite3"
    async with store_processes(2) as processes:
        first, second = processes
        await ask_all(processes, "open", directory=str(directory))
        for key in ("song-a", "song-b", "song-c"):
            assert (await first.ask("write", key=key, count=100))["committed"]
        db = sqlite3.connect(index, isolation_level=None, timeout=WAIT)
        try:
            db.execute(CHECKPOINT)  # else the WAL's copies of the pages shadow the damage
        finally:
            db.close()
        with index.open("r+b") as file:  # all of it garbage: no longer a database
            file.write(random.Random(9).randbytes(index.stat().st_size))

        # Both look a song up at once: whoever finds the index damaged answers a miss (the song
        # would play from the network) and rebuilds it in the background.
        assert {"found": False} in await ask_all(processes, "lookup", key="song-a")
        with trio.fail_after(WAIT):
            while True:
                statistics = [await process.ask("stats") for process in processes]
                if not any(entry["index_damaged"] for entry in statistics):
                    break
                await trio.sleep(0.05)
        assert sum(entry["index_rebuilds"] for entry in statistics) == 1, statistics
        (rebuilt,) = [entry["rebuilt"] for entry in statistics if entry["rebuilt"] is not None]
        assert rebuilt == 3
        assert (directory / "index.sqlite3.damaged").exists()

        for process in processes:
            assert await process.ask("songs") == {"keys": ["song-a", "song-b", "song-c"]}
        # Writes from either land in the one index both use.
        assert (await second.ask("write", key="song-d", count=100))["committed"]
        assert (await first.ask("read", key="song-d"))["found"]
        assert await first.ask("drop", key="song-a") == {"dropped": True}
        assert await second.ask("lookup", key="song-a") == {"found": False}
        await ask_all(processes, "close")
    db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA quick_check").fetchone() == ("ok",)
        keys = sorted(row[0] for row in db.execute("SELECT key FROM songs"))
    finally:
        db.close()
    assert keys == ["song-b", "song-c", "song-d"]
