"""SourceSettings: everything the composition root chooses about turning queries into tracks."""

from __future__ import annotations

from typing import Any

import attrs

from musicbot.sources.query import DEFAULT_MAX_LENGTH, DEFAULT_SEARCH_PREFIX, check_search_prefix
from musicbot.sources.safety import parse_allow


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


def _at_least_one(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value!r}")


@attrs.frozen
class SourceSettings:
    """How YtdlResolver works. Times are in seconds."""

    search_prefix: str = attrs.field(default=DEFAULT_SEARCH_PREFIX, validator=check_search_prefix)
    """What typed words are searched with: a yt-dlp search key and a count, "ytsearch1:"."""
    playlist_cap: int = attrs.field(default=50, validator=_at_least_one)
    """Most tracks taken from one playlist; the rest are counted in Resolved.left_out."""
    max_track_duration: float = attrs.field(default=3 * 60 * 60.0, validator=_positive)
    """Longer tracks are refused (a playlist skips them). Unknown durations pass."""
    resolve_timeout: float = attrs.field(default=20.0, validator=_positive)
    """Longest one query may take, all of a playlist's entries included."""
    allow_hosts: tuple[str, ...] = attrs.field(default=(), converter=parse_allow)
    """Host names or networks that may be private, e.g. ("127.0.0.1",) for tests and the demo."""
    concurrency: int = attrs.field(default=4, validator=_at_least_one)
    """yt-dlp threads at most, for the whole bot. The links to one site get one less (at
    least 1), so that a site that hangs leaves a thread for the others."""
    allow_live: bool = True
    """Whether live streams may be played."""
    max_query_length: int = attrs.field(default=DEFAULT_MAX_LENGTH, validator=_at_least_one)
    """Longest search, in characters."""
