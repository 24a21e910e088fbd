"""The `musicbot run` process: start-up problems are one line, signals shut it down cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import psutil
import pytest
import trio
import trio_asyncio

from musicbot.testing.harness import process_environment, reply_to
from musicbot.testing.loopback import FakeDiscord, open_fake_discord
from musicbot.testing.media import MediaServer, open_media_server, unreachable_url

STARTUP_TIMEOUT = 30


def bot_environment(discord: FakeDiscord | None, tmp_path: Path, **extra: str) -> dict[str, str]:
    return process_environment(discord, cache_dir=tmp_path / "cache", **extra)


def run_to_end(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "musicbot", "run"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
    )


def one_line_failure(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("musicbot: ")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_no_ffmpeg_is_one_clear_line(tmp_path: Path) -> None:
    env = bot_environment(
        None,
        tmp_path,
        DISCORD_TOKEN="token-that-is-never-used",
        MUSICBOT_API_BASE_URL=unreachable_url("/api/v10"),
        MUSICBOT_FFMPEG_PATH=str(tmp_path / "no-ffmpeg-here"),
    )
    line = one_line_failure(run_to_end(env))
    assert "ffmpeg not found" in line
    assert "set ffmpeg_path" in line


def test_an_unwritable_cache_directory_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = bot_environment(
        None,
        tmp_path,
        DISCORD_TOKEN="token-that-is-never-used",
        MUSICBOT_API_BASE_URL=unreachable_url("/api/v10"),
        MUSICBOT_CACHE_DIR=str(blocker / "cache"),
    )
    line = one_line_failure(run_to_end(env))
    assert f"the cache directory {blocker / 'cache'} is not writable" in line


def test_an_unreachable_discord_is_one_clear_line(tmp_path: Path) -> None:
    api = unreachable_url("/api/v10")
    env = bot_environment(None, tmp_path, DISCORD_TOKEN="token", MUSICBOT_API_BASE_URL=api)
    line = one_line_failure(run_to_end(env))
    assert line.startswith(f"musicbot: cannot reach Discord at {api}")


async def test_a_refused_token_is_one_clear_line(tmp_path: Path) -> None:
    async with trio_asyncio.open_loop(), open_fake_discord(guilds=1) as discord_:
        env = bot_environment(discord_, tmp_path, DISCORD_TOKEN="not-the-token")
        done = await trio.to_thread.run_sync(run_to_end, env)
    line = one_line_failure(done)
    assert line.startswith("musicbot: Discord refused the bot token; check DISCORD_TOKEN")


@pytest.fixture
async def loopback_world(media_cache: Path) -> AsyncIterator[tuple[FakeDiscord, MediaServer]]:
    async with (
        trio_asyncio.open_loop(),
        open_media_server(cache_dir=media_cache) as media,
        # A cold process on a loaded 2-core CI machine: its first commands get the start-up
        # allowance, not the in-process tests' 5 s. The shutdown itself is still held to 5 s.
        open_fake_discord(guilds=3, wait_timeout=STARTUP_TIMEOUT) as discord_,
    ):
        yield discord_, media


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_shuts_down_cleanly_within_5_seconds_leaving_nothing(
    loopback_world: tuple[FakeDiscord, MediaServer], tmp_path: Path, signum: signal.Signals
) -> None:
    discord_, media = loopback_world
    env = bot_environment(discord_, tmp_path, MUSICBOT_LOG_LEVEL="INFO")
    log_path = tmp_path / "bot.log"
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "musicbot", "run"], env=env, stderr=log
        )
    try:
        with trio.fail_after(STARTUP_TIMEOUT):
            await discord_.wait_for(lambda: "play" in discord_.commands, what="the bot's login")
            await discord_.wait_ready()
        for guild in (1, 2, 3):
            member = discord_.member(guild=guild, name="dj")
            await member.join_voice("Music")
            answer = await reply_to(await member.slash("play", query=media.tone_url(440, 30)))
            assert not answer.ephemeral
        for guild in (1, 2, 3):
            await discord_.wait_for(
                lambda g=guild: len(discord_.rtp_packets(g)) >= 10, what=f"audio in {guild}"
            )
        children = psutil.Process(process.pid).children(recursive=True)
        assert sum("ffmpeg" in child.name() for child in children) == 3
        process.send_signal(signum)
        with trio.fail_after(5):
            returncode = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        print(log_path.read_text())  # pytest shows it when the test fails
    assert returncode == 0
    for guild in (1, 2, 3):
        assert discord_.bot_voice_channel(guild) is None
        assert not discord_.voice(guild).websocket_open
    assert not [child for child in children if child.is_running()]
