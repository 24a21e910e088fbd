"""Values and messages that cross actor boundaries: frozen, typed, a closed set.

A request names the type of its answer (`Request[R]`), so `ask()` is typed end to end.
"""

from __future__ import annotations

import enum
from typing import Generic, TypeVar

import attrs

R = TypeVar("R")


@attrs.frozen
class Track:
    """A playable track, as a resolver found it."""

    title: str
    url: str
    """Where the audio is read from; stream URLs expire, so tracks live no longer than the cache."""
    page_url: str = ""
    """The page a person would open, for links in embeds."""
    duration: float | None = None
    """Seconds, when known; None for live streams and sources that do not say."""
    thumbnail: str | None = None
    requester: str = ""


@attrs.frozen
class Resolved:
    """What a query resolved to: the tracks, and how many a playlist cap left out."""

    tracks: tuple[Track, ...]
    left_out: int = 0


class PlayerState(enum.Enum):
    PLAYING = "playing"
    PAUSED = "paused"
    IDLE = "idle"


class Request(Generic[R]):
    """Base of every message that expects an answer of type R."""

    __slots__ = ()


# --- GuildPlayer requests ---------------------------------------------------------------------


@attrs.frozen
class Enqueued:
    position: int
    """1-based position of the first added track in the queue; 0 when it starts playing now."""
    count: int


@attrs.frozen
class Enqueue(Request[Enqueued]):
    tracks: tuple[Track, ...]


@attrs.frozen
class Skip(Request["Track | None"]):
    """Skip the current track; answers with the track skipped, or None if nothing played."""


@attrs.frozen
class Pause(Request[bool]):
    """Answers whether this changed anything (False when already paused or idle)."""


@attrs.frozen
class Resume(Request[bool]):
    """Answers whether this changed anything (False when not paused)."""


@attrs.frozen
class Stop(Request[int]):
    """Stop playback and clear the queue, staying connected; answers how many tracks dropped."""


@attrs.frozen
class Leave(Request[None]):
    """End the actor: stop playback and disconnect from voice."""


@attrs.frozen
class NowPlaying:
    track: Track
    elapsed: float
    paused: bool


@attrs.frozen
class GetNowPlaying(Request["NowPlaying | None"]):
    pass


@attrs.frozen
class QueueView:
    now_playing: NowPlaying | None
    upcoming: tuple[Track, ...]


@attrs.frozen
class GetQueue(Request[QueueView]):
    pass


# --- Events the core reports to whoever renders them (the Discord adapter) --------------------


class EndReason(enum.Enum):
    LEFT = "left"
    IDLE = "idle"
    CRASHED = "crashed"
    SHUTDOWN = "shutdown"


@attrs.frozen
class TrackStarted:
    guild_id: int
    track: Track


@attrs.frozen
class TrackFailed:
    guild_id: int
    track: Track
    reason: str


@attrs.frozen
class PlayerEnded:
    guild_id: int
    reason: EndReason
    idle_seconds: float


PlayerEvent = TrackStarted | TrackFailed | PlayerEnded
