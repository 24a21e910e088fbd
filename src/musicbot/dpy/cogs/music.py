"""Playback commands: /join, /play, /leave."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs
import discord
from discord import app_commands
from discord.ext import commands

from musicbot.core.mailbox import ActorGone
from musicbot.core.ports import ResolveError, VoiceConnectError
from musicbot.core.supervisor import PlayerHandle, SpawnRefused
from musicbot.dpy.bridge import call_trio_from_asyncio
from musicbot.dpy.checks import CommandRefused, require_same_channel, target_channel
from musicbot.dpy.render import enqueued_embed

if TYPE_CHECKING:
    from musicbot.dpy.bot import MusicBot

log = logging.getLogger(__name__)

MAX_QUERY_LENGTH = 500


@app_commands.guild_only()
class Music(commands.Cog):
    def __init__(self, bot: MusicBot) -> None:
        self.bot = bot
        self.supervisor = bot.supervisor

    async def _player_for(self, interaction: discord.Interaction, channel_id: int) -> PlayerHandle:
        assert interaction.guild_id is not None
        try:
            return await call_trio_from_asyncio(
                self.supervisor.get_player, interaction.guild_id, channel_id=channel_id
            )
        except SpawnRefused as refused:
            raise CommandRefused(
                f"I am already playing in {refused.limit} servers, my limit right now. "
                "Please try again later."
            ) from None
        except VoiceConnectError as exc:
            raise CommandRefused(f"I could not join your voice channel: {exc}.") from None

    @app_commands.command(description="Join your voice channel.")
    async def join(self, interaction: discord.Interaction) -> None:
        channel = target_channel(interaction)
        await interaction.response.defer(thinking=True)
        await self._player_for(interaction, channel.id)
        self.bot.announcer.remember(interaction)
        await interaction.followup.send(f"Joined {channel.mention}.")

    @app_commands.command(description="Play a song, or add it to the queue.")
    @app_commands.describe(query="A link to the audio (http or https)")
    async def play(self, interaction: discord.Interaction, query: str) -> None:
        if len(query) > MAX_QUERY_LENGTH:
            raise CommandRefused(f"That is too long: keep it under {MAX_QUERY_LENGTH} characters.")
        channel = target_channel(interaction)
        await interaction.response.defer(thinking=True)
        try:
            resolved = await call_trio_from_asyncio(self.supervisor.resolve, query)
        except ResolveError as exc:
            raise CommandRefused(f"I could not play that: {exc}.") from None
        player = await self._player_for(interaction, channel.id)
        self.bot.announcer.remember(interaction)
        requester = interaction.user.display_name
        tracks = tuple(attrs.evolve(track, requester=requester) for track in resolved.tracks)
        try:
            enqueued = await call_trio_from_asyncio(player.enqueue, *tracks)
        except ActorGone:
            raise CommandRefused("I was just leaving that channel; please ask again.") from None
        await interaction.followup.send(embed=enqueued_embed(tracks, enqueued, resolved.left_out))

    @app_commands.command(description="Stop playing and leave the voice channel.")
    async def leave(self, interaction: discord.Interaction) -> None:
        channel = require_same_channel(interaction)
        assert interaction.guild_id is not None
        if self.supervisor.find_player(interaction.guild_id) is None:
            raise CommandRefused("I am not playing here.")
        await interaction.response.defer(thinking=True)
        await call_trio_from_asyncio(self.supervisor.leave, interaction.guild_id)
        await interaction.followup.send(f"Left {channel.mention}.")
