"""Playback commands: /play, /pause, /resume, /skip, /stop, /queue, /nowplaying, /volume,
/loop, /shuffle, /remove, /seek, /join, /leave."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, ParamSpec, TypeVar

import attrs
import discord
from discord import app_commands
from discord.ext import commands

from musicbot.core.mailbox import ActorGone
from musicbot.core.messages import LoopMode
from musicbot.core.ports import ResolveError, SourceError, VoiceConnectError
from musicbot.core.supervisor import PlayerHandle, SpawnRefused
from musicbot.dpy.answers import thinking
from musicbot.dpy.bridge import call_trio_from_asyncio
from musicbot.dpy.checks import (
    CommandRefused,
    require_known_guild,
    require_same_channel,
    target_channel,
)
from musicbot.dpy.controls import player_controls, queue_controls
from musicbot.dpy.render import (
    LOOP_WORDS,
    enqueued_embed,
    format_duration,
    now_playing_embed,
    parse_timestamp,
    queue_embed,
)

if TYPE_CHECKING:
    from musicbot.dpy.bot import MusicBot

log = logging.getLogger(__name__)

AUTOCOMPLETE_CHOICES = 25
CHOICE_LIMIT = 100
"""Discord's limit on a choice's name and value."""

P = ParamSpec("P")
T = TypeVar("T")


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


@app_commands.guild_only()
class Music(commands.Cog):
    def __init__(self, bot: MusicBot) -> None:
        self.bot = bot
        self.supervisor = bot.supervisor

    def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        """Every command first: a guild discord.py knows nothing of has no voice to act on."""
        require_known_guild(interaction)
        return True

    # --- shared steps ------------------------------------------------------------------------

    async def _ask(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Ask the guild's player; a player that just left is a refusal, not an error."""
        try:
            return await call_trio_from_asyncio(fn, *args, **kwargs)
        except ActorGone:
            raise CommandRefused("I just left the voice channel; start again with /play.") from None

    def _controlled_player(self, interaction: discord.Interaction) -> PlayerHandle:
        """The player a control command acts on: the invoker must be in the bot's channel."""
        require_same_channel(interaction)
        assert interaction.guild_id is not None
        player = self.supervisor.find_player(interaction.guild_id)
        if player is None:
            raise CommandRefused("I am not playing here.")
        return player

    def _any_player(self, interaction: discord.Interaction) -> PlayerHandle:
        assert interaction.guild_id is not None
        player = self.supervisor.find_player(interaction.guild_id)
        if player is None:
            raise CommandRefused("I am not playing here; start with /play.")
        return player

    async def _spawn(self, interaction: discord.Interaction, channel_id: int) -> PlayerHandle:
        assert interaction.guild_id is not None
        try:
            player = await call_trio_from_asyncio(
                self.supervisor.get_player, interaction.guild_id, channel_id=channel_id
            )
        except SpawnRefused as refused:
            raise CommandRefused(
                f"I am already playing in {refused.limit} servers, my limit right now. "
                "Please try again later."
            ) from None
        except VoiceConnectError as exc:
            reason = _sentence(str(exc))
            raise CommandRefused(f"I could not join your voice channel: {reason}") from None
        self.bot.announcer.remember(interaction)
        return player

    # --- joining, playing, leaving -----------------------------------------------------------

    @app_commands.command(description="Join your voice channel.")
    async def join(self, interaction: discord.Interaction) -> None:
        channel = target_channel(interaction)
        async with thinking(interaction):
            await self._spawn(interaction, channel.id)
        await interaction.followup.send(f"Joined {channel.mention}.")

    @app_commands.command(description="Play a song (a link or a search), or add it to the queue.")
    @app_commands.describe(query="A link, or words to search for")
    async def play(self, interaction: discord.Interaction, query: str) -> None:
        channel = target_channel(interaction)
        async with thinking(interaction) as answer:
            if not self.supervisor.has_resolved(query):
                await answer.shown()  # a lookup is slow: Discord's deadline first
            try:
                resolved = await call_trio_from_asyncio(self.supervisor.resolve, query)
            except ResolveError as exc:
                raise CommandRefused(f"I could not play that: {_sentence(str(exc))}") from None
            player = await self._spawn(interaction, channel.id)
            requester = interaction.user.display_name
            tracks = tuple(attrs.evolve(track, requester=requester) for track in resolved.tracks)
            try:
                enqueued = await self._ask(player.enqueue, *tracks, wait_for_start=True)
            except SourceError as exc:
                raise CommandRefused(f"I could not play that: {_sentence(str(exc))}") from None
        embed = enqueued_embed(tracks, enqueued, resolved.left_out)
        if enqueued.position == 0:
            await interaction.followup.send(embed=embed, view=player_controls())
        else:
            await interaction.followup.send(embed=embed)

    @play.autocomplete("query")
    async def suggest_stored(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        """Songs already in the store (they start at once), most played first."""
        store = self.bot.store
        if store is None:
            return []
        songs = await call_trio_from_asyncio(store.songs)
        wanted = current.casefold().strip()
        matches = sorted(
            (song for song in songs if wanted in song.title.casefold()),
            key=lambda song: (-song.play_count, -song.last_played),
        )
        choices = []
        for song in matches[:AUTOCOMPLETE_CHOICES]:
            # A link plays exactly that song; a site's own id has no link here: search its title.
            value = song.key.removeprefix("url:") if song.key.startswith("url:") else song.title
            if len(value) <= CHOICE_LIMIT:
                choices.append(app_commands.Choice(name=song.title[:CHOICE_LIMIT], value=value))
        return choices

    @app_commands.command(description="Stop playing and leave the voice channel.")
    async def leave(self, interaction: discord.Interaction) -> None:
        channel = require_same_channel(interaction)
        assert interaction.guild_id is not None
        if self.supervisor.find_player(interaction.guild_id) is None:
            raise CommandRefused("I am not playing here.")
        async with thinking(interaction):
            await call_trio_from_asyncio(self.supervisor.leave, interaction.guild_id)
        await interaction.followup.send(f"Left {channel.mention}.")

    # --- controls ----------------------------------------------------------------------------

    @app_commands.command(description="Pause the music.")
    async def pause(self, interaction: discord.Interaction) -> None:
        player = self._controlled_player(interaction)
        if not await self._ask(player.pause):
            raise CommandRefused("Nothing is playing, or it is paused already.")
        await interaction.response.send_message("⏸ Paused. /resume to go on.")

    @app_commands.command(description="Resume the music.")
    async def resume(self, interaction: discord.Interaction) -> None:
        player = self._controlled_player(interaction)
        if not await self._ask(player.resume):
            raise CommandRefused("The music is not paused.")
        await interaction.response.send_message("▶ Resumed.")

    @app_commands.command(description="Skip to the next song.")
    async def skip(self, interaction: discord.Interaction) -> None:
        player = self._controlled_player(interaction)
        skipped = await self._ask(player.skip)
        if skipped is None:
            raise CommandRefused("Nothing is playing.")
        title = discord.utils.escape_markdown(skipped.title)
        await interaction.response.send_message(f"⏭ Skipped **{title}**.")

    @app_commands.command(description="Stop the music and clear the queue (I stay connected).")
    async def stop(self, interaction: discord.Interaction) -> None:
        player = self._controlled_player(interaction)
        dropped = await self._ask(player.stop)
        await interaction.response.send_message(
            f"⏹ Stopped and cleared the queue ({dropped} tracks)."
        )

    @app_commands.command(description="Set the volume.")
    @app_commands.describe(level="Percent: 100 is as the song was made, 0 to 200")
    async def volume(
        self, interaction: discord.Interaction, level: app_commands.Range[int, 0, 200]
    ) -> None:
        player = self._controlled_player(interaction)
        if not 0 <= level <= 200:  # Discord checks the range; a raw API client may not
            raise CommandRefused("The volume goes from 0 to 200 %.")
        await self._ask(player.set_volume, level)
        await interaction.response.send_message(f"🔊 Volume {level} %.")

    @app_commands.command(description="Jump to a time in the song, e.g. 1:30.")
    @app_commands.describe(timestamp="Like 1:30, 90 or 1:02:03")
    async def seek(
        self, interaction: discord.Interaction, timestamp: app_commands.Range[str, 1, 20]
    ) -> None:
        player = self._controlled_player(interaction)
        seconds = parse_timestamp(timestamp)
        if seconds is None:
            raise CommandRefused("I could not read that time; write it like 1:30, 90 or 1:02:03.")
        position = await self._ask(player.seek, seconds)
        await interaction.response.send_message(f"⏩ Jumped to {format_duration(position)}.")

    @app_commands.command(description="Repeat the song, the queue, or nothing.")
    async def loop(
        self, interaction: discord.Interaction, mode: Literal["off", "track", "queue"]
    ) -> None:
        player = self._controlled_player(interaction)
        try:
            loop_mode = LoopMode(mode)
        except ValueError:
            raise CommandRefused("Loop takes off, track or queue.") from None
        await self._ask(player.set_loop, loop_mode)
        text = (
            "🔁 Looping off."
            if loop_mode is LoopMode.OFF
            else f"🔁 Looping {LOOP_WORDS[loop_mode]}."
        )
        await interaction.response.send_message(text)

    @app_commands.command(description="Shuffle the queue.")
    async def shuffle(self, interaction: discord.Interaction) -> None:
        player = self._controlled_player(interaction)
        count = await self._ask(player.shuffle)
        if count < 2:
            raise CommandRefused("There is nothing to shuffle: queue two songs or more first.")
        await interaction.response.send_message(f"🔀 Shuffled {count} songs.")

    @app_commands.command(description="Remove a song from the queue.")
    @app_commands.describe(position="Its number in /queue")
    async def remove(
        self, interaction: discord.Interaction, position: app_commands.Range[int, 1, 100_000]
    ) -> None:
        player = self._controlled_player(interaction)
        removed = await self._ask(player.remove, position)
        title = discord.utils.escape_markdown(removed.title)
        await interaction.response.send_message(f"🗑 Removed **{title}** from the queue.")

    # --- looking -----------------------------------------------------------------------------

    @app_commands.command(name="queue", description="Show the queue.")
    async def queue_(self, interaction: discord.Interaction) -> None:
        player = self._any_player(interaction)
        view = await self._ask(player.queue)
        buttons = queue_controls(view, 1)
        embed = queue_embed(view, 1)
        if buttons is None:
            await interaction.response.send_message(embed=embed)
        else:
            await interaction.response.send_message(embed=embed, view=buttons)

    @app_commands.command(name="nowplaying", description="Show the song playing now.")
    async def now_playing(self, interaction: discord.Interaction) -> None:
        player = self._any_player(interaction)
        now = await self._ask(player.now_playing)
        if now is None:
            raise CommandRefused("Nothing is playing.")
        await interaction.response.send_message(
            embed=now_playing_embed(now), view=player_controls(paused=now.paused)
        )
