"""Past the small numbers: no connection pool limit on voice connections, and an asyncio error
report that must not end the bot."""

from __future__ import annotations

import logging

import aiohttp
import pytest
import trio
import trio_asyncio

from musicbot.testing.harness import LoopbackBot, reply_to


async def test_the_connection_pool_has_no_limit(loopback: LoopbackBot) -> None:
    # Every gateway shard and every voice connection holds a connection of this pool for as
    # long as it lives: aiohttp's default limit of 100 hung the 99th voice join. (The streams
    # benchmark runs hundreds of voice connections through it; a test of 104 real ones was
    # too slow for a loaded 2-core CI to run reliably.)
    connector = loopback.app.bot.http.connector
    assert isinstance(connector, aiohttp.TCPConnector)
    assert connector.limit == 0
    assert connector.limit_per_host == 0


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
