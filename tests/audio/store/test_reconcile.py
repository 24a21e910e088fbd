"""At open the index and the files are made to agree: a crash at any point leaves no trace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from musicbot.audio.store import ReconcileReport, StoredSong, open_store
from musicbot.audio.store.files import song_name

StoreSong = Callable[..., Awaitable[StoredSong]]
ReadSong = Callable[..., Awaitable[list[bytes]]]


async def test_orphans_and_leftovers_are_cleaned_up(
    store_dir: Path, tone_packets: list[bytes], store_song: StoreSong, read_song: ReadSong
) -> None:
    async with open_store(store_dir) as store:
        kept = await store_song(store, "kept", tone_packets[:100])
        lost = await store_song(store, "lost", tone_packets[:100])
        resized = await store_song(store, "resized", tone_packets[:100])
        assert store.reconciled == ReconcileReport(0, 0, 0)
    songs = store_dir / "songs"
    lost.path.unlink()  # a row without its file
    with resized.path.open("ab") as file:  # a file that is not what its row says
        file.write(b"junk")
    (songs / song_name("ghost")).write_bytes(kept.path.read_bytes())  # a file without a row
    (songs / "notes.txt").write_text("not ours")
    (songs / f".{song_name('half')[:-5]}.0123abcd.part").write_bytes(b"OggS half a song")
    (songs / "a-directory").mkdir()  # left alone

    async with open_store(store_dir) as store:
        assert store.reconciled == ReconcileReport(orphan_files=2, orphan_rows=2, temporary_files=1)
        assert sorted(path.name for path in songs.iterdir()) == sorted(
            [song_name("kept"), "a-directory"]
        )
        statistics = store.statistics()
        assert (statistics.entries, statistics.bytes) == (1, kept.size)
        song = await store.lookup("kept")
        assert song is not None and await read_song(store, song) == tone_packets[:100]
        assert (await store.verify_all()).corrupt == ()
    async with open_store(store_dir) as store:
        assert store.reconciled == ReconcileReport(0, 0, 0)


HALF_A_SONG = textwrap.dedent(
    """
    import os, sys, trio
    from musicbot.audio.store import open_store

    PACKET = bytes([0xFC]) + bytes(range(200)) * 2  # a 20 ms Opus packet's worth of bytes

    async def main(directory):
        async with open_store(directory) as store:
            async with store.writer("done", title="Done") as writer:
                for _ in range(100):
                    writer.add(PACKET)
                assert await writer.commit() is not None
            async with store.writer("half", title="Half") as writer:
                for _ in range(1000):  # about 400 KB: several chunks for the flusher
                    writer.add(PACKET)
                    await trio.sleep(0)
                songs = os.path.join(directory, "songs")
                while not any(
                    name.endswith(".part") and os.stat(os.path.join(songs, name)).st_size > 0
                    for name in os.listdir(songs)
                ):
                    await trio.sleep(0.01)
                print("writing", flush=True)
                await trio.sleep_forever()

    trio.run(main, sys.argv[1])
    """
)


async def test_a_process_killed_mid_write_leaves_only_a_temporary_file(
    store_dir: Path, read_song: ReadSong
) -> None:
    child = await trio.lowlevel.open_process(
        [sys.executable, "-c", HALF_A_SONG, str(store_dir)], stdout=subprocess.PIPE
    )
    assert child.stdout is not None
    try:
        with trio.fail_after(30):
            said = b""
            while not said.endswith(b"\n"):
                said += await child.stdout.receive_some(100) or b"(it exited)\n"
            assert said == b"writing\n"
            child.send_signal(signal.SIGKILL)
            assert await child.wait() == -signal.SIGKILL
    finally:
        child.kill()
        await child.stdout.aclose()
        with trio.CancelScope(shield=True):
            await child.wait()

    songs = store_dir / "songs"
    leftovers = [name for name in os.listdir(songs) if name.endswith(".part")]
    assert len(leftovers) == 1 and (songs / leftovers[0]).stat().st_size > 0
    async with open_store(store_dir) as store:  # the kernel dropped the dead process's lock
        assert store.reconciled == ReconcileReport(0, 0, temporary_files=1)
        assert os.listdir(songs) == [song_name("done")]
        assert await store.lookup("half") is None
        done = await store.lookup("done")
        assert done is not None and done.packets == 100
        assert await store.verify("done")
        assert len(await read_song(store, done)) == 100
        statistics = store.statistics()
        assert (statistics.entries, statistics.bytes) == (1, done.size)
