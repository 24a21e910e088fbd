"""The bot runs on gateway shards: as many as Discord recommends, or the ones configured."""

from __future__ import annotations

from pathlib import Path

from musicbot.dpy.bot import IDENTIFY_INTERVAL
from musicbot.testing.harness import open_loopback_bot, reply_to
from musicbot.testing.loopback.snowflakes import shard_of


async def test_the_recommended_shards_start_together_and_every_guild_is_served(
    media_cache: Path,
) -> None:
    async with open_loopback_bot(
        guilds=6, shards=3, identify_concurrency=3, media_cache=media_cache
    ) as loopback:
        discord_, bot = loopback.discord, loopback.app.bot
        assert bot.shard_count == 3
        assert sorted(g.id for g in bot.guilds) == sorted(g.id for g in discord_.guilds)
        identifies = discord_.identifies()
        assert sorted(shard for shard, _ in identifies) == [(0, 3), (1, 3), (2, 3)]
        # One round of max_concurrency: nobody waited discord.py's 5 s between IDENTIFYs.
        times = [at for _, at in identifies]
        assert max(times) - min(times) < IDENTIFY_INTERVAL - 1
        for guild in range(1, 7):
            member = discord_.member(guild=guild, name="dj")
            await member.join_voice("Music")
            answer = await reply_to(
                await member.slash("play", query=loopback.media.tone_url(200 + guild, 5))
            )
            assert not answer.ephemeral, answer.content
        for guild in range(1, 7):
            await discord_.wait_for(
                lambda g=guild: len(discord_.rtp_packets(g)) >= 5, what=f"audio in {guild}"
            )


async def test_a_process_runs_only_its_configured_shards(media_cache: Path) -> None:
    async with open_loopback_bot(
        guilds=6, shard_count=2, shard_ids=(1,), media_cache=media_cache
    ) as loopback:
        discord_, bot = loopback.discord, loopback.app.bot
        assert [shard for shard, _ in discord_.identifies()] == [(1, 2)]
        mine = [g.id for g in discord_.guilds if shard_of(g.id, 2) == 1]
        assert mine and len(mine) < 6
        assert sorted(g.id for g in bot.guilds) == sorted(mine)
