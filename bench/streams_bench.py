"""streams: how many concurrent streams from the processed-song store one process sustains.

Every packet goes through discord.py's real voice send path (RTP header, XChaCha20-Poly1305
encryption, `sendto`) over real UDP to `musicbot.testing.rtp_sink`, a receiver in another
process that answers IP discovery and times each packet's arrival. The loopback Discord (its
gateway and voice websockets, idle once the handshakes are done) runs in the sender's process
and so is charged to both contenders alike.

- musicbot: the real app (`open_loopback_bot`): members join voice in N guilds and `/play` a
  song that is already in the store, so every stream is store passthrough in a GuildPlayer.
- baseline: a plain discord.py client in the same kind of process, joining the same channels
  and playing the same stored Ogg file with `voice_client.play(FFmpegOpusAudio(path,
  codec="copy"))`: discord.py's AudioPlayer thread and one ffmpeg per stream.

Streams are added in steps; at each step the receiver measures a window once the new streams
have settled. A step passes when missing frames are under 0.1 % and the p99 lateness under
5 ms (both as the receiver saw them); the figure is the largest step that passed.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import discord
import imageio_ffmpeg
import trio
import trio_asyncio
from baseline_bot import open_client

from musicbot.testing.harness import open_loopback_bot, reply_to
from musicbot.testing.loopback import open_fake_discord
from musicbot.testing.rtp_sink import Sink, open_rtp_sink

MISSING_LIMIT = 0.001
P99_LIMIT_MS = 5.0
LEAVE_TIMEOUT = 5.0
"""The baseline's voice timeout (connect, and the wait for a leave's confirmation)."""
JOINS_AT_ONCE = 4
"""Streams started at once while adding a step (join voice, /play): what is measured is
streams sustained, not a burst of joins, which the process hosting the loopback Discord too
would feel twice."""
SONG_SECONDS = 600  # longer than any run: no stream ends while measured


async def _ramp(
    sink: Sink,
    levels: Sequence[int],
    add_streams: Callable[[int, int], Awaitable[int]],
    settle: float,
    window: float,
    sender: Callable[[], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Add streams up to each level; measure a window at each; stop at the first failure."""
    steps: list[dict[str, Any]] = []
    playing = 0
    for level in levels:
        started = time.perf_counter()
        start_failures = await add_streams(playing, level)
        playing = level
        setup = time.perf_counter() - started
        await trio.sleep(settle)
        await sink.mark()
        cpu_before = time.process_time()
        await trio.sleep(window)
        cpu = (time.process_time() - cpu_before) / window
        report = await sink.report()
        missing = report["missing"] / max(report["expected"], 1)
        step = {
            "streams": level,
            "setup_seconds": setup,
            "start_failures": start_failures,  # a /play (or connect) that did not start
            "cpu_share": cpu,  # of one core, the sender's whole process
            "streams_heard": report["streams"],
            "missing_ratio": missing,
            "p99_ms": report["lateness_ms"]["p99"],
            "passed": (
                not start_failures
                and report["streams"] >= level
                and missing < MISSING_LIMIT
                and report["lateness_ms"]["p99"] < P99_LIMIT_MS
            ),
            "receiver": report,
        }
        if sender is not None:
            step["sender"] = sender()
        steps.append(step)
        print(
            f"  {level:5d} streams: missing {missing:.4%}, p99 {step['p99_ms']:.2f} ms, "
            f"heard {report['streams']}, setup {setup:.1f} s ({start_failures} failed), "
            f"cpu {cpu:.0%}" + ("" if step["passed"] else "  (failed)"),
            file=sys.stderr,
            flush=True,
        )
        if not step["passed"]:
            break
    return steps


async def _start_all(start: Callable[[int], Awaitable[None]], guilds: range) -> int:
    """Start a stream in each guild, `JOINS_AT_ONCE` at a time. At the first that fails the
    rest are not tried (the step has failed); returns how many did not start."""
    started = 0

    async def one(guild: int, nursery: trio.Nursery) -> None:
        nonlocal started
        try:
            await start(guild)
        except Exception as exc:
            print(f"    guild {guild} did not start: {exc!r}", file=sys.stderr, flush=True)
            nursery.cancel_scope.cancel()
        else:
            started += 1

    async with trio.open_nursery() as nursery:
        for guild in guilds:
            nursery.start_soon(one, guild, nursery)
    return len(guilds) - started


def _shards_for(guilds: int) -> int:
    """discord.py allows 110 gateway commands a minute per shard, and each voice join is one:
    a bot joining hundreds of channels at once needs shards, as it would on Discord (where a
    bot in that many guilds has them, and a max_concurrency of 16 to start them together)."""
    return max(1, guilds // 50)


async def _musicbot(
    levels: Sequence[int], settle: float, window: float, song: Path
) -> list[dict[str, Any]]:
    """musicbot's steps; the stored song's file is copied to `song` for the baseline."""
    most = max(levels)
    async with (
        open_rtp_sink() as sink,
        open_loopback_bot(
            guilds=most,
            shards=_shards_for(most),
            identify_concurrency=16,
            voice_udp=sink.address,
            max_connections=most,
            log_level="ERROR",
        ) as bot,
    ):
        discord_, app = bot.discord, bot.app
        url = bot.media.tone_url(440, SONG_SECONDS)
        resolved = await app.supervisor.resolve(url)
        await app.source.warm(resolved.tracks[0])
        stored = await app.store.lookup(app.store.key_for(resolved.tracks[0]))
        assert stored is not None, "the song did not make it into the store"
        shutil.copy(stored.path, song)  # the store's directory goes with the bot
        limiter = trio.CapacityLimiter(JOINS_AT_ONCE)

        async def play(guild: int) -> None:
            async with limiter:
                member = discord_.member(guild=guild, name="dj")
                await member.join_voice("Music")
                answer = await reply_to(await member.slash("play", query=url))
                if answer.ephemeral:
                    raise RuntimeError(answer.content)

        async def add_streams(playing: int, level: int) -> int:
            return await _start_all(play, range(playing + 1, level + 1))

        def sender() -> dict[str, Any]:
            stats = app.supervisor.statistics()
            return {"frames_sent": stats.frames_sent, "frames_late": stats.frames_late}

        return await _ramp(sink, levels, add_streams, settle, window, sender)


class _PlainClient(discord.AutoShardedClient):
    """The baseline's client: discord.py as its documentation shows it, sharded like musicbot."""

    def __init__(self, connector: aiohttp.BaseConnector) -> None:
        intents = discord.Intents.none()
        intents.guilds = intents.voice_states = True
        super().__init__(intents=intents, connector=connector, guild_ready_timeout=0.05)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Start every shard at once (start-up is not what is measured here)."""


async def _baseline(
    levels: Sequence[int], settle: float, window: float, song: Path
) -> list[dict[str, Any]]:
    most = max(levels)
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    async with (
        open_rtp_sink() as sink,
        trio_asyncio.open_loop(),
        open_fake_discord(guilds=most, shards=_shards_for(most), voice_udp=sink.address) as fake,
        open_client(fake, _PlainClient) as client,
    ):
        voices: list[discord.VoiceClient] = []
        limiter = trio.CapacityLimiter(JOINS_AT_ONCE)

        async def start(guild: int) -> None:
            channel = client.get_channel(fake.guild(guild).channel_id("Music"))
            assert isinstance(channel, discord.VoiceChannel)

            async def connect_and_play() -> None:
                voice = await channel.connect(self_deaf=True, timeout=LEAVE_TIMEOUT)
                voices.append(voice)
                voice.play(discord.FFmpegOpusAudio(str(song), codec="copy", executable=ffmpeg))

            async with limiter:
                await trio_asyncio.aio_as_trio(connect_and_play)()

        async def add_streams(playing: int, level: int) -> int:
            return await _start_all(start, range(playing + 1, level + 1))

        async def leave_all() -> None:
            # At once: discord.py waits for each leave's confirmation (it loses some; that
            # wait is the connect timeout) and swallows the cancellation meant to end it.
            await asyncio.gather(*(v.disconnect(force=True) for v in voices))

        try:
            return await _ramp(sink, levels, add_streams, settle, window)
        finally:
            for voice in voices:
                voice.stop()  # ffmpeg is killed and reaped by discord.py's cleanup
            with trio.CancelScope(shield=True):
                await trio_asyncio.aio_as_trio(leave_all)()


def _largest(steps: list[dict[str, Any]]) -> int:
    passed = [step["streams"] for step in steps if step["passed"]]
    return max(passed, default=0)


def run(quick: bool) -> dict[str, Any]:
    settle, window = (2.0, 5.0) if quick else (3.0, 10.0)
    ours = [100, 200, 300] if quick else [100, 150, 200, 250, 300, 400, 500, 750, 1000]
    theirs = [25, 50, 100] if quick else [25, 50, 75, 100, 150, 200, 250, 300]
    with tempfile.TemporaryDirectory(prefix="musicbot-streams-") as scratch:
        song = Path(scratch) / "song.opus"
        print("  musicbot (store passthrough in GuildPlayers):", file=sys.stderr, flush=True)
        musicbot = trio.run(_musicbot, ours, settle, window, song)
        print("  baseline (AudioPlayer + FFmpegOpusAudio):", file=sys.stderr, flush=True)
        baseline = trio.run(_baseline, theirs, settle, window, song)
    best, theirs_best = _largest(musicbot), _largest(baseline)
    ratio = best / theirs_best if theirs_best else float("inf")
    # A ramp that never failed only shows a lower bound.
    return {
        "musicbot": {"largest": best, "bounded": not musicbot[-1]["passed"], "steps": musicbot},
        "baseline": {
            "largest": theirs_best,
            "bounded": not baseline[-1]["passed"],
            "steps": baseline,
        },
        "ratio": ratio,
        "limits": {"missing_ratio": MISSING_LIMIT, "p99_ms": P99_LIMIT_MS},
        "goal": "at least 500 streams and at least 5 times the baseline",
        "met": best >= 500 and ratio >= 5,
    }


def table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| streams (store, real send path, UDP to another process) | largest N | "
        "missing at N | p99 lateness at N |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, label in (
        ("musicbot", "musicbot (GuildPlayer, store passthrough)"),
        ("baseline", "discord.py AudioPlayer + FFmpegOpusAudio"),
    ):
        entry = result[name]
        at = [step for step in entry["steps"] if step["streams"] == entry["largest"]]
        bound = "" if entry["bounded"] else " (the ramp's top; no step failed)"
        if at:
            step = at[0]
            lines.append(
                f"| {label} | {entry['largest']:,}{bound} | {step['missing_ratio']:.3%} "
                f"| {step['p99_ms']:.2f} ms |"
            )
        else:
            lines.append(f"| {label} | 0 | - | - |")
        failed = [step for step in entry["steps"] if not step["passed"]]
        if failed:
            step = failed[0]
            lines.append(
                f"| {label}, first failing step | {step['streams']:,} "
                f"| {step['missing_ratio']:.3%} | {step['p99_ms']:.2f} ms |"
            )
    verdict = "met" if result["met"] else "NOT met"
    lines += [
        "",
        f"musicbot / baseline: {result['ratio']:.1f}x (goal: {result['goal']}: {verdict})",
    ]
    return lines


if __name__ == "__main__":
    outcome = run("--quick" in sys.argv)
    print("\n".join(table(outcome)))
