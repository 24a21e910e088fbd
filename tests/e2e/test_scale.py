"""Past the small numbers: more voice connections than a connection pool's default, and an
asyncio error report that must not end the bot."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio_asyncio

from musicbot.testing.harness import LoopbackBot, open_loopback_bot, reply_to

GUILDS = 104  # past aiohttp's default pool of 100, with the gateway shard's websocket too


async def test_more_voice_connections_than_aiohttp_pools_by_default(media_cache: Path) -> None:
    # What is tested is that every join works, not how fast a hundred go on two loaded cores.
    async with open_loopback_bot(
        guilds=GUILDS,
        shards=2,
        max_connections=GUILDS,
        media_cache=media_cache,
        wait_timeout=30,
    ) as loopback:
        discord_, media = loopback.discord, loopback.media
        url = media.tone_url(330, 20)
        # Stored first: a hundred ffmpeg processes starting at once on two cores would be slow.
        app = loopback.app
        await app.source.warm((await app.supervisor.resolve(url)).tracks[0])
        limiter = trio.CapacityLimiter(8)

        async def play(guild: int) -> None:
            async with limiter:
                member = discord_.member(guild=guild, name="dj")
                await member.join_voice("Music")
                answer = await reply_to(await member.slash("play", query=url))
                assert not answer.ephemeral, answer.content

        async with trio.open_nursery() as nursery:
            for guild in range(1, GUILDS + 1):
                nursery.start_soon(play, guild)
        for guild in range(1, GUILDS + 1):
            assert discord_.bot_voice_channel(guild) == "Music"
        await discord_.wait_for(
            lambda: all(discord_.rtp_packets(g) for g in range(1, GUILDS + 1)),
            what="audio in every guild",
        )


async def test_an_asyncio_error_report_is_logged_and_the_bot_carries_on(
    loopback: LoopbackBot, caplog: pytest.LogCaptureFixture
) -> None:
    def fails() -> None:
        raise RuntimeError("a late callback")

    loop = trio_asyncio.current_loop.get()
    assert loop is not None
    with caplog.at_level(logging.WARNING, logger="musicbot.dpy.bridge"):
        loop.call_soon(fails)
        await trio.sleep(0.05)
    assert "asyncio reported an error nobody awaited" in caplog.text
    assert "a late callback" in caplog.text
    member = loopback.discord.member(guild=1, name="dj")
    await member.join_voice("Music")
    answer = await reply_to(await member.slash("play", query=loopback.media.tone_url(440, 3)))
    assert not answer.ephemeral
    await loopback.discord.wait_for(lambda: loopback.discord.rtp_packets(1), what="audio")
