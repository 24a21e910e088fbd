"""The processed-song store end to end: kept across restarts, warmed ahead, shown to admins."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import trio
import trio_asyncio

from musicbot.testing.harness import open_loopback_bot, reply_to
from musicbot.testing.loopback import FakeDiscord, open_fake_discord
from musicbot.testing.media import open_media_server

from .test_process import bot_environment


async def run_bot_once(
    discord_: FakeDiscord, url: str, env: dict[str, str], guild: int
) -> tuple[int, int]:
    """Start `musicbot run`, play `url` to its end in `guild`, stop it; returns (packets heard,
    the most ffmpeg processes it had at once while playing)."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "musicbot", "run"], env=env, stderr=subprocess.DEVNULL
    )
    most_ffmpeg = 0
    identified = discord_.statistics().identifies
    try:
        with trio.fail_after(30):
            await discord_.wait_for(
                lambda: discord_.statistics().identifies > identified, what="this process's login"
            )
            await discord_.wait_ready()
        member = discord_.member(guild=guild, name="dj")
        await member.join_voice("Music")
        mark = len(discord_.rtp_packets(guild))
        answer = await reply_to(await member.slash("play", query=url))
        assert not answer.ephemeral, answer.content
        with trio.fail_after(10):
            while len(discord_.rtp_packets(guild)) < mark + 50:
                children = psutil.Process(process.pid).children(recursive=True)
                most_ffmpeg = max(most_ffmpeg, sum("ffmpeg" in c.name() for c in children))
                await trio.sleep(0.05)
        await trio.sleep(0.5)  # the copy is committed in the background after the last frame
        heard = len(discord_.rtp_packets(guild)) - mark
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(5):
            assert await process.wait() == 0
        await member.leave_voice()
        return heard, most_ffmpeg
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_second_process_plays_a_stored_song_without_ffmpeg(
    media_cache: Path, tmp_path: Path
) -> None:
    async with (
        trio_asyncio.open_loop(),
        open_media_server(cache_dir=media_cache) as media,
        open_fake_discord(guilds=2) as discord_,
    ):
        env = bot_environment(discord_, tmp_path)  # the same cache directory both times
        url = media.tone_url(440, 1)
        first, first_ffmpeg = await run_bot_once(discord_, url, env, guild=1)
        second, second_ffmpeg = await run_bot_once(discord_, url, env, guild=2)
    assert first_ffmpeg == 1
    assert second_ffmpeg == 0  # played straight from the stored Ogg file
    assert 49 <= first <= 52
    assert second == first
    assert discord_.audio(guild=2).dominant_hz == pytest.approx(440, abs=5)
    assert discord_.audio(guild=2).decode_failures == 0
    (stored,) = (tmp_path / "cache" / "songs").glob("*.opus")  # one song, one standard file
    assert stored.read_bytes()[:4] == b"OggS"


def boundary_gap_ms(packets: list, first_track: int) -> float:
    """Milliseconds between the first track's last packet and the second's first."""
    gaps = [b.at - a.at for a, b in itertools.pairwise(packets)]
    return 1000 * gaps[first_track - 1]


@pytest.mark.parametrize("warm_ahead", [2, 0], ids=["warmed", "cold"])
async def test_with_warming_the_next_song_starts_from_the_store(
    media_cache: Path, warm_ahead: int
) -> None:
    async with open_loopback_bot(guilds=1, media_cache=media_cache, warm_ahead=warm_ahead) as env:
        member = env.discord.member(guild=1, name="dj")
        await member.join_voice("Music")
        await reply_to(await member.slash("play", query=env.media.tone_url(300, 1)))
        await reply_to(await member.slash("play", query=env.media.page_url(700, 1)))
        await env.discord.wait_for(lambda: len(env.discord.rtp_packets(1)) >= 95, what="both")
        source = env.app.source.statistics()
        packets = env.discord.rtp_packets(1)
        first_track = next(
            i
            for i in range(40, len(packets))
            if (env.discord.audio(guild=1, packets=slice(i, i + 20)).dominant_hz or 0) > 600
        )
    gap = boundary_gap_ms(packets, first_track)
    print(f"\n{'warmed' if warm_ahead else 'cold'}: gap between the tracks {gap:.1f} ms")
    if warm_ahead:
        assert source.warmed == 1
        assert source.played_from_store == 1
    else:
        assert source.warmed == 0
        assert source.played_from_store == 0


async def test_play_suggests_stored_songs(media_cache: Path) -> None:
    async with open_loopback_bot(guilds=1, media_cache=media_cache) as env:
        member = env.discord.member(guild=1, name="dj")
        await member.join_voice("Music")
        url = env.media.page_url(440, 1, title="Morning tone")
        await reply_to(await member.slash("play", query=url))
        await env.discord.wait_for(lambda: len(env.discord.rtp_packets(1)) >= 50, what="audio")
        with trio.fail_after(5):
            await env.app.source.wait_copies_done()
        assert env.app.store.statistics().entries == 1
        choices = await member.autocomplete("play", "query", query="morn")
        assert [c.name for c in choices] == ["Morning tone (1)"]
        assert choices[0].value == env.media.tone_url(440, 1)  # the media, to the same key
        assert await member.autocomplete("play", "query", query="evening") == ()
        again = await reply_to(await member.slash("play", query=choices[0].value))
        assert not again.ephemeral
        await env.discord.wait_for(
            lambda: env.app.source.statistics().played_from_store == 1, what="from the store"
        )
