"""Reading yt-dlp's info dicts: what it found, as frozen values, and whether each may be played.

Pure functions over plain data; nothing here imports yt-dlp or waits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from musicbot.core.messages import Track
from musicbot.sources.query import clean

MAX_TITLE = 256
"""Longest title kept, in characters (what a Discord embed title holds)."""


@attrs.frozen
class Candidate:
    """One track as yt-dlp described it, before the bot's own rules are applied."""

    title: str
    url: str
    """The chosen format's stream URL; empty when yt-dlp found no format to play."""
    page_url: str
    duration: float | None
    thumbnail: str | None
    is_live: bool
    key: str = ""
    """yt-dlp's extractor and id ("Youtube:dQw4w9WgXcQ"), when it gives both."""

    def to_track(self) -> Track:
        return Track(
            title=self.title,
            url=self.url,
            page_url=self.page_url,
            duration=None if self.is_live else self.duration,
            thumbnail=self.thumbnail,
            live=self.is_live,
            key=self.key,
        )


@attrs.frozen
class Pending:
    """A playlist entry yt-dlp only listed (a flat "url" entry): it still has to be resolved."""

    entry: Mapping[str, Any] = attrs.field(eq=False, repr=False)
    """yt-dlp's own entry, handed back to it unchanged to resolve."""
    url: str
    title: str
    duration: float | None
    is_live: bool


Item = Candidate | Pending


@attrs.frozen
class Listing:
    """What one extraction returned: a single track, or the first entries of a playlist."""

    items: tuple[Item | None, ...]
    """In playlist order; None for an entry yt-dlp listed but could not read."""
    is_playlist: bool
    total: int | None
    """How many entries the whole playlist has, when the site says."""


def read_listing(info: Mapping[str, Any] | None, *, page_url: str) -> Listing:
    """The listing of a processed yt-dlp result (`extract_flat="in_playlist"`)."""
    if info is None:
        return Listing(items=(), is_playlist=False, total=None)
    if info.get("_type") in ("playlist", "multi_video"):
        page = _text(info.get("webpage_url")) or page_url
        items = tuple(read_entry(entry, page_url=page) for entry in info.get("entries") or ())
        total = info.get("playlist_count")
        total = total if isinstance(total, int) and total >= 0 else None
        return Listing(items=items, is_playlist=True, total=total)
    return Listing(items=(read_entry(info, page_url=page_url),), is_playlist=False, total=None)


def read_entry(entry: object, *, page_url: str) -> Item | None:
    """A Candidate, a Pending for a flat entry, or None for what is not an entry at all."""
    if not isinstance(entry, Mapping):
        return None
    kind = entry.get("_type", "video")
    if kind in ("url", "url_transparent"):
        url = _text(entry.get("url"))
        if not url:
            return None
        return Pending(
            entry=entry,
            url=url,
            title=title_of(entry, fallback=url),
            duration=_seconds(entry.get("duration")),
            is_live=_is_live(entry),
        )
    if kind != "video":
        return None  # a playlist inside a playlist: not followed
    return read_candidate(entry, page_url=page_url)


def read_candidate(info: Mapping[str, Any], *, page_url: str) -> Candidate:
    """A resolved video result; `page_url` stands in when yt-dlp names no web page."""
    return Candidate(
        title=title_of(info, fallback=page_url),
        url=_stream_url(info),
        page_url=_web_url(info.get("webpage_url")) or page_url,
        duration=_seconds(info.get("duration")),
        thumbnail=_thumbnail(info),
        is_live=_is_live(info),
        key=_identity(info),
    )


_GENERIC_EXTRACTORS = frozenset({"Generic", "HTML5MediaEmbed"})
"""Their ids are file names ("1" for .../1.mp3), not unique: the media's URL identifies it."""


def _identity(info: Mapping[str, Any]) -> str:
    """A stable key for the song: "Extractor:id" for sites with real ids, "url:<media URL>" for
    links to files and pages with audio tags."""
    extractor, video_id = info.get("extractor_key"), info.get("id")
    if not isinstance(extractor, str) or not extractor or extractor in _GENERIC_EXTRACTORS:
        url = _stream_url(info)
        return f"url:{url}" if url else ""
    if isinstance(video_id, str | int) and str(video_id):
        return f"{extractor}:{video_id}"
    return ""


def refusal(item: Item, *, max_duration: float, allow_live: bool) -> str | None:
    """Why the bot will not play this, in words for the user; None when it may."""
    if item.is_live:
        return None if allow_live else f"“{item.title}” is a live stream, and those are off here"
    if item.duration is not None and item.duration > max_duration:
        return (
            f"“{item.title}” is {clock(item.duration)} long; "
            f"the longest I play is {clock(max_duration)}"
        )
    if isinstance(item, Candidate) and not item.url:
        return f"I found no audio I can play in “{item.title}”"
    return None


def clock(seconds: float) -> str:
    """3725 -> "1:02:05", 65 -> "1:05"."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def title_of(info: Mapping[str, Any], *, fallback: str) -> str:
    for key in ("fulltitle", "title", "track", "id"):  # fulltitle: without a live date
        title = clean(_text(info.get(key)))
        if title:
            break
    else:
        title = clean(fallback) or "untitled"
    return title if len(title) <= MAX_TITLE else title[: MAX_TITLE - 1] + "…"


def _stream_url(info: Mapping[str, Any]) -> str:
    url = _text(info.get("url"))
    if url:
        return url
    for fmt in info.get("requested_formats") or ():
        if isinstance(fmt, Mapping) and _text(fmt.get("url")):
            return _text(fmt.get("url"))
    return ""


def _thumbnail(info: Mapping[str, Any]) -> str | None:
    url = _web_url(info.get("thumbnail"))
    if url:
        return url
    for thumb in reversed(info.get("thumbnails") or ()):  # yt-dlp sorts them best last
        if isinstance(thumb, Mapping) and (url := _web_url(thumb.get("url"))):
            return url
    return None


def _is_live(info: Mapping[str, Any]) -> bool:
    return info.get("is_live") is True or info.get("live_status") == "is_live"


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _web_url(value: object) -> str:
    """The value when it is an http(s) URL, else ""."""
    text = _text(value)
    return text if urlsplit(text).scheme.lower() in ("http", "https") else ""
