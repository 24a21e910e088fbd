"""Faults in the processed-song store, end to end: a full disk, a locked or a damaged index.

Whatever happens to the store, the song plays on (from the network when the store cannot
help), users see no error, nothing half-written becomes a stored song, the other guild keeps
hearing its song, and nothing is left behind. Each test prints its figures (`pytest -s`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
import trio_asyncio

from musicbot.app import open_app, resolver_for
from musicbot.audio.store import files as store_files
from musicbot.audio.store.index import WRITE_TIMEOUT
from musicbot.audio.store.oggcheck import check_file
from musicbot.core.messages import PlayerState
from musicbot.testing.harness import LoopbackBot, loopback_settings, open_loopback_bot, reply_to
from musicbot.testing.leaks import Census, census, no_leaks_since, rest_port
from musicbot.testing.loopback import FakeDiscord, FakeMember, open_fake_discord
from musicbot.testing.media import MediaServer, open_media_server
from musicbot.testing.search import with_loopback_search

OTHER_GUILD_SONG = 60
"""Seconds of the song the other guild plays: longer than any test."""
PACKETS_PER_SECOND = 50
WAIT_SECONDS = 20


# --- the bot and its two guilds ------------------------------------------------------------------


@attrs.define
class OtherGuild:
    """Guild 2, playing one long song while guild 1 meets the fault."""

    env: LoopbackBot
    mark: int = 0
    since: float = 0.0

    def start_watching(self) -> None:
        self.mark = len(self.env.discord.rtp_packets(2))
        self.since = trio.current_time()

    def check_it_kept_playing(self, label: str) -> None:
        """At least 80 % of the packets due since `start_watching`, and no silence over 1 s."""
        until = trio.current_time()
        heard = len(self.env.discord.rtp_packets(2)) - self.mark
        due = (until - self.since) * PACKETS_PER_SECOND
        audio = self.env.discord.audio(guild=2, since=self.since, until=until)
        print(
            f"{label}: the other guild heard {heard} packets in {until - self.since:.1f} s"
            f" ({heard / due:.0%} of those due), longest gap {audio.spacing_max_ms:.0f} ms"
        )
        assert heard >= 0.8 * due
        assert audio.spacing_max_ms < 1000


@pytest.fixture
async def env(media_cache: Path) -> AsyncIterator[LoopbackBot]:
    async with open_loopback_bot(guilds=2, media_cache=media_cache) as bot:
        yield bot


async def dj(env: LoopbackBot, guild: int) -> FakeMember:
    member = env.discord.member(guild=guild, name=f"dj{guild}")
    await member.join_voice("Music")
    return member


async def play(member: FakeMember, url: str) -> float:
    """/play `url`; returns the seconds until the answer, which must not be an error."""
    asked = trio.current_time()
    answer = await reply_to(await member.slash("play", query=url))
    assert not answer.ephemeral, answer.content
    return trio.current_time() - asked


async def wait_until(predicate: Callable[[], object], what: str) -> None:
    """For the bot's own state, which the fake Discord does not see change: checked every
    20 ms, for at most WAIT_SECONDS."""
    with trio.fail_after(WAIT_SECONDS):
        while not predicate():  # noqa: ASYNC110 (the bot's statistics have no event to wait on)
            await trio.sleep(0.02)
    assert predicate(), what


def player_state(env: LoopbackBot, guild: int) -> PlayerState | None:
    guild_id = env.discord.guild(guild).id
    players = env.app.supervisor.statistics().players
    return next((p.state for p in players if p.guild_id == guild_id), None)


async def play_to_end(env: LoopbackBot, member: FakeMember, url: str) -> tuple[int, float]:
    """/play `url` in guild 1 and wait for its end; returns (packets heard, answer seconds)."""
    mark = len(env.discord.rtp_packets(1))
    answered = await play(member, url)
    await wait_until(lambda: player_state(env, 1) is PlayerState.IDLE, "the song's end")
    return len(env.discord.rtp_packets(1)) - mark, answered


async def start_other_guild(env: LoopbackBot) -> OtherGuild:
    await play(await dj(env, 2), env.media.tone_url(660, OTHER_GUILD_SONG))
    await env.discord.wait_for(lambda: len(env.discord.rtp_packets(2)) >= 25, what="guild 2")
    return OtherGuild(env)


async def store_line(env: LoopbackBot) -> str:
    """The "Song store" line of /resources, as an admin sees it."""
    boss = env.discord.member(guild=1, name="boss", admin=True)
    answer = await reply_to(await boss.slash("resources"))
    assert answer.ephemeral
    fields = {field.name: field.value for field in answer.embeds[0].fields}
    return fields["Song store"]


def settled_census(env: LoopbackBot) -> Census:
    return census(ignore_ports={rest_port(env.discord)})


async def nothing_left_behind(env: LoopbackBot, baseline: Census) -> None:
    await no_leaks_since(baseline, ignore_ports={rest_port(env.discord)})


# --- what the store holds ------------------------------------------------------------------------


def songs_dir(env: LoopbackBot) -> Path:
    return env.app.store.songs_dir


def index_path(env: LoopbackBot) -> Path:
    return env.app.store.directory / store_files.INDEX_NAME


def temporary_files(env: LoopbackBot) -> list[str]:
    return [name for name in os.listdir(songs_dir(env)) if name.endswith(".part")]


async def stored_titles(env: LoopbackBot) -> list[str]:
    """The stored songs' titles, after checking that every row has its file, every song file
    has its row, and every file reads back whole as the index describes it."""
    rows = await env.app.store.songs()
    on_disk = sorted(name for name in os.listdir(songs_dir(env)) if not name.startswith("."))
    assert sorted(row.path.name for row in rows) == on_disk
    for row in rows:
        check = check_file(row.path)
        assert (check.size, check.packets, check.sha256) == (row.size, row.packets, row.checksum)
    return sorted(row.title for row in rows)


# --- a full disk ---------------------------------------------------------------------------------


@attrs.define
class DiskThatFills:
    """The song files' writes fail as a full disk's do: a write is cut at the space left, then
    ENOSPC. (`files.write_all` is the store's one way to the disk for song files; a small file
    system of our own would need root for `mount`.)"""

    monkeypatch: pytest.MonkeyPatch
    room: int = 0
    refused: int = 0
    real_write_all: Callable[[int, bytes], None] = store_files.write_all

    def fill_after(self, room: int) -> None:
        self.room = room
        self.monkeypatch.setattr(store_files, "write_all", self._write_all)

    def free(self) -> None:
        self.monkeypatch.setattr(store_files, "write_all", self.real_write_all)

    def _write_all(self, fd: int, data: bytes) -> None:
        if len(data) > self.room:
            self.real_write_all(fd, data[: self.room])
            self.room = 0
            self.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.real_write_all(fd, data)
        self.room -= len(data)


async def test_a_full_disk_mid_song_plays_on_and_keeps_nothing_half_written(
    env: LoopbackBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = await start_other_guild(env)
    member = await dj(env, 1)
    await play_to_end(env, member, env.media.page_url(440, 1, title="Before"))
    await wait_until(lambda: env.app.store.statistics().writes_committed == 1, "a first song")
    baseline = settled_census(env)
    other.start_watching()

    disk = DiskThatFills(monkeypatch)
    disk.fill_after(20_000)  # the flusher writes 64 KiB at a time: fails about 4 s into the song
    mark = len(env.discord.rtp_packets(1))
    await play(member, env.media.page_url(500, 6, title="Mid-song"))
    await wait_until(lambda: env.app.store.statistics().disk_full, "the disk to fill")
    # Every partial file is deleted as its write fails (guild 2's too: the disk is shared).
    await wait_until(lambda: not temporary_files(env), "the partial files' deletion")
    full_at = (len(env.discord.rtp_packets(1)) - mark) / PACKETS_PER_SECOND
    assert player_state(env, 1) is PlayerState.PLAYING  # the song goes on
    assert "disk full: not storing" in await store_line(env)
    await wait_until(lambda: player_state(env, 1) is PlayerState.IDLE, "the song's end")
    mid_song = len(env.discord.rtp_packets(1)) - mark

    while_full, _ = await play_to_end(env, member, env.media.page_url(550, 2, title="While full"))
    disk.free()
    after, _ = await play_to_end(env, member, env.media.page_url(600, 2, title="After"))
    await wait_until(lambda: env.app.store.statistics().writes_committed == 2, "a commit")

    other.check_it_kept_playing("disk full")
    print(
        f"the copy failed {full_at:.1f} s into a 6 s song: it played {mid_song} packets;"
        f" then {while_full} and {after}; writes refused {disk.refused}"
    )
    assert mid_song >= 6 * PACKETS_PER_SECOND - 2  # to its end
    assert while_full >= 2 * PACKETS_PER_SECOND - 2
    assert after >= 2 * PACKETS_PER_SECOND - 2
    statistics = env.app.store.statistics()
    assert statistics.write_failures >= 2  # the song mid-way, the next one at its commit
    assert not statistics.disk_full  # a commit succeeded since
    assert "disk full" not in await store_line(env)
    assert temporary_files(env) == []
    assert await stored_titles(env) == [
        "After (1)",
        "Before (1)",
    ]  # yt-dlp numbers the audio of a page
    await nothing_left_behind(env, baseline)


# --- a locked index ------------------------------------------------------------------------------


LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
db.execute("ROLLBACK")
"""


@asynccontextmanager
async def index_locked_by_another_process(path: Path) -> AsyncIterator[None]:
    """What an operator's `sqlite3` shell does with BEGIN EXCLUSIVE: nobody else may write."""
    locker = await trio.lowlevel.open_process(
        [sys.executable, "-c", LOCKER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert locker.stdin is not None and locker.stdout is not None
    try:
        with trio.fail_after(WAIT_SECONDS):
            said = b""
            while not said.endswith(b"\n"):
                said += await locker.stdout.receive_some() or b"(it exited)\n"
        assert said == b"locked\n"
        yield
        await locker.stdin.aclose()
        with trio.fail_after(WAIT_SECONDS):
            assert await locker.wait() == 0
    finally:
        locker.kill()
        with trio.CancelScope(shield=True):
            await locker.wait()
            await locker.stdout.aclose()


async def test_a_locked_index_delays_nothing_but_bookkeeping(env: LoopbackBot) -> None:
    other = await start_other_guild(env)
    member = await dj(env, 1)
    stored_url = env.media.page_url(440, 1, title="Stored")
    _, first_answer = await play_to_end(env, member, stored_url)
    await wait_until(lambda: env.app.store.statistics().writes_committed == 1, "a first song")
    baseline = settled_census(env)
    other.start_watching()
    source = env.app.source
    from_network = source.statistics().transcoded_from_network

    fresh_url = env.media.page_url(520, 2, title="Fresh")
    async with index_locked_by_another_process(index_path(env)):
        locked_at = trio.current_time()
        stored_heard, stored_answer = await play_to_end(env, member, stored_url)
        assert source.statistics().played_from_store == 1
        fresh_heard, fresh_answer = await play_to_end(env, member, fresh_url)
        await wait_until(lambda: env.app.store.statistics().write_failures == 1, "the commit")
        locked_for = trio.current_time() - locked_at
    # Not kept while locked; kept once the lock is gone.
    again_heard, _ = await play_to_end(env, member, fresh_url)
    await wait_until(lambda: env.app.store.statistics().writes_committed == 2, "a commit")

    other.check_it_kept_playing("index locked")
    statistics = env.app.store.statistics()
    print(
        f"index locked for {locked_for:.1f} s (writes wait {WRITE_TIMEOUT} s): /play answered in"
        f" {stored_answer:.2f} s from the store, {fresh_answer:.2f} s for a new song"
        f" ({first_answer:.2f} s unlocked); index errors {statistics.index_errors}"
    )
    assert locked_for > 4 * WRITE_TIMEOUT
    assert stored_heard >= PACKETS_PER_SECOND - 2
    assert fresh_heard >= 2 * PACKETS_PER_SECOND - 2
    assert again_heard >= 2 * PACKETS_PER_SECOND - 2
    assert fresh_answer < first_answer + 2 * WRITE_TIMEOUT + 1.0
    # What the lock cost: the play count of the stored song, the resolved query and the copy.
    assert statistics.index_errors >= 3
    assert (statistics.write_failures, statistics.disk_full) == (1, False)
    assert source.statistics().transcoded_from_network == from_network + 2  # "Fresh", twice
    assert await stored_titles(env) == ["Fresh (1)", "Stored (1)"]
    await nothing_left_behind(env, baseline)


# --- a damaged index -----------------------------------------------------------------------------


def damage(path: Path, how: str) -> None:
    """Overwrite the index file's bytes: all of them (no longer a database), all but the first
    page (the header is right, the tables are not), or none left (an empty database)."""
    size = path.stat().st_size
    noise = random.Random(8).randbytes(size)
    with path.open("r+b") as file:
        if how == "garbage":
            file.write(noise)
        elif how == "pages":
            file.seek(4096)
            file.write(noise[4096:])
        else:
            file.truncate(0)


CHECKPOINT = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
db.close()
"""


async def checkpoint(path: Path) -> None:
    """Fold the WAL into the index file, as a backup tool or `sqlite3` shell may: otherwise
    the damaged pages are shadowed by the WAL's copies until the bot's next checkpoint."""
    await trio.run_process([sys.executable, "-c", CHECKPOINT, str(path)])


@pytest.mark.parametrize("how", ["garbage", "pages"])
async def test_an_index_damaged_while_playing_is_rebuilt_from_the_songs(
    env: LoopbackBot, how: str
) -> None:
    other = await start_other_guild(env)
    member = await dj(env, 1)
    stored_url = env.media.page_url(440, 1, title="Stored")
    await play_to_end(env, member, stored_url)
    await wait_until(lambda: env.app.store.statistics().writes_committed == 1, "a first song")
    baseline = settled_census(env)
    other.start_watching()
    store, source = env.app.store, env.app.source

    await checkpoint(index_path(env))
    damage(index_path(env), how)
    damaged_at = trio.current_time()
    mark = len(env.discord.rtp_packets(1))
    fresh_answer = await play(member, env.media.page_url(520, 1, title="Fresh"))
    await wait_until(lambda: store.statistics().index_rebuilds == 1, "the rebuild")
    rebuilt_in = trio.current_time() - damaged_at
    assert not store.statistics().index_damaged
    await wait_until(lambda: player_state(env, 1) is PlayerState.IDLE, "the song's end")
    fresh_heard = len(env.discord.rtp_packets(1)) - mark
    stored_heard, _ = await play_to_end(env, member, stored_url)

    other.check_it_kept_playing(f"index damaged ({how})")
    print(
        f"index damaged ({how}): the next /play answered in {fresh_answer:.2f} s, the index"
        f" rebuilt {rebuilt_in:.2f} s after the damage; {store.rebuilt}"
    )
    assert fresh_heard >= PACKETS_PER_SECOND - 2
    assert stored_heard >= PACKETS_PER_SECOND - 2
    assert source.statistics().played_from_store == 1  # the rebuilt index knew it
    assert store.rebuilt is not None and store.rebuilt.songs >= 1
    assert store.rebuilt.damaged_copy is not None and store.rebuilt.damaged_copy.exists()
    titles = await stored_titles(env)
    assert "Stored (1)" in titles and set(titles) <= {"Fresh (1)", "Stored (1)"}
    assert store.statistics().index_errors >= 1
    await nothing_left_behind(env, baseline)


@asynccontextmanager
async def bot_on(
    discord: FakeDiscord, media: MediaServer, cache_dir: Path
) -> AsyncIterator[LoopbackBot]:
    """A bot of its own on `discord` and `media`, which outlive it: a restart keeps the links
    (and so the songs' keys) the same."""
    settings = loopback_settings(discord, cache_dir=cache_dir)
    with contextlib.closing(resolver_for(settings, make_ytdl=with_loopback_search(media))) as ytdl:
        async with open_app(settings, resolver=ytdl) as app:
            yield LoopbackBot(discord, media, app)


@pytest.mark.parametrize("how", ["garbage", "pages", "emptied"])
async def test_an_index_damaged_while_stopped_is_rebuilt_at_start(
    media_cache: Path, tmp_path: Path, how: str
) -> None:
    cache_dir = tmp_path / "cache"
    songs = [(440, "One"), (550, "Two")]
    async with (
        trio_asyncio.open_loop(),
        open_media_server(cache_dir=media_cache) as media,
        open_fake_discord(guilds=1) as discord,
    ):
        async with bot_on(discord, media, cache_dir) as env:
            member = await dj(env, 1)
            for freq, title in songs:
                await play_to_end(env, member, media.page_url(freq, 1, title=title))
            await wait_until(lambda: env.app.store.statistics().writes_committed == 2, "commits")
            await member.leave_voice()
            path = index_path(env)
        damage(path, how)

        async with bot_on(discord, media, cache_dir) as env:
            store = env.app.store
            print(f"index {how} at start: rebuilt {store.rebuilt}, reconciled {store.reconciled}")
            if how == "emptied":  # an empty file is a valid, empty database: files are adopted
                assert store.reconciled.adopted_files == 2
            else:
                assert store.statistics().index_rebuilds == 1
                assert store.rebuilt is not None and store.rebuilt.songs == 2
            assert await stored_titles(env) == [f"{title} (1)" for _, title in songs]
            member = await dj(env, 1)
            for freq, title in songs:
                heard, _ = await play_to_end(env, member, media.page_url(freq, 1, title=title))
                assert heard >= PACKETS_PER_SECOND - 2
            assert env.app.source.statistics().played_from_store == 2
