"""Real discord.py logs in to the loopback Discord: READY, GUILD_CREATE per guild, command sync."""

from __future__ import annotations

import discord
import pytest
import trio_asyncio
from discord import app_commands

from musicbot.testing.loopback import FakeDiscord


def add_commands(tree: app_commands.CommandTree) -> None:  # type: ignore[type-arg]
    @tree.command(name="play", description="Play a track")
    @app_commands.describe(query="What to play", volume="Loudness")
    async def play(interaction: discord.Interaction, query: str, volume: int = 50) -> None:
        await interaction.response.send_message(query)

    @tree.command(name="skip", description="Skip tracks")
    async def skip(
        interaction: discord.Interaction, count: app_commands.Range[int, 1, 10] = 1
    ) -> None:
        await interaction.response.send_message(str(count))


async def test_login_ready_guilds_and_command_sync(fake_discord: FakeDiscord, run_client) -> None:
    async with run_client(add_commands) as client:
        await fake_discord.wait_ready()
        assert client.user is not None and client.user.id == fake_discord.bot_user_id
        assert client.application_id == fake_discord.application_id
        assert sorted(g.id for g in client.guilds) == sorted(g.id for g in fake_discord.guilds)
        for info in fake_discord.guilds:
            guild = client.get_guild(info.id)
            assert guild is not None and not guild.unavailable
            assert guild.me is not None and guild.me.id == fake_discord.bot_user_id
            assert {c.name for c in guild.text_channels} == {"general"}
            assert {c.name for c in guild.voice_channels} == {"Music", "Lounge"}
            assert guild.get_channel(info.channel_id("Music")) is not None

        commands = fake_discord.commands
        assert sorted(commands) == ["play", "skip"]
        query, volume = commands["play"].options
        assert (query.name, query.type, query.required, query.description) == (
            "query",
            3,
            True,
            "What to play",
        )
        assert (volume.name, volume.type, volume.required) == ("volume", 4, False)
        count = commands["skip"].option("count")
        assert (count.type, count.min_value, count.max_value) == (4, 1, 10)
        assert [s.guild_id for s in fake_discord.command_syncs] == [None]

        stats = fake_discord.statistics()
        assert stats.identifies == 1
        assert stats.gateway_connections == 1


async def test_guild_command_sync_and_invocation(fake_discord: FakeDiscord, run_client) -> None:
    guild = discord.Object(id=fake_discord.guild(2).id)

    def add(tree: app_commands.CommandTree) -> None:  # type: ignore[type-arg]
        @tree.command(name="local", description="Only in guild 2", guild=guild)
        async def local(interaction: discord.Interaction) -> None:
            await interaction.response.send_message(f"local in {interaction.guild_id}")

    async with run_client(add) as client:
        await trio_asyncio.aio_as_trio(client.tree.sync)(guild=guild)
        assert fake_discord.commands == {}
        assert list(fake_discord.guild_commands(2)) == ["local"]
        assert fake_discord.guild_commands(2)["local"].guild_id == guild.id
        assert [s.guild_id for s in fake_discord.command_syncs] == [None, guild.id]
        reply = await fake_discord.member(guild=2, name="hana").slash("local")
        assert reply.content == f"local in {guild.id}"
        with pytest.raises(LookupError):
            await fake_discord.member(guild=1, name="hana").slash("local")
