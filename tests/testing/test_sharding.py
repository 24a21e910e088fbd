"""The gateway serves a shard only its guilds; GET /gateway/bot recommends the shard count."""

from __future__ import annotations

import trio_asyncio

from musicbot.testing.loopback import FakeDiscord


async def test_a_shard_gets_its_guilds_only(fake_discord: FakeDiscord, run_client) -> None:
    async with run_client(sync=False, shard_id=1, shard_count=2) as client:
        expected = [g.id for g in fake_discord.guilds if (g.id >> 22) % 2 == 1]
        assert [g.id for g in client.guilds] == expected and len(expected) == 1
        gateway = await trio_asyncio.aio_as_trio(client.http.get_bot_gateway)()
        assert gateway[0] == 1 and gateway[1].startswith("ws://127.0.0.1:")
