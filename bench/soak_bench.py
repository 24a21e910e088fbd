"""soak: resident memory, file descriptors, threads and child processes of a real `musicbot run`
over 2,000 join, play, skip and leave cycles in 20 guilds of the loopback Discord (300 quick).

The bot is a process of its own, so what psutil samples is the bot alone: the loopback Discord
and the media server run in this process. A cycle in one guild: a member joins "Music", `/play`s
a tone, the loopback Discord hears 5 RTP packets, `/skip`, `/leave`, the bot leaves voice, the
member leaves. Every answer is checked; a wrong one or a stuck wait is counted as an error (by
step) and the guild recovers (the bot asked to leave) before its next cycle. The 20 guilds cycle
at once, one Trio task each. The first cycle of each guild plays one of four short tones to its
end, so the store keeps them: later plays of those (four in five) come from the processed-song
store and the track cache, no ffmpeg; one play in five is of a long tone that is always skipped,
so it is never stored and runs ffmpeg every time.

Two limits of Discord's shape the run. Each cycle sends two voice state updates on the guild's
gateway shard, and discord.py holds a shard to 110 sends a minute (Discord allows 120) by
stalling it for up to a minute, which makes voice joins time out: so the loopback Discord
recommends 20 shards (one guild on each: its guilds' ids are consecutive milliseconds), and a
guild starts a cycle at most every `CYCLE_PERIOD` seconds.

Growth: the first 10 % of each guild's cycles (at least its first) are a warm-up, not measured.
Memory, descriptors, threads and child processes are judged at two quiet points: after the
warm-up and after the last cycle, with nobody in voice, the bench leaves the bot alone for
`QUIET_SECONDS` and samples. Cycles in flight hold sockets, pipes, ffmpeg processes and the
buffers of up to 20 voice connections, so samples taken while cycling swing with how many are
in flight and with the sweep; the quiet points compare like with like. The growth per 1,000
cycles is the change between them, divided by the measured cycles. Resident memory is what an
operator sees: it includes what the C allocator keeps after Python frees it. The bot's sweep
gives that back (glibc's malloc_trim); the soak runs it every `SWEEP_SECONDS`, since it packs
hours of a busy bot's joins and leaves into minutes. The samples taken every 20 measured cycles
while cycling are reported too: their least-squares slope over the run, and over its second
half (a ramp to a steady state flattens there, a leak does not).

Quiet means waiting out the timers that legitimately hold resources after a leave: Trio's idle
worker threads (10 s), and aiohttp's keep-alive connections, idle 15 s before its cleanup,
which runs every 15 s, closes them: up to 31 s after their last request. (discord.py's
`voice-socket-reader` thread of each voice connection used to sit in a 30 s `select()` after a
disconnect, holding the whole connection: about 400 of them alive while cycling; musicbot's
MusicVoiceClient wakes it at the leave now.) `settled_after_seconds` says when the counts
stopped moving; descriptors that differ between the quiet points are listed by kind.
The verdict: resident memory under 5 MB per 1,000 cycles, no more descriptors or threads at
the end than after the warm-up, and no child process at either.
"""

from __future__ import annotations

import math
import re
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import psutil
import trio
import trio_asyncio

from musicbot.testing.harness import process_environment, reply_to
from musicbot.testing.loopback import FakeDiscord, FakeMember, Message, open_fake_discord
from musicbot.testing.loopback.snowflakes import shard_of
from musicbot.testing.media import MediaServer, open_media_server

GUILDS = 20
SHARDS = GUILDS
"""One guild per shard."""
CYCLE_PERIOD = 1.2
"""Seconds between the starts of one guild's cycles at the fastest: two voice state updates
per cycle stay under discord.py's 110 gateway sends a minute per shard."""
SAMPLE_EVERY = 20
"""Measured cycles (all guilds together) between samples while cycling."""
WARM_UP = 0.1
"""The fraction of each guild's cycles not measured (at least its first)."""
HEARD_PACKETS = 5
"""RTP packets the loopback Discord must hear before the cycle skips."""
STORED_TONES = (330, 440, 550, 660)
STORED_SECONDS = 5.0
"""Played to the end once in the warm-up; long enough never to end before a /skip."""
COLD_TONES = (250, 770)
COLD_SECONDS = 60.0
"""Always skipped, so never stored: every play of one runs ffmpeg."""
COLD_EVERY = 5
"""One play in this many is of a cold tone."""
SWEEP_SECONDS = 10.0
"""The bot's idle sweep interval (5 minutes by default). The sweep gives the heap's free pages
back to the OS; the soak packs an hour's worth of a busy bot's cycles into each minute, so it
sweeps as much more often."""
QUIET_SECONDS = 35.0
"""How long the bot is left alone before a quiet sample: past aiohttp's keep-alive cleanup
(up to 31 s) and Trio's idle worker threads (10 s), and at least one sweep."""
STARTUP_SECONDS = 60.0
WAIT_SECONDS = 20.0
"""The loopback Discord's bound on waits (a follow-up, audio, the bot leaving): generous, so a
slow cycle shows in cycle_seconds and only a stuck one is an error."""
STOP_SECONDS = 10.0
SLOW_LEAVE = 1.5
"""A /leave slower than this (seconds to the bot out of voice) is counted as slow: the bot
bounds its voice disconnect at 2 s."""
MB = 2**20


@attrs.frozen
class Sample:
    cycles: int
    """Measured cycles done when it was taken."""
    rss: int
    fds: int
    threads: int
    children: int
    """Child processes, recursively."""

    def counts(self) -> tuple[int, int, int]:
        return self.fds, self.threads, self.children


class CycleError(Exception):
    """An answer that was not the expected kind; `step` names the command."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"{step}: {detail}")
        self.step = step


@attrs.define
class Soak:
    discord: FakeDiscord
    media: MediaServer
    bot: psutil.Process
    measuring: bool = False
    done: int = 0
    """Cycles finished (failed ones too) in the current phase."""
    samples: list[Sample] = attrs.Factory(list)
    cycle_seconds: list[float] = attrs.Factory(list)
    """Measured cycles that succeeded: from joining voice to the member leaving."""
    audio_seconds: list[float] = attrs.Factory(list)
    """Measured cycles that succeeded: from sending /play to hearing HEARD_PACKETS."""
    leave_seconds: list[float] = attrs.Factory(list)
    """Measured cycles that succeeded: from sending /leave to the bot out of voice."""
    errors: Counter[str] = attrs.Factory(Counter)
    first_errors: list[str] = attrs.Factory(list)
    plays: Counter[str] = attrs.Factory(Counter)

    def sample(self) -> Sample:
        with self.bot.oneshot():
            return Sample(
                cycles=self.done if self.measuring else 0,
                rss=self.bot.memory_info().rss,
                fds=self.bot.num_fds(),
                threads=self.bot.num_threads(),
                children=len(self.bot.children(recursive=True)),
            )

    def descriptors(self) -> Counter[str]:
        """The bot's open descriptors by kind: a socket by type, address family and state, a
        file by path, anything else by what /proc names it."""
        kinds: Counter[str] = Counter()
        sockets = {
            conn.fd: f"socket {conn.type.name} {conn.family.name} {conn.status}"
            for conn in self.bot.net_connections(kind="all")
        }
        for entry in Path(f"/proc/{self.bot.pid}/fd").iterdir():
            try:
                target = entry.readlink().as_posix()
            except OSError:
                continue  # closed while listing
            if target.startswith("socket:"):
                kinds[sockets.get(int(entry.name), "socket (unix or unlisted)")] += 1
            else:
                kinds[re.sub(r"\[\d+\]$", "", target)] += 1
        return kinds

    def url(self, guild: int, cycle: int) -> str:
        if cycle == 0:
            self.plays["stored by playing to the end"] += 1
            tone = STORED_TONES[guild % len(STORED_TONES)]
            return self.media.tone_url(tone, STORED_SECONDS)
        turn = guild + cycle
        if turn % COLD_EVERY == 0:
            self.plays["cold (ffmpeg)"] += 1
            tone = COLD_TONES[turn // COLD_EVERY % len(COLD_TONES)]
            return self.media.tone_url(tone, COLD_SECONDS)
        self.plays["stored"] += 1
        return self.media.tone_url(STORED_TONES[turn % len(STORED_TONES)], STORED_SECONDS)

    async def run_cycles(self, first: int, last: int) -> None:
        """Cycles `first` to `last - 1` of every guild, the guilds at once."""
        async with trio.open_nursery() as guilds:
            for guild in range(1, GUILDS + 1):
                guilds.start_soon(self.guild, guild, first, last)

    async def guild(self, guild: int, first: int, last: int) -> None:
        member = self.discord.member(guild=guild, name="dj")
        for cycle in range(first, last):
            next_start = trio.current_time() + CYCLE_PERIOD
            started = time.perf_counter()
            try:
                url = self.url(guild, cycle)
                heard, leaving = await self.cycle(member, url, play_through=cycle == 0)
            except (CycleError, trio.TooSlowError) as error:
                step = error.step if isinstance(error, CycleError) else "timeout"
                self.errors[step] += 1
                if len(self.first_errors) < 10:
                    seen = self.seen(guild)
                    self.first_errors.append(f"guild {guild} cycle {cycle}: {error} ({seen})")
                await self.recover(member)
            else:
                if self.measuring:
                    self.cycle_seconds.append(time.perf_counter() - started)
                    self.audio_seconds.append(heard)
                    self.leave_seconds.append(leaving)
            self.done += 1
            if self.measuring and self.done % SAMPLE_EVERY == 0:
                self.samples.append(self.sample())
            await trio.sleep_until(next_start)

    async def cycle(
        self, member: FakeMember, url: str, *, play_through: bool
    ) -> tuple[float, float]:
        """One join, play, skip, leave; returns the seconds from /play to hearing it and from
        /leave to the bot out of voice. `play_through` hears the whole tone instead of skipping
        it, so the store keeps it."""
        guild = member.guild
        self.discord.clear_audio(guild)
        await member.join_voice("Music")
        sent = time.perf_counter()
        played = await reply_to(await member.slash("play", query=url))
        _expect(played, "play", not played.ephemeral and _title(played) == "Now playing")
        packets = int(STORED_SECONDS * 50) - 5 if play_through else HEARD_PACKETS
        await self.discord.wait_for(
            lambda: len(self.discord.rtp_packets(guild)) >= packets,
            what=f"{packets} RTP packets in guild {guild}",
        )
        heard = time.perf_counter() - sent
        if play_through:
            await trio.sleep(0.5)  # the end of the tone
        else:
            skipped = await reply_to(await member.slash("skip"))
            _expect(skipped, "skip", not skipped.ephemeral and _starts(skipped, "⏭ Skipped"))
        asked = time.perf_counter()
        left = await reply_to(await member.slash("leave"))
        _expect(left, "leave", not left.ephemeral and _starts(left, "Left "))
        await self.discord.wait_bot_voice(guild, channel=None)
        leaving = time.perf_counter() - asked
        await member.leave_voice()
        self.discord.clear_audio(guild)
        return heard, leaving

    def seen(self, guild: int) -> str:
        """What the loopback Discord saw of the guild's cycle, for an error report."""
        posts = self.discord.channel_messages(guild=guild)
        last = (posts[-1].content or _title(posts[-1])) if posts else None
        heard = len(self.discord.rtp_packets(guild))
        return f"{heard} RTP packets heard; the bot's last post in the channel: {last!r}"

    async def recover(self, member: FakeMember) -> None:
        """After a failed cycle: the bot out of voice (asked to leave), then the member."""
        guild = member.guild
        with trio.move_on_after(WAIT_SECONDS) as bounded:
            if self.discord.bot_voice_channel(guild) is not None:
                await member.join_voice("Music")
                await reply_to(await member.slash("leave"))
                await self.discord.wait_bot_voice(guild, channel=None)
        if bounded.cancelled_caught:
            self.errors["recovery"] += 1
        await member.leave_voice()
        self.discord.clear_audio(guild)

    async def wait_quiet(self) -> tuple[Sample, float]:
        """Leave the bot alone for QUIET_SECONDS, then sample; and the seconds after which the
        descriptor, thread and child process counts stopped moving."""
        started = trio.current_time()
        last = self.sample()
        settled = 0.0
        while (waited := trio.current_time() - started) < QUIET_SECONDS:
            await trio.sleep(0.5)
            now = self.sample()
            if now.counts() != last.counts():
                settled = waited
            last = now
        return last, settled


def _title(message: Message) -> str | None:
    return message.embeds[0].title if message.embeds else None


def _starts(message: Message, prefix: str) -> bool:
    return (message.content or "").startswith(prefix)


def _expect(message: Message, step: str, ok: bool) -> None:
    if not ok:
        text = message.content or _title(message) or "nothing"
        ephemeral = " (ephemeral)" if message.ephemeral else ""
        raise CycleError(step, f"unexpected answer{ephemeral}: {text!r}")


def _slope(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of y over x."""
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def _while_cycling(samples: list[Sample], field: str, scale: float = 1) -> dict[str, float]:
    points = [(float(s.cycles), getattr(s, field) / scale) for s in samples]
    return {
        "start": points[0][1],
        "end": points[-1][1],
        "max": max(y for _, y in points),
        "per_1000_cycles": _slope(points) * 1000,
    }


def _quiet(
    start: Sample, end: Sample, field: str, cycles: int, scale: float = 1
) -> dict[str, float]:
    first, last = getattr(start, field) / scale, getattr(end, field) / scale
    return {"start": first, "end": last, "per_1000_cycles": (last - first) / cycles * 1000}


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan}
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, round(len(ordered) * 0.99))],
        "max": ordered[-1],
    }


def _environment(discord_: FakeDiscord, cache_dir: Path) -> dict[str, str]:
    return process_environment(
        discord_,
        cache_dir=cache_dir,
        MUSICBOT_MAX_CONNECTIONS=str(GUILDS),
        MUSICBOT_CLEANUP_INTERVAL=str(SWEEP_SECONDS),
    )


GOAL = (
    "when quiet: resident memory under 5 MB per 1,000 cycles, no more descriptors or threads at "
    "the end than after the warm-up and no child process; every cycle done without an error"
)


async def _soak(quick: bool) -> dict[str, Any]:
    cycles_per_guild = 15 if quick else 100
    warm_up = max(1, math.ceil(cycles_per_guild * WARM_UP))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="musicbot-soak-") as scratch:
        cache_dir, log_path = Path(scratch) / "cache", Path(scratch) / "bot.log"
        async with (
            trio_asyncio.open_loop(),
            open_media_server() as media,
            open_fake_discord(
                guilds=GUILDS,
                shards=SHARDS,
                identify_concurrency=SHARDS,
                wait_timeout=WAIT_SECONDS,
            ) as discord_,
        ):
            for tone in STORED_TONES:
                await media.tone_file(tone, STORED_SECONDS)
            for tone in COLD_TONES:
                await media.tone_file(tone, COLD_SECONDS)
            with log_path.open("wb") as log:
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "musicbot", "run"],
                    env=_environment(discord_, cache_dir),
                    stderr=log,
                )
            result: dict[str, Any]
            try:
                result = await _drive(discord_, media, process, cycles_per_guild, warm_up)
            except Exception as error:  # a soak that could not finish is a result too
                result = {"failure": f"{type(error).__name__}: {error}"}
            finally:
                stopped = await _stop(process)
            result.update(stopped)
            result["songs_stored"] = len(list((cache_dir / "songs").glob("*.opus")))
            log_text = log_path.read_text(errors="replace")
            result["gateway_ratelimited"] = log_text.count("is ratelimited")
            if "failure" in result or result["errors"] or result["exit_status"] != 0:
                result["bot_log_tail"] = "\n".join(log_text.splitlines()[-40:])
    result["goal"] = GOAL
    result["wall_seconds"] = time.perf_counter() - started
    result["met"] = "failure" not in result and (
        result["rss_mb_quiet"]["per_1000_cycles"] < 5
        and result["fds_quiet"]["end"] <= result["fds_quiet"]["start"]
        and result["threads_quiet"]["end"] <= result["threads_quiet"]["start"]
        and result["children_quiet"]["start"] == result["children_quiet"]["end"] == 0
        and result["errors"] == 0
        and result["cycles_done"] == result["cycles"]
        and result["exit_status"] == 0
        and result["children_left"] == 0
    )
    return result


async def _drive(
    discord_: FakeDiscord,
    media: MediaServer,
    process: trio.Process,
    cycles_per_guild: int,
    warm_up: int,
) -> dict[str, Any]:
    with trio.fail_after(STARTUP_SECONDS):
        await discord_.wait_for(lambda: "play" in discord_.commands, what="the bot's login")
        await discord_.wait_ready()
    soak = Soak(discord_, media, psutil.Process(process.pid))
    logged_in = soak.sample()
    await soak.run_cycles(0, warm_up)
    warm_up_done = soak.done
    start, start_settled = await soak.wait_quiet()
    start_descriptors = soak.descriptors()
    soak.measuring, soak.done = True, 0
    await soak.run_cycles(warm_up, cycles_per_guild)
    if soak.done % SAMPLE_EVERY:
        soak.samples.append(soak.sample())
    end, end_settled = await soak.wait_quiet()
    end_descriptors = soak.descriptors()
    end_descriptors.subtract(start_descriptors)
    measured = soak.done
    shards = Counter(shard_of(guild.id, SHARDS) for guild in discord_.guilds)
    return {
        "guilds": GUILDS,
        "shards": SHARDS,
        "most_guilds_on_a_shard": max(shards.values()),
        "cycles": GUILDS * cycles_per_guild,
        "cycles_done": warm_up_done + measured,
        "warm_up_cycles": warm_up_done,
        "measured_cycles": measured,
        "errors": sum(soak.errors.values()),
        "errors_by_step": dict(soak.errors),
        "first_errors": soak.first_errors,
        "plays": dict(soak.plays),
        "rss_mb": _while_cycling(soak.samples, "rss", MB),
        "rss_mb_second_half": _while_cycling(
            [s for s in soak.samples if s.cycles >= measured / 2], "rss", MB
        ),
        "fds": _while_cycling(soak.samples, "fds"),
        "threads": _while_cycling(soak.samples, "threads"),
        "children": _while_cycling(soak.samples, "children"),
        "rss_mb_quiet": _quiet(start, end, "rss", measured, MB),
        "fds_quiet": _quiet(start, end, "fds", measured),
        "threads_quiet": _quiet(start, end, "threads", measured),
        "children_quiet": _quiet(start, end, "children", measured),
        "logged_in": attrs.asdict(logged_in),
        "descriptors_quiet_change": {kind: n for kind, n in end_descriptors.items() if n},
        "settled_after_seconds": {"start": start_settled, "end": end_settled},
        "cycle_seconds": _percentiles(soak.cycle_seconds),
        "play_to_audio_seconds": _percentiles(soak.audio_seconds),
        "leave_seconds": _percentiles(soak.leave_seconds),
        "slow_leaves": sum(seconds > SLOW_LEAVE for seconds in soak.leave_seconds),
        "samples": [attrs.astuple(sample) for sample in soak.samples],
    }


async def _stop(process: trio.Process) -> dict[str, Any]:
    """SIGTERM the bot and wait for it (SIGKILL after STOP_SECONDS); count, and kill, what it
    left behind."""
    with trio.CancelScope(shield=True):
        try:
            children = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_SECONDS):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        left = [child for child in children if child.is_running()]
        for child in left:
            child.kill()
    return {"exit_status": process.returncode, "children_left": len(left)}


def run(quick: bool) -> dict[str, Any]:
    return trio.run(_soak, quick)


def table(result: dict[str, Any]) -> list[str]:
    verdict = f"goal: {result['goal']}: {'met' if result['met'] else 'NOT met'}"
    if "failure" in result:
        tail = result.get("bot_log_tail", "")
        return [f"soak failed: {result['failure']}", "", "```", tail, "```", "", verdict]

    def row(name: str, values: dict[str, float], digits: int = 0) -> str:
        start, end, growth = values["start"], values["end"], values["per_1000_cycles"]
        return f"| {name} | {start:.{digits}f} | {end:.{digits}f} | {growth:+.{max(digits, 1)}f} |"

    cycles, audio, leave = (
        result["cycle_seconds"],
        result["play_to_audio_seconds"],
        result["leave_seconds"],
    )
    errors = ", ".join(f"{n} {step}" for step, n in result["errors_by_step"].items()) or "none"
    return [
        "| soak | start (after warm-up) | end | growth per 1,000 cycles |",
        "| --- | ---: | ---: | ---: |",
        row("resident memory (MB), quiet", result["rss_mb_quiet"], 1),
        row("file descriptors, quiet", result["fds_quiet"]),
        row("threads, quiet", result["threads_quiet"]),
        row("child processes, quiet", result["children_quiet"]),
        row("resident memory (MB), while cycling", result["rss_mb"], 1),
        row("resident memory (MB), while cycling, second half", result["rss_mb_second_half"], 1),
        row("file descriptors, while cycling", result["fds"]),
        row("threads, while cycling", result["threads"]),
        row("child processes, while cycling", result["children"]),
        "",
        f"{result['cycles_done']:,} of {result['cycles']:,} join/play/skip/leave cycles in "
        f"{result['guilds']} guilds on {result['shards']} shards ({result['warm_up_cycles']:,} "
        f"warm-up, {result['measured_cycles']:,} measured), {result['wall_seconds']:.0f} s wall "
        f"time; errors: {errors}.",
        f"A cycle took {cycles['p50']:.2f} s (p50), "
        f"{cycles['p99']:.2f} s (p99), {cycles['max']:.2f} s (max); /play to audio "
        f"{audio['p50']:.2f} / {audio['p99']:.2f} / {audio['max']:.2f} s; /leave to out of "
        f"voice {leave['p50']:.2f} / {leave['p99']:.2f} / {leave['max']:.2f} s "
        f"({result['slow_leaves']} over {SLOW_LEAVE:g} s).",
        "Quiet points: counts "
        f"settled {result['settled_after_seconds']['start']:.0f} s and "
        f"{result['settled_after_seconds']['end']:.0f} s after the last cycle; "
        f"peak while cycling: {result['threads']['max']:.0f} threads, "
        f"{result['fds']['max']:.0f} descriptors.",
        "Descriptors that differ between the quiet points: "
        + (
            ", ".join(f"{n:+d} {kind}" for kind, n in result["descriptors_quiet_change"].items())
            or "none"
        )
        + ".",
        "",
        verdict,
    ]
