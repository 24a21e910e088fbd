"""The `musicbot run` process stopped in the middle of writing a song into its store.

SIGTERM while three guilds play (one from the network, its copy half-written into the store;
one from the store; one a long song): the process leaves voice and exits within 5 s with no
ffmpeg left, and the half-written copies are gone. SIGKILL at the same point: the ffmpeg it
leaves exit by themselves, and the next start deletes the half-written files. Either way the
next process on the same cache directory opens the store, plays the song again and stores it
whole; with its index damaged meanwhile too, it rebuilds the index first. Each run prints its
figures.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import psutil
import pytest
import trio
import trio_asyncio

from musicbot.audio.store.oggcheck import check_file
from musicbot.testing.harness import process_environment, reply_to
from musicbot.testing.loopback import FakeDiscord, FakeMember, open_fake_discord
from musicbot.testing.media import MediaServer, open_media_server

STARTUP_TIMEOUT = 30
"""A cold process on a loaded 2-core machine (the shutdown is still held to 5 s)."""
SHUTDOWN_LIMIT = 5.0
PACKETS_PER_SECOND = 50
INTERRUPTED_SONG = 6
"""Seconds: the store's flusher writes 64 KiB (about 4 s at 128 kbps) at a time, so a song
of 6 s has bytes on disk well before its end."""


@pytest.fixture
async def world(media_cache: Path) -> AsyncIterator[tuple[FakeDiscord, MediaServer]]:
    async with (
        trio_asyncio.open_loop(),
        open_media_server(cache_dir=media_cache) as media,
        open_fake_discord(guilds=3, wait_timeout=STARTUP_TIMEOUT) as discord,
    ):
        yield discord, media


class Bot:
    """One `musicbot run` process on `cache_dir`, its log in `log_path`."""

    def __init__(
        self, discord: FakeDiscord, cache_dir: Path, log_path: Path, *, wrapper: Sequence[str] = ()
    ) -> None:
        self.discord = discord
        self.env = process_environment(discord, cache_dir=cache_dir, MUSICBOT_LOG_LEVEL="INFO")
        self.log_path = log_path
        self.wrapper = list(wrapper)
        """A command that runs the bot's command line (`unshare ... sh -c ...`)."""
        self.process: trio.Process | None = None

    async def start(self) -> None:
        identified = self.discord.statistics().identifies
        command = [*self.wrapper, sys.executable, "-m", "musicbot", "run"]
        with self.log_path.open("ab") as log:
            self.process = await trio.lowlevel.open_process(command, env=self.env, stderr=log)
        with trio.fail_after(STARTUP_TIMEOUT):
            await self.discord.wait_for(
                lambda: self.discord.statistics().identifies > identified, what="the login"
            )
            await self.discord.wait_ready()

    def ffmpeg(self) -> list[psutil.Process]:
        assert self.process is not None
        children = psutil.Process(self.process.pid).children(recursive=True)
        return [child for child in children if "ffmpeg" in child.name() and _alive(child)]

    async def stop(self, signum: signal.Signals) -> tuple[int, float]:
        """Send `signum`; returns (exit code, seconds until the process was gone)."""
        assert self.process is not None
        sent = trio.current_time()
        self.process.send_signal(signum)
        with trio.fail_after(SHUTDOWN_LIMIT):
            code = await self.process.wait()
        return code, trio.current_time() - sent

    async def kill_if_running(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            with trio.CancelScope(shield=True):
                await self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def dj(discord: FakeDiscord, guild: int) -> FakeMember:
    member = discord.member(guild=guild, name=f"dj{guild}")
    await member.join_voice("Music")
    return member


async def play(member: FakeMember, url: str) -> None:
    answer = await reply_to(await member.slash("play", query=url))
    assert not answer.ephemeral, answer.content


async def play_to_end(discord: FakeDiscord, guild: int, url: str, seconds: float) -> None:
    """Play `url` and wait for its packets and the moment its copy is committed."""
    mark = len(discord.rtp_packets(guild))
    await play(await dj(discord, guild), url)
    wanted = mark + seconds * PACKETS_PER_SECOND - 2
    await discord.wait_for(lambda: len(discord.rtp_packets(guild)) >= wanted, what="the song")


def songs_in(cache_dir: Path) -> tuple[list[str], list[str]]:
    """(stored song files, temporary files of writes under way)."""
    names = os.listdir(cache_dir / "songs")
    return sorted(n for n in names if n.endswith(".opus")), [
        n for n in names if n.endswith(".part")
    ]


async def wait_stored(cache_dir: Path, count: int) -> None:
    """Until `count` songs are stored: a copy is committed in the background after its end."""
    with trio.fail_after(SHUTDOWN_LIMIT):
        while len(songs_in(cache_dir)[0]) < count:  # noqa: ASYNC110 (another process's file)
            await trio.sleep(0.05)


def part_with_bytes(cache_dir: Path) -> bool:
    songs = cache_dir / "songs"
    return any(
        name.endswith(".part") and (songs / name).stat().st_size > 0 for name in os.listdir(songs)
    )


def indexed_songs(cache_dir: Path) -> dict[str, tuple[int, int, str]]:
    """file -> (bytes, packets, sha256), as the index of a stopped bot records them."""
    db = sqlite3.connect(f"file:{cache_dir / 'index.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT file, bytes, packets, checksum FROM songs").fetchall()
    finally:
        db.close()
    return {file: (size, packets, checksum) for file, size, packets, checksum in rows}


def assert_whole_songs_only(cache_dir: Path, count: int) -> None:
    """`count` stored songs, each file matching its row and reading back whole; nothing else."""
    stored, temporary = songs_in(cache_dir)
    assert temporary == []
    rows = indexed_songs(cache_dir)
    assert sorted(rows) == stored and len(stored) == count
    for name in stored:
        check = check_file(cache_dir / "songs" / name)
        assert (check.size, check.packets, check.sha256) == rows[name]


async def wait_gone(processes: list[psutil.Process]) -> float:
    """Seconds until every process has exited (a zombie waiting for its reaper counts as gone)."""
    started = trio.current_time()

    def running() -> list[psutil.Process]:
        return [process for process in processes if _running(process)]

    with trio.fail_after(SHUTDOWN_LIMIT):
        while running():  # noqa: ASYNC110 (another process's exit has no event here)
            await trio.sleep(0.05)
    return trio.current_time() - started


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def damage_index(cache_dir: Path) -> None:
    """Overwrite the index and its WAL with noise. (The file alone is not enough after a
    SIGKILL: every page is still in the WAL, whose copies SQLite reads, and its next
    checkpoint writes them back over the damage.)"""
    noise = random.Random(8)
    for name in ("index.sqlite3", "index.sqlite3-wal"):
        path = cache_dir / name
        if path.exists():
            path.write_bytes(noise.randbytes(path.stat().st_size))


@pytest.mark.parametrize(
    ("signum", "damaged_index"),
    [(signal.SIGTERM, False), (signal.SIGKILL, False), (signal.SIGKILL, True)],
    ids=["sigterm", "sigkill", "sigkill-then-damaged-index"],
)
async def test_stopped_mid_write_the_next_process_stores_the_song_whole(
    world: tuple[FakeDiscord, MediaServer],
    tmp_path: Path,
    signum: signal.Signals,
    damaged_index: bool,
) -> None:
    discord, media = world
    cache_dir = tmp_path / "cache"
    stored_url = media.page_url(660, 1, title="Stored")
    interrupted_url = media.page_url(440, INTERRUPTED_SONG, title="Interrupted")
    first = Bot(discord, cache_dir, tmp_path / "first.log")
    second = Bot(discord, cache_dir, tmp_path / "second.log")
    try:
        await first.start()
        await play_to_end(discord, 2, stored_url, 1)
        await play(await dj(discord, 1), interrupted_url)
        with trio.fail_after(INTERRUPTED_SONG):
            await discord.wait_for(lambda: part_with_bytes(cache_dir), what="a copy under way")
        await play(discord.member(guild=2, name="dj2"), stored_url)  # from the store, reading
        await play(await dj(discord, 3), media.tone_url(550, 30))  # its ffmpeg surely running
        await discord.wait_for(lambda: len(discord.rtp_packets(3)) >= 10, what="guild 3")
        ffmpeg = first.ffmpeg()
        assert 1 <= len(ffmpeg) <= 2  # guild 3's, and guild 1's unless it is done already
        code, exit_seconds = await first.stop(signum)
        ffmpeg_gone_after = await wait_gone(ffmpeg)
        stored, temporary = songs_in(cache_dir)
        print(
            f"{signum.name} with a copy under way: exited {code} in {exit_seconds:.2f} s,"
            f" its ffmpeg gone {ffmpeg_gone_after:.2f} s later; left {len(stored)} stored"
            f" and {len(temporary)} temporary file(s)"
        )
        if signum is signal.SIGTERM:
            assert code == 0
            for guild in (1, 2, 3):
                assert discord.bot_voice_channel(guild) is None  # it left voice
                assert not discord.voice(guild).websocket_open
            assert_whole_songs_only(cache_dir, 1)  # the half-written copy was deleted
        else:
            assert code == -signal.SIGKILL
            assert len(stored) == 1 and len(temporary) == 2  # guilds 1 and 3: never songs
        if damaged_index:
            damage_index(cache_dir)

        await second.start()
        for guild in (1, 2, 3):
            await discord.member(guild=guild, name=f"dj{guild}").leave_voice()
        await play_to_end(discord, 1, interrupted_url, INTERRUPTED_SONG)
        await wait_stored(cache_dir, 2)
        code, exit_seconds = await second.stop(signal.SIGTERM)
        assert code == 0
        print(f"the next process stored it whole and exited in {exit_seconds:.2f} s")
    finally:
        await first.kill_if_running()
        await second.kill_if_running()
        print(first.log(), second.log(), sep="\n")  # pytest shows them when the test fails
    assert_whole_songs_only(cache_dir, 2)
    log = second.log()
    assert "Traceback" not in log
    if signum is signal.SIGKILL:
        assert "temporary_files=2" in log  # the next open deleted the half-written files
    if damaged_index:
        assert "rebuilding it from the songs" in log


# --- a full disk, for real ------------------------------------------------------------------------

SMALL_DISK = "4m"
FREE_LEFT = 20_000
"""Bytes left free when the disk is filled: less than the 64 KiB the flusher writes at once."""


def own_file_system(cache_dir: Path) -> list[str]:
    """Run the bot in a mount namespace of its own, with `cache_dir` a small tmpfs: it vanishes
    with the process, and the rest of the machine never sees it."""
    mount = f'mount -t tmpfs -o size={SMALL_DISK} tmpfs "$0" && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, str(cache_dir)]


def seen_from_outside(bot: Bot, path: Path) -> Path:
    """`path` as the bot's mount namespace sees it."""
    assert bot.process is not None
    return Path(f"/proc/{bot.process.pid}/root") / path.relative_to("/")


async def song_store_line(discord: FakeDiscord) -> str:
    boss = discord.member(guild=1, name="boss", admin=True)
    answer = await reply_to(await boss.slash("resources"))
    assert answer.ephemeral
    return {field.name: field.value for field in answer.embeds[0].fields}["Song store"]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a file system of the bot's own needs root (mount)",
)
async def test_a_really_full_disk_mid_song_plays_on_and_is_shown(
    world: tuple[FakeDiscord, MediaServer], tmp_path: Path
) -> None:
    discord, media = world
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    bot = Bot(discord, cache_dir, tmp_path / "bot.log", wrapper=own_file_system(cache_dir))
    try:
        await bot.start()
        disk = seen_from_outside(bot, cache_dir)
        assert os.statvfs(disk).f_blocks * os.statvfs(disk).f_frsize <= 4 * 2**20  # the tmpfs
        await play(await dj(discord, 2), media.tone_url(660, 30))
        await play_to_end(discord, 1, media.page_url(440, 1, title="Before"), 1)
        await wait_stored(disk, 1)
        filler = disk / "filler"
        stat = os.statvfs(disk)
        filler.write_bytes(bytes(stat.f_bavail * stat.f_frsize - FREE_LEFT))
        mark2, since = len(discord.rtp_packets(2)), trio.current_time()

        mark = len(discord.rtp_packets(1))
        await play(discord.member(guild=1, name="dj1"), media.page_url(500, 6, title="Mid-song"))
        line = ""
        with trio.fail_after(INTERRUPTED_SONG + 5):
            while "disk full: not storing" not in line:
                line = await song_store_line(discord)
        full_after = (len(discord.rtp_packets(1)) - mark) / PACKETS_PER_SECOND
        wanted = mark + INTERRUPTED_SONG * PACKETS_PER_SECOND - 2
        await discord.wait_for(lambda: len(discord.rtp_packets(1)) >= wanted, what="its end")
        assert songs_in(disk) == (songs_in(disk)[0], [])  # the partial files are gone
        assert len(songs_in(disk)[0]) == 1  # "Before" only

        filler.unlink()  # the operator makes room
        await play_to_end(discord, 1, media.page_url(550, 2, title="After"), 2)
        await wait_stored(disk, 2)
        line = await song_store_line(discord)
        assert "disk full" not in line
        heard2 = len(discord.rtp_packets(2)) - mark2
        due2 = (trio.current_time() - since) * PACKETS_PER_SECOND
        stored = [disk / "songs" / name for name in songs_in(disk)[0]]
        assert [check_file(path).packets for path in stored]  # whole files, read back
        code, exit_seconds = await bot.stop(signal.SIGTERM)
    finally:
        await bot.kill_if_running()
        print(bot.log())
    print(
        f"real ENOSPC: /resources said disk full {full_after:.1f} s into a 6 s song, which played"
        f" to its end; the other"
        f" guild heard {heard2} packets ({heard2 / due2:.0%} of those due); after freeing"
        f" space: {line!r}; exited {code} in {exit_seconds:.2f} s"
    )
    assert code == 0
    assert len(stored) == 2
    assert heard2 >= 0.8 * due2
    log = bot.log()
    assert "No space left on device" in log
    assert "Traceback" not in log


def _alive(process: psutil.Process) -> bool:
    """Running, not an ffmpeg that has exited and is waiting for the bot to reap it (a zombie
    holds no audio, no pipe and no memory; the bot reaps it at its stream's next read)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
