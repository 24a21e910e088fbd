"""Where the invoker and the bot are in voice: the checks every playback command shares."""

from __future__ import annotations

import discord
from discord import app_commands

VoiceChannel = discord.VoiceChannel | discord.StageChannel


class CommandRefused(Exception):
    """A command cannot run as asked. The message goes back to the user, ephemeral."""


class GuildUnknown(app_commands.CheckFailure):
    """The interaction comes from a guild discord.py has no state for: the bot was removed
    from it (its commands can stay installed), or Discord has not sent it yet (start-up, an
    outage). Nothing about voice can be known there. A CheckFailure, so that raised from a
    cog's `interaction_check` it reaches the tree's error handler and is answered."""

    def __init__(self) -> None:
        super().__init__(
            "I cannot see this server right now: I may have been removed from it, or Discord "
            "has not sent it to me yet. Try again in a minute, or ask an admin to add me again."
        )


def require_known_guild(interaction: discord.Interaction) -> discord.Guild:
    """The interaction's guild as discord.py knows it, or GuildUnknown."""
    guild_id = interaction.guild_id
    guild = None if guild_id is None else interaction.client.get_guild(guild_id)
    if guild is None or guild.unavailable:
        raise GuildUnknown()
    return guild


def invoker_channel(interaction: discord.Interaction) -> VoiceChannel:
    """The voice channel the invoker is in, or CommandRefused saying to join one."""
    member = interaction.user
    voice = member.voice if isinstance(member, discord.Member) else None
    if voice is None or voice.channel is None:
        raise CommandRefused("Join a voice channel first, then ask again.")
    return voice.channel


def bot_channel(interaction: discord.Interaction) -> VoiceChannel | None:
    guild = interaction.guild
    if guild is None or guild.voice_client is None:
        return None
    channel = guild.voice_client.channel
    return channel if isinstance(channel, discord.VoiceChannel | discord.StageChannel) else None


def require_same_channel(interaction: discord.Interaction) -> VoiceChannel:
    """The bot's channel, if the invoker is in it too; else CommandRefused saying why not."""
    mine = bot_channel(interaction)
    if mine is None:
        raise CommandRefused("I am not in a voice channel here.")
    theirs = invoker_channel(interaction)
    if theirs.id != mine.id:
        raise CommandRefused(f"I am playing in {mine.mention}; join it to control the music.")
    return mine


def target_channel(interaction: discord.Interaction) -> VoiceChannel:
    """Where /play and /join should go: the invoker's channel, unless the bot is elsewhere."""
    theirs = invoker_channel(interaction)
    mine = bot_channel(interaction)
    if mine is not None and mine.id != theirs.id:
        raise CommandRefused(f"I am already playing in {mine.mention}; join it to add music.")
    return theirs
