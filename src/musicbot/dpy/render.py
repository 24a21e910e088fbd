"""How the bot's answers look: embeds and short texts built from core values."""

from __future__ import annotations

import re

import discord

from musicbot.core.messages import Enqueued, LoopMode, NowPlaying, QueueView, Track

COLOUR = discord.Colour.blurple()
QUEUE_PAGE_SIZE = 10
BAR_WIDTH = 20
LOOP_WORDS = {LoopMode.OFF: "off", LoopMode.TRACK: "this track", LoopMode.QUEUE: "the queue"}


def format_duration(seconds: float | None) -> str:
    """`3:07`, `1:02:03`, or `unknown`."""
    if seconds is None:
        return "unknown"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


_TIMESTAMP = re.compile(r"^\s*(?:(?:(\d{1,2}):)?(\d{1,2}):)?(\d{1,5}(?:\.\d+)?)\s*$")


def parse_timestamp(text: str) -> float | None:
    """`90`, `1:30`, `1:02:03` (and fractions of a second) as seconds; None if not a time."""
    match = _TIMESTAMP.match(text)
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    if (minutes is not None and float(seconds) >= 60) or (hours is not None and int(minutes) >= 60):
        return None
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds)


DESCRIPTION_LIMIT = 4096
"""Discord's limit on an embed's description, in characters."""
LONGEST_LINK = 512
"""A page link longer than this is left out (the title alone shows): anyone's link can be up
to 4,096 characters, and ten of those would not fit in a queue page."""
_MARKDOWN = re.compile(r"[\\*_~`|>#\-\[\]()<]")
_URL_BREAKERS = {"(": "%28", ")": "%29", "<": "%3C", ">": "%3E", " ": "%20"}


def escaped(text: str) -> str:
    """`text` shown as written. Brackets too: a title or a name must not end the link it is
    the text of and start one of its own (`x](http://elsewhere) [y`)."""
    return _MARKDOWN.sub(lambda match: "\\" + match[0], text)


def track_link(track: Track) -> str:
    title = escaped(track.title)
    url = track.page_url
    if not url or len(url) > LONGEST_LINK:
        return title
    for breaker, code in _URL_BREAKERS.items():  # each would end the link early
        url = url.replace(breaker, code)
    return f"[{title}]({url})"


def fit_lines(lines: list[str], limit: int = DESCRIPTION_LIMIT) -> str:
    """The lines, as many as fit in `limit` characters, then how many did not."""
    text = ""
    for index, line in enumerate(lines):
        joined = f"{text}\n{line}" if text else line
        after = len(lines) - index - 1
        room = limit - (len(f"\n… and {after} more") if after else 0)
        if len(joined) > room:
            missing = f"… and {len(lines) - index} more"
            return f"{text}\n{missing}" if text else missing
        text = joined
    return text


def progress_bar(elapsed: float, duration: float | None) -> str:
    if duration is None or duration <= 0:
        return f"`{format_duration(elapsed)}` (live)" if elapsed else "live"
    filled = min(BAR_WIDTH, int(BAR_WIDTH * elapsed / duration))
    bar = "▬" * filled + "🔘" + "▬" * (BAR_WIDTH - filled)
    return f"{bar} `{format_duration(elapsed)} / {format_duration(duration)}`"


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
    if enqueued.count > 1:
        embed.add_field(name="Tracks added", value=str(enqueued.count))
    notes = []
    if left_out:
        notes.append(f"{left_out} more tracks were left out (playlist limit)")
    if enqueued.left_out:
        notes.append(f"{enqueued.left_out} did not fit in the queue (queue limit)")
    if notes:
        embed.set_footer(text="; ".join(notes))
    if first.thumbnail:
        embed.set_thumbnail(url=first.thumbnail)
    return embed


def now_playing_embed(now: NowPlaying, *, heading: str = "Now playing") -> discord.Embed:
    track = now.track
    if now.paused:
        heading = f"{heading} (paused)"
    embed = discord.Embed(title=heading, description=track_link(track), colour=COLOUR)
    embed.add_field(name="Progress", value=progress_bar(now.elapsed, track.duration), inline=False)
    if track.requester:
        embed.add_field(name="Requested by", value=track.requester)
    embed.add_field(name="Volume", value=f"{now.volume} %")
    embed.add_field(name="Loop", value=LOOP_WORDS[now.loop])
    if track.thumbnail:
        embed.set_thumbnail(url=track.thumbnail)
    return embed


def started_embed(track: Track) -> discord.Embed:
    """Announced in the channel when a queued track starts."""
    embed = discord.Embed(title="Now playing", description=track_link(track), colour=COLOUR)
    embed.add_field(name="Duration", value=format_duration(track.duration))
    if track.requester:
        embed.add_field(name="Requested by", value=track.requester)
    return embed


def page_count(view: QueueView) -> int:
    return max(1, -(-len(view.upcoming) // QUEUE_PAGE_SIZE))


def queue_embed(view: QueueView, page: int) -> discord.Embed:
    """Page `page` (1-based, clamped) of the queue."""
    pages = page_count(view)
    page = min(max(page, 1), pages)
    embed = discord.Embed(title="Queue", colour=COLOUR)
    lines = []
    if view.now_playing is not None:
        now = view.now_playing
        state = "Paused" if now.paused else "Playing"
        lines.append(
            f"**{state}:** {track_link(now.track)} `{format_duration(now.elapsed)} / "
            f"{format_duration(now.track.duration)}`"
        )
    first = (page - 1) * QUEUE_PAGE_SIZE
    for number, track in enumerate(view.upcoming[first : first + QUEUE_PAGE_SIZE], first + 1):
        who = f" · {escaped(track.requester)}" if track.requester else ""
        lines.append(f"`{number}.` {track_link(track)} `{format_duration(track.duration)}`{who}")
    if not view.upcoming:
        lines.append("Nothing is queued." if view.now_playing else "The queue is empty.")
    embed.description = fit_lines(lines)
    total = sum(t.duration or 0 for t in view.upcoming)
    embed.set_footer(
        text=f"Page {page}/{pages} · {len(view.upcoming)} tracks · {format_duration(total)} · "
        f"loop {LOOP_WORDS[view.loop]} · volume {view.volume} %"
    )
    return embed
