"""How the bot's answers look: embeds and short texts built from core values."""

from __future__ import annotations

import discord

from musicbot.core.messages import Enqueued, Track

COLOUR = discord.Colour.blurple()


def format_duration(seconds: float | None) -> str:
    """`3:07`, `1:02:03`, or `unknown`."""
    if seconds is None:
        return "unknown"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def track_link(track: Track) -> str:
    title = discord.utils.escape_markdown(track.title)
    return f"[{title}]({track.page_url})" if track.page_url else title


def enqueued_embed(
    tracks: tuple[Track, ...], enqueued: Enqueued, left_out: int = 0
) -> discord.Embed:
    first = tracks[0]
    position = enqueued.position
    heading = "Now playing" if position == 0 else f"Queued at position {position}"
    embed = discord.Embed(title=heading, description=track_link(first), colour=COLOUR)
    embed.add_field(name="Duration", value=format_duration(first.duration))
    if first.requester:
        embed.add_field(name="Requested by", value=first.requester)
    if len(tracks) > 1:
        embed.add_field(name="Tracks added", value=str(len(tracks)))
    if left_out:
        embed.set_footer(text=f"{left_out} more tracks were left out (playlist limit)")
    if first.thumbnail:
        embed.set_thumbnail(url=first.thumbnail)
    return embed
