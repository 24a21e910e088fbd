"""A yt-dlp search extractor over the loopback media server: `loopbacksearchN:words`.

It lets the bot's real search path (the search prefix, yt-dlp's search machinery, the resolver's
checks) run offline. Words that name a frequency find a tone of it: "440 hz", "a 660hz tone for
2s", "440 hz 4h" (a track of 4 hours, by its metadata). Anything else finds nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from yt_dlp.extractor.common import SearchInfoExtractor

from musicbot.sources.safety import UrlPolicy
from musicbot.sources.ytdl import GuardedYoutubeDL, MakeYtdl
from musicbot.testing.media import MediaServer

SEARCH_PREFIX = "loopbacksearch1:"
_FREQUENCY = re.compile(r"\b(\d{2,5})\s*hz\b", re.IGNORECASE)
_LENGTH = re.compile(r"\b(\d+(?:\.\d+)?)\s*(s|sec|seconds?|m|min|minutes?|h|hours?)\b", re.I)
_UNIT = {"s": 1, "m": 60, "h": 3600}
LONGEST_FILE = 30.0
"""Tones longer than this are served this long; their metadata keeps the length asked for."""


class LoopbackSearchIE(SearchInfoExtractor):  # type: ignore[misc]  # yt-dlp ships no types
    IE_NAME = "loopbacksearch"
    _SEARCH_KEY = "loopbacksearch"

    def __init__(self, media: MediaServer) -> None:
        super().__init__()
        self.media = media

    def _search_results(self, query: str) -> Iterator[dict[str, Any]]:
        frequency = _FREQUENCY.search(query)
        if frequency is None:
            return
        freq = int(frequency.group(1))
        seconds = 3.0
        length = _LENGTH.search(query.replace(frequency.group(0), " "))
        if length is not None:
            seconds = float(length.group(1)) * _UNIT[length.group(2)[0].lower()]
        yield {
            "id": f"tone-{freq}-{seconds:g}",
            "title": f"Tone {freq} Hz",
            "url": self.media.tone_url(freq, min(seconds, LONGEST_FILE)),
            "webpage_url": self.media.page_url(freq, min(seconds, LONGEST_FILE)),
            "ext": "mp3",
            "duration": seconds,
        }


def with_loopback_search(media: MediaServer) -> MakeYtdl:
    """A YoutubeDL factory for YtdlResolver with the loopback search ahead of the rest."""

    def make(params: dict[str, Any], policy: UrlPolicy) -> GuardedYoutubeDL:
        ytdl = GuardedYoutubeDL(params, policy, auto_init=False)
        ytdl.add_info_extractor(LoopbackSearchIE(media))
        ytdl.add_default_info_extractors()
        return ytdl

    return make
