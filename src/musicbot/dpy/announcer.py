"""Announcer: posts what the core reports (failed tracks, departures) in each guild's channel.

The core calls `on_event` synchronously from its actors; events queue here and one Trio task
posts them, so a slow Discord never slows a player down.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import discord
import trio

from musicbot.core.messages import EndReason, PlayerEnded, PlayerEvent, TrackFailed, TrackStarted
from musicbot.dpy.bridge import call_asyncio_from_trio
from musicbot.dpy.controls import player_controls
from musicbot.dpy.render import started_embed

log = logging.getLogger(__name__)

BACKLOG = 256
LEFT = "Left the voice channel"


def describe(event: PlayerEvent) -> dict[str, Any] | None:
    """What to post for an event (`channel.send` arguments), or None if nobody needs to read it."""
    match event:
        case TrackStarted(track=track, answered=False, repeat=False):
            return {"embed": started_embed(track), "view": player_controls()}
        case TrackFailed(track=track, reason=reason):
            title = discord.utils.escape_markdown(track.title)
            return {"content": f"Could not play **{title}**: {reason}. Moving on."}
        case PlayerEnded(reason=EndReason.IDLE, seconds=seconds):
            return {"content": f"Left the voice channel: nothing played for {_span(seconds)}."}
        case PlayerEnded(reason=EndReason.ALONE, seconds=seconds):
            return {
                "content": f"Left the voice channel: nobody was listening for {_span(seconds)}."
            }
        case PlayerEnded(reason=EndReason.PAUSED, seconds=seconds):
            return {
                "content": f"Left the voice channel: the music was paused for {_span(seconds)}."
            }
        case PlayerEnded(reason=EndReason.DISCONNECTED):
            return {
                "content": "I was disconnected from the voice channel, so the music stopped "
                "and the queue was cleared; /play starts again."
            }
        case PlayerEnded(reason=EndReason.CRASHED):
            return {
                "content": "Something went wrong with playback here, so I left; "
                "the error was logged."
            }
    return None


def _span(seconds: float) -> str:
    """`45 seconds`, `5 minutes`, `1 hour 5 minutes`."""
    if seconds < 90:
        return f"{round(seconds)} seconds"
    minutes = round(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    if not hours:
        return f"{minutes} minutes"
    hour_text = "1 hour" if hours == 1 else f"{hours} hours"
    return f"{hour_text} {minutes} minutes" if minutes else hour_text


class Announcer:
    def __init__(self) -> None:
        self._channels: dict[int, int] = {}
        self._events_tx, self._events_rx = trio.open_memory_channel[PlayerEvent](BACKLOG)
        self.dropped = 0

    def remember(self, interaction: discord.Interaction) -> None:
        """Announce in the text channel the guild last used a music command in."""
        if interaction.guild_id is not None and interaction.channel_id is not None:
            self._channels[interaction.guild_id] = interaction.channel_id

    def on_event(self, event: PlayerEvent) -> None:
        try:
            self._events_tx.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
            log.warning("announcement backlog full; dropped %r", event)

    async def run(self, client: discord.Client) -> None:
        async for event in self._events_rx:
            message = describe(event)
            channel_id = self._channels.get(event.guild_id)
            if message is None or channel_id is None:
                continue
            channel = client.get_channel(channel_id)
            if not isinstance(channel, discord.abc.Messageable):
                continue
            try:
                await call_asyncio_from_trio(functools.partial(channel.send, **message))
            except discord.HTTPException as exc:
                log.warning("could not announce in channel %s: %s", channel_id, exc)
