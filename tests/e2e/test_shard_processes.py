"""Scale-out: two `musicbot run` processes, two gateway shards each (`--shard-count 4
--shard-ids 0-1` and `2-3`), against one loopback Discord of eight guilds, on one cache_dir.

Every guild is served by the process that runs its shard (its /play is answered and heard, its
/resources names that process), a song one process stored plays from the store in the other
process's guild, and stopping one process (SIGTERM) takes its guilds out of voice while the
other's keep playing: not a packet lost, no reconnection, nothing left behind. The test prints
its figures: start-up time of each process, time to first audio per guild, and the other
process's audio (gaps, its own pacing) while one stops.
"""

from __future__ import annotations

import re
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import attrs
import psutil
import pytest
import trio
import trio_asyncio
from prometheus_client.parser import text_string_to_metric_families

from musicbot.testing.harness import process_environment, reply_to
from musicbot.testing.leaks import census, no_leaks_since, rest_port
from musicbot.testing.loopback import FakeDiscord, FakeMember, Message, open_fake_discord
from musicbot.testing.loopback.snowflakes import shard_of
from musicbot.testing.media import MediaServer, open_media_server

SHARD_COUNT = 4
GUILDS = 8
STARTUP_TIMEOUT = 60
"""A cold process on a loaded 2-core machine, two of them starting at once."""
SHUTDOWN_LIMIT = 5.0
"""What `musicbot run` promises on SIGTERM (tests/e2e/test_process.py holds it too)."""
KILL_GRACE = 10.0
LONG_TONE = 60.0
"""Seconds: longer than the test, so the guilds that play it are still playing at its end."""
SHORT_TONE = 1.5
"""The song one process stores and the other plays from the store."""
STORED_TONE_HZ = 330
STORE_WAIT = 30.0
STORE_POLL = 0.25
PACKETS_PER_SECOND = 50
STALL_MS = 1000.0
"""A gap in the other process's audio this long is a stall (a lock held across processes, a
reconnection, a blocked loop), not this machine's scheduling: on a loaded 2-core machine
the players' pacing sees 100-270 ms hiccups (resyncs) with or without a process stopping
beside them, and they are reported, not asserted."""
HZ_TOLERANCE = 5


def tone_hz(guild: int) -> int:
    """Each guild's own tone, so that what a guild hears says who played it."""
    return 200 + 40 * guild


@attrs.define
class BotProcess:
    """One `musicbot run --shard-count 4 --shard-ids ...` child and its log."""

    name: str
    shard_ids: tuple[int, int]
    log_path: Path
    process: trio.Process
    spawned_at: float

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def shard_option(self) -> str:
        return f"{self.shard_ids[0]}-{self.shard_ids[1]}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics_url(self) -> str | None:
        found = re.search(r"metrics at (http://\S+)", self.log())
        return found.group(1) if found else None

    def ffmpeg(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [child for child in children if "ffmpeg" in child.name()]


async def start_bot(
    name: str, shard_ids: tuple[int, int], discord: FakeDiscord, cache_dir: Path, logs: Path
) -> BotProcess:
    env = process_environment(
        discord, cache_dir=cache_dir, MUSICBOT_LOG_LEVEL="INFO", MUSICBOT_METRICS_PORT="0"
    )
    shards = f"{shard_ids[0]}-{shard_ids[1]}"
    command = [sys.executable, "-m", "musicbot", "run", "--shard-count", str(SHARD_COUNT)]
    log_path = logs / f"bot-{name}.log"
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            [*command, "--shard-ids", shards], env=env, stderr=log
        )
    return BotProcess(name, shard_ids, log_path, process, trio.current_time())


async def stop_bot(bot: BotProcess) -> None:
    """SIGTERM, then SIGKILL if it has not exited in KILL_GRACE; always reaped."""
    if bot.process.returncode is None:
        bot.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(KILL_GRACE, shield=True):
            await bot.process.wait()
    if bot.process.returncode is None:
        bot.process.kill()
        with trio.CancelScope(shield=True):
            await bot.process.wait()


@asynccontextmanager
async def open_two_bots(
    discord: FakeDiscord, cache_dir: Path, logs: Path
) -> AsyncIterator[tuple[BotProcess, BotProcess]]:
    """Both processes started at once, on the same cache_dir; both stopped and reaped on the
    way out, and their logs printed (pytest shows them when the test fails)."""
    started: list[BotProcess] = []
    try:
        started.append(await start_bot("A", (0, 1), discord, cache_dir, logs))
        started.append(await start_bot("B", (2, 3), discord, cache_dir, logs))
        yield started[0], started[1]
    finally:
        for bot in started:
            await stop_bot(bot)
        for bot in started:
            print(f"----- log of process {bot.name} (pid {bot.pid}) -----\n{bot.log()}")


async def wait_serving(discord: FakeDiscord, bots: tuple[BotProcess, ...]) -> None:
    """Until every guild's shard is READY with its guilds, failing at once (with the reason
    from its log) if a process exits first."""

    async def fail_if_exits(bot: BotProcess) -> None:
        code = await bot.process.wait()
        reason = [line for line in bot.log().splitlines() if line.startswith("musicbot: ")]
        raise AssertionError(f"process {bot.name} exited ({code}) while starting: {reason}")

    async with trio.open_nursery() as watchers:
        for bot in bots:
            watchers.start_soon(fail_if_exits, bot)
        with trio.fail_after(STARTUP_TIMEOUT):
            await discord.wait_for(lambda: "play" in discord.commands, what="the commands")
            await discord.wait_ready()
        watchers.cancel_scope.cancel()


@pytest.fixture
async def world(media_cache: Path) -> AsyncIterator[tuple[FakeDiscord, MediaServer]]:
    async with (
        trio_asyncio.open_loop(),
        open_media_server(cache_dir=media_cache) as media,
        open_fake_discord(
            guilds=GUILDS,
            shards=SHARD_COUNT,
            identify_concurrency=SHARD_COUNT,
            wait_timeout=STARTUP_TIMEOUT,
        ) as discord,
    ):
        yield discord, media


@attrs.frozen
class Layout:
    """Which guild (numbered from 1) is on which shard, and so in which process."""

    discord: FakeDiscord
    a: BotProcess
    b: BotProcess

    def shard(self, guild: int) -> int:
        return shard_of(self.discord.guild(guild).id, SHARD_COUNT)

    def owner(self, guild: int) -> BotProcess:
        return self.a if self.shard(guild) in self.a.shard_ids else self.b

    def guilds_of(self, bot: BotProcess) -> list[int]:
        return [g for g in range(1, GUILDS + 1) if self.owner(g) is bot]


async def play(member: FakeMember, url: str) -> Message:
    answer = await reply_to(await member.slash("play", query=url))
    assert not answer.ephemeral, answer.content
    return answer


async def resources_fields(discord: FakeDiscord, guild: int) -> dict[str, str]:
    boss = discord.member(guild=guild, name="boss", admin=True)
    answer = await reply_to(await boss.slash("resources"))
    assert answer.ephemeral and answer.embeds, answer.content
    return {field.name: field.value for field in answer.embeds[0].fields}


def store_hit_rate(fields: dict[str, str]) -> int:
    found = re.search(r"hit rate (\d+)%", fields["Song store"])
    assert found, fields["Song store"]
    return int(found.group(1))


def stored_songs(fields: dict[str, str]) -> int:
    found = re.match(r"(\d+) songs", fields["Song store"])
    assert found, fields["Song store"]
    return int(found.group(1))


async def scrape(url: str) -> dict[str, float]:
    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    samples = {}
    for family in text_string_to_metric_families(await trio.to_thread.run_sync(fetch)):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@contextmanager
def figures(title: str) -> Iterator[list[str]]:
    lines: list[str] = []
    try:
        yield lines
    finally:
        print(f"{title}:\n  " + "\n  ".join(lines))


async def test_two_processes_split_the_shards_share_the_store_and_outlive_each_other(
    world: tuple[FakeDiscord, MediaServer], tmp_path: Path
) -> None:
    discord, media = world
    cache_dir = tmp_path / "cache"  # one cache_dir, one song store, for both processes
    async with open_two_bots(discord, cache_dir, tmp_path) as (a, b):
        layout = Layout(discord, a, b)
        with figures("figures") as shown:
            await every_shard_is_identified_by_its_process(layout, shown)
            await every_guild_is_answered_and_heard(layout, media, shown)
            await resources_and_metrics_name_the_owning_process(layout)
            await a_song_stored_by_one_process_plays_from_the_store_in_the_other(
                layout, media, shown
            )
            await stopping_one_process_leaves_the_other_playing(layout, shown)


async def every_shard_is_identified_by_its_process(layout: Layout, shown: list[str]) -> None:
    discord, a, b = layout.discord, layout.a, layout.b
    await wait_serving(discord, (a, b))
    identifies = discord.identifies()
    # Each shard identified once: no process ran a shard it was not given.
    assert sorted(shard for shard, _ in identifies) == [(s, SHARD_COUNT) for s in range(4)]
    for bot in (a, b):
        at = [when for (shard, _), when in identifies if shard in bot.shard_ids]
        shown.append(
            f"process {bot.name} (shards {bot.shard_option}): identified "
            f"{max(at) - bot.spawned_at:.1f} s after it was started"
        )
    for bot in (a, b):  # each has guilds: the layout tests what it means to
        assert len(layout.guilds_of(bot)) == GUILDS // 2


async def every_guild_is_answered_and_heard(
    layout: Layout, media: MediaServer, shown: list[str]
) -> None:
    """A long tone in every guild but the first of each process: the first of A plays the
    short song that B will find in the store; the first of B is kept for playing it."""
    discord = layout.discord
    first_a, first_b = layout.guilds_of(layout.a)[0], layout.guilds_of(layout.b)[0]
    asked_at: dict[int, float] = {}
    for guild in range(1, GUILDS + 1):
        if guild == first_b:
            continue
        member = discord.member(guild=guild, name="dj")
        await member.join_voice("Music")
        seconds = SHORT_TONE if guild == first_a else LONG_TONE
        hz = STORED_TONE_HZ if guild == first_a else tone_hz(guild)
        asked_at[guild] = trio.current_time()
        answer = await play(member, media.tone_url(hz, seconds))
        assert answer.embeds and answer.embeds[0].title == "Now playing"
    for guild, asked in asked_at.items():
        await discord.wait_for(
            lambda g=guild: len(discord.rtp_packets(g)) >= PACKETS_PER_SECOND // 2,
            what=f"audio in guild {guild}",
        )
        first = discord.rtp_packets(guild)[0].at
        heard = discord.audio(guild=guild, packets=slice(0, PACKETS_PER_SECOND // 2))
        want = STORED_TONE_HZ if guild == first_a else tone_hz(guild)
        assert heard.dominant_hz == pytest.approx(want, abs=HZ_TOLERANCE), guild
        shown.append(
            f"guild {guild} (shard {layout.shard(guild)}, process {layout.owner(guild).name}):"
            f" first audio {(first - asked) * 1000:.0f} ms after its /play"
        )


async def resources_and_metrics_name_the_owning_process(layout: Layout) -> None:
    discord = layout.discord
    for guild in range(1, GUILDS + 1):
        owner = layout.owner(guild)
        fields = await resources_fields(discord, guild)
        where = fields["Process"].splitlines()[0]
        assert re.fullmatch(
            rf"pid {owner.pid} on host \S+ · shards {owner.shard_option} of {SHARD_COUNT}"
            rf" · this server is on shard {layout.shard(guild)}",
            where,
        ), (guild, where)
    for bot in (layout.a, layout.b):
        # discord.py logs each shard it identified (once READY, long done by now): each
        # process's are its own two.
        logged = {int(n) for n in re.findall(r"Shard ID (\d+) has connected", bot.log())}
        assert logged == set(bot.shard_ids), (bot.name, logged)
        url = bot.metrics_url()
        assert url is not None, "the process did not log its metrics URL"
        samples = await scrape(url)
        info = [name for name in samples if name.startswith("musicbot_shard_info{")]
        assert len(info) == 1 and f'pid="{bot.pid}"' in info[0], info
        assert f'shards="{bot.shard_option}"' in info[0]
        assert samples["musicbot_shard_count"] == SHARD_COUNT
        connected = {
            shard: samples.get(f'musicbot_shard_connected{{shard="{shard}"}}')
            for shard in range(SHARD_COUNT)
        }
        assert connected == {s: (1.0 if s in bot.shard_ids else None) for s in range(4)}


async def wait_until_stored(discord: FakeDiscord, guild: int) -> None:
    """Until the process serving `guild` has a song in its store: a copy is committed once its
    song has played to its end. Another process's store has no event to wait on: its
    /resources is asked every STORE_POLL seconds, for at most STORE_WAIT."""
    with trio.fail_after(STORE_WAIT):
        while stored_songs(await resources_fields(discord, guild)) < 1:  # noqa: ASYNC110
            await trio.sleep(STORE_POLL)


async def a_song_stored_by_one_process_plays_from_the_store_in_the_other(
    layout: Layout, media: MediaServer, shown: list[str]
) -> None:
    """The short song played to its end in A's guild is kept by A; B, asked for the same link,
    plays it from the store: the media server is not asked for it again."""
    discord = layout.discord
    first_a, first_b = layout.guilds_of(layout.a)[0], layout.guilds_of(layout.b)[0]
    url = media.tone_url(STORED_TONE_HZ, SHORT_TONE)
    await wait_until_stored(discord, first_a)
    fetched = media.request_count(url)
    assert fetched >= 1  # A fetched it: the count sees fetches
    assert store_hit_rate(await resources_fields(discord, first_b)) == 0

    listener = discord.member(guild=first_b, name="dj")
    await listener.join_voice("Music")
    asked_at = trio.current_time()
    await play(listener, url)
    await discord.wait_for(
        lambda: len(discord.rtp_packets(first_b)) >= PACKETS_PER_SECOND,
        what=f"the stored song in guild {first_b}",
    )
    heard = discord.audio(guild=first_b)
    assert heard.dominant_hz == pytest.approx(STORED_TONE_HZ, abs=HZ_TOLERANCE)
    assert media.request_count(url) == fetched, "process B fetched the song A had stored"
    hit_rate = store_hit_rate(await resources_fields(discord, first_b))
    assert hit_rate > 0
    first = discord.rtp_packets(first_b)[0].at
    shown.append(
        f"guild {first_b} (process B): the song process A stored, first audio "
        f"{(first - asked_at) * 1000:.0f} ms after its /play, fetched 0 times "
        f"(A fetched it {fetched} times); B's store hit rate {hit_rate}%"
    )


async def pacing_of(bot: BotProcess) -> tuple[float, float]:
    """(frames missing over the last minute, frames sent late so far): the process's own view
    of its pacing, from its metrics."""
    url = bot.metrics_url()
    assert url is not None
    samples = await scrape(url)
    return samples["musicbot_frames_missing_last_minute"], samples["musicbot_frames_late_total"]


async def stopping_one_process_leaves_the_other_playing(layout: Layout, shown: list[str]) -> None:
    """SIGTERM to A: A's guilds see the bot leave voice and its ffmpeg go; B's long tones play
    on through A's shutdown and after it, with no packet lost, no voice or gateway reconnection
    and no stall; nothing of A's is left behind."""
    discord, a, b = layout.discord, layout.a, layout.b
    a_guilds = layout.guilds_of(a)
    playing_b = layout.guilds_of(b)[1:]
    a_ffmpeg = a.ffmpeg()
    assert len(a_ffmpeg) >= len(a_guilds) - 1  # one per long tone (the short one has ended)
    b_ffmpeg = len(b.ffmpeg())
    b_voices = {guild: discord.voice(guild) for guild in playing_b}
    b_pacing = await pacing_of(b)
    gateway = discord.statistics()
    before = census(ignore_ports={rest_port(discord)})

    stopped_at = trio.current_time()
    a.process.send_signal(signal.SIGTERM)
    with trio.fail_after(SHUTDOWN_LIMIT):
        returncode = await a.process.wait()
    exited_at = trio.current_time()
    assert returncode == 0, a.log()
    for guild in a_guilds:
        await discord.wait_bot_voice(guild=guild, channel=None)
    assert not [child for child in a_ffmpeg if child.is_running()]

    marks = {guild: len(discord.rtp_packets(guild)) for guild in playing_b}
    await discord.wait_for(
        lambda: all(
            len(discord.rtp_packets(g)) >= marks[g] + PACKETS_PER_SECOND for g in playing_b
        ),
        what="a second more of B's guilds after A exited",
    )
    until = trio.current_time()
    span = until - stopped_at
    worst_gap = worst_gap_before = 0.0
    for guild in playing_b:
        during = discord.audio(guild=guild, since=stopped_at, until=until)
        assert during.sequence_gaps == 0, (guild, during)  # not a packet lost
        assert during.spacing_max_ms < STALL_MS, (guild, during)  # and they kept coming
        assert during.dominant_hz == pytest.approx(tone_hz(guild), abs=HZ_TOLERANCE)
        voice, earlier = discord.voice(guild), b_voices[guild]
        assert voice.connected and voice.channel == "Music", voice
        # The same voice session throughout: B's voice was never reconnected.
        assert (voice.sessions_opened, voice.sessions_closed) == (
            earlier.sessions_opened,
            earlier.sessions_closed,
        )
        worst_gap = max(worst_gap, during.spacing_max_ms)
        calm = discord.audio(guild=guild, since=stopped_at - span, until=stopped_at)
        worst_gap_before = max(worst_gap_before, calm.spacing_max_ms)
    after = discord.statistics()
    # B's gateway never noticed: no new IDENTIFY or RESUME, its two shards still connected.
    assert (after.identifies, after.resumes) == (gateway.identifies, gateway.resumes)
    assert after.gateway_connections == 2
    assert len(b.ffmpeg()) == b_ffmpeg
    missing, late = await pacing_of(b)
    now_playing = await reply_to(
        await discord.member(guild=playing_b[0], name="dj").slash("nowplaying")
    )
    assert not now_playing.ephemeral
    await no_leaks_since(before, ignore_ports={rest_port(discord)})
    shown.append(
        f"process A exited {(exited_at - stopped_at) * 1000:.0f} ms after SIGTERM; B's "
        f"{len(playing_b)} playing guilds over those {span:.1f} s and one more: no packet "
        f"lost, largest gap between packets {worst_gap:.0f} ms (over the {span:.1f} s before: "
        f"{worst_gap_before:.0f} ms); B's own pacing: {missing - b_pacing[0]:.0f} frames "
        f"missed, {late - b_pacing[1]:.0f} late"
    )
