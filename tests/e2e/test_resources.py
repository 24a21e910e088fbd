"""Resource management end to end: admin commands, the connection limit, idle policies."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest
import trio
import trio_asyncio
from prometheus_client.parser import text_string_to_metric_families

from musicbot.app import open_app
from musicbot.testing.harness import LoopbackBot, loopback_settings, open_loopback_bot, reply_to
from musicbot.testing.loopback import FakeMember, Message, open_fake_discord
from musicbot.testing.media import open_media_server

MANAGE_GUILD = discord.Permissions(manage_guild=True).value


async def play(member: FakeMember, url: str) -> Message:
    answer = await reply_to(await member.slash("play", query=url))
    assert not answer.ephemeral, answer.content
    return answer


async def dj(env: LoopbackBot, guild: int, name: str = "dj") -> FakeMember:
    member = env.discord.member(guild=guild, name=name)
    await member.join_voice("Music")
    return member


@pytest.fixture
async def admin_bot(media_cache: Path) -> AsyncIterator[LoopbackBot]:
    async with open_loopback_bot(
        guilds=2, media_cache=media_cache, admin_roles=("DJ Admin",)
    ) as env:
        yield env


async def test_admin_commands_are_declared_for_server_managers(admin_bot: LoopbackBot) -> None:
    for name in ("resources", "cleanup"):
        declared = admin_bot.discord.commands[name].default_member_permissions
        assert declared is not None
        assert int(declared) == MANAGE_GUILD
    assert admin_bot.discord.commands["play"].default_member_permissions is None


@pytest.mark.parametrize(
    "who",
    [{"admin": True}, {"permissions": ("manage_guild",)}, {"roles": ("DJ Admin",)}],
    ids=["administrator", "manage server", "admin role"],
)
async def test_resources_shows_connections_cache_cleanup_process_and_pacing(
    admin_bot: LoopbackBot, who: dict[str, Any]
) -> None:
    env = admin_bot
    # Long enough that ffmpeg is still running (blocked on its full pipe) when counted: a
    # 10 s tone fits the pipe whole, and its ffmpeg exits and is reaped within a second.
    await play(await dj(env, 1), env.media.tone_url(440, 60))
    await play(await dj(env, 2), env.media.tone_url(660, 60))
    await env.discord.wait_for(lambda: len(env.discord.rtp_packets(1)) >= 60, what="audio")
    boss = env.discord.member(guild=1, name="boss", **who)
    answer = await reply_to(await boss.slash("resources"))
    assert answer.ephemeral
    fields = {f.name: f.value for f in answer.embeds[0].fields}
    assert list(fields) == [
        "Voice connections",
        "Servers",
        "Track cache",
        "Cleanup",
        "Song store",
        "Process",
        "Pacing, last minute",
    ]
    assert fields["Voice connections"].startswith("2 / 10")
    servers = fields["Servers"].splitlines()
    assert servers[0].startswith("**Guild 1**: playing, idle 0s, queue 0, frames ")
    assert servers[1] == "1 other server(s)"  # a server's admin does not see other servers
    assert "hit rate 0%" in fields["Track cache"]
    assert "memory " in fields["Process"]
    assert "2 child processes (2 ffmpeg)" in fields["Process"]
    assert fields["Pacing, last minute"].startswith("2 playing · ")


async def test_an_owner_sees_every_server(media_cache: Path, tmp_path: Path) -> None:
    async with (
        trio_asyncio.open_loop(),
        open_media_server(cache_dir=media_cache) as media,
        open_fake_discord(guilds=2) as discord_,
    ):
        owner = discord_.member(guild=1, name="owner")  # owners are configured by user id
        settings = loopback_settings(discord_, cache_dir=tmp_path, owner_ids=(owner.id,))
        async with open_app(settings):
            for guild in (1, 2):
                member = discord_.member(guild=guild, name="dj")
                await member.join_voice("Music")
                await play(member, media.tone_url(440, 10))
            answer = await reply_to(await owner.slash("resources"))
            fields = {f.name: f.value for f in answer.embeds[0].fields}
            servers = fields["Servers"].splitlines()
            assert [line.split(":")[0] for line in servers] == ["**Guild 1**", "**Guild 2**"]


async def test_members_without_the_permission_are_refused_and_nothing_runs(
    admin_bot: LoopbackBot,
) -> None:
    env = admin_bot
    alice = await dj(env, 1, "alice")
    await play(alice, env.media.tone_url(440, 10))
    for command in ("resources", "cleanup"):
        answer = await reply_to(await alice.slash(command))
        assert answer.ephemeral
        assert answer.content == (
            "Only people who can manage this server (or the bot's owners) can use that."
        )
    assert env.app.supervisor.statistics().cleanups == 0


async def test_cleanup_runs_the_sweep_now_and_says_what_it_did(media_cache: Path) -> None:
    async with open_loopback_bot(
        guilds=1, media_cache=media_cache, idle_timeout=0.5, cleanup_interval=3600
    ) as env:
        dj1 = await dj(env, 1)
        await play(dj1, env.media.tone_url(440, 0.5))
        await env.discord.wait_for(lambda: len(env.discord.rtp_packets(1)) >= 25, what="audio")
        await trio.sleep(1.2)  # the track ended; the player has been idle for over 0.5 s
        boss = env.discord.member(guild=1, name="boss", admin=True)
        answer = await reply_to(await boss.slash("cleanup"))
        assert answer.ephemeral
        assert answer.content is not None
        assert answer.content.startswith(
            f"🧹 Swept just now: reaped 1 [{env.discord.guild(1).id} (idle "
        )
        await env.discord.wait_bot_voice(guild=1, channel=None)
        await env.discord.wait_for(
            lambda: any(
                "nothing played" in (m.content or "") for m in env.discord.channel_messages(1)
            ),
            what="the departure announced",
        )


async def test_the_connection_limit_refuses_an_eleventh_server_and_ten_keep_playing(
    media_cache: Path,
) -> None:
    async with open_loopback_bot(guilds=11, media_cache=media_cache) as env:
        for guild in range(1, 11):
            await play(await dj(env, guild), env.media.tone_url(200 + 50 * guild, 20))
        eleventh = await dj(env, 11)
        refused = await reply_to(await eleventh.slash("play", query=env.media.tone_url(880, 5)))
        assert refused.ephemeral
        assert refused.content == (
            "I am already playing in 10 servers, my limit right now. Please try again later."
        )
        assert env.discord.bot_voice_channel(11) is None
        marks = {g: len(env.discord.rtp_packets(g)) for g in range(1, 11)}
        for guild in range(1, 11):
            await env.discord.wait_for(
                lambda g=guild: len(env.discord.rtp_packets(g)) >= marks[g] + 50,
                what=f"guild {guild} still playing",
            )
        stats = env.app.supervisor.statistics()
        assert (stats.active, stats.refusals) == (10, 1)


@pytest.mark.parametrize(
    ("settings", "cause", "announced"),
    [
        ({"idle_timeout": 0.6}, "ends", "nothing played for"),
        ({"alone_timeout": 0.6}, "everyone leaves", "nobody was listening for"),
        ({"paused_timeout": 0.6}, "pause", "the music was paused for"),
    ],
)
async def test_idle_policies_disconnect_and_say_why(
    media_cache: Path, settings: dict[str, float], cause: str, announced: str
) -> None:
    async with open_loopback_bot(
        guilds=1, media_cache=media_cache, cleanup_interval=0.2, **settings
    ) as env:
        alice = await dj(env, 1, "alice")
        length = 0.4 if cause == "ends" else 30
        await play(alice, env.media.tone_url(440, length))
        await env.discord.wait_for(lambda: len(env.discord.rtp_packets(1)) >= 15, what="audio")
        if cause == "everyone leaves":
            await alice.leave_voice()
        elif cause == "pause":
            await reply_to(await alice.slash("pause"))
        await env.discord.wait_bot_voice(guild=1, channel=None)
        await env.discord.wait_for(
            lambda: any(announced in (m.content or "") for m in env.discord.channel_messages(1)),
            what="the departure announced",
        )
        stats = env.app.supervisor.statistics()
        assert (stats.active, stats.reaped) == (0, 1)


async def test_metrics_are_scraped_from_the_running_bot(media_cache: Path) -> None:
    async with open_loopback_bot(guilds=1, media_cache=media_cache, metrics_port=0) as env:
        await play(await dj(env, 1), env.media.tone_url(440, 60))  # ffmpeg runs throughout
        await env.discord.wait_for(lambda: len(env.discord.rtp_packets(1)) >= 50, what="audio")
        assert env.app.metrics_url is not None
        assert env.app.metrics_url.startswith("http://127.0.0.1:")
        text = await trio.to_thread.run_sync(fetch, env.app.metrics_url)
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }
    assert samples["musicbot_voice_connections"] == 1
    assert samples["musicbot_voice_connections_max"] == 10
    assert samples["musicbot_frames_sent_total"] >= 50
    assert samples["musicbot_process_ffmpeg_children"] == 1
    assert samples["musicbot_process_resident_memory_bytes"] > 10 * 2**20


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())
