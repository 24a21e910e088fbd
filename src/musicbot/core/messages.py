"""Values and messages that cross actor boundaries: frozen, typed, a closed set.

A request names the type of its answer (`Request[R]`), so `ask()` is typed end to end.
"""

from __future__ import annotations

import enum
from typing import ClassVar, Generic, TypeVar

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
    live: bool = False
    """A live stream: no duration, no seeking, never stored."""
    key: str = ""
    """A stable identity for the song (the site's extractor and id, e.g. "Youtube:dQw4w9WgXcQ"),
    when the resolver knows one; stream URLs change, this does not."""


@attrs.frozen
class Resolved:
    """What a query resolved to: the tracks, and how many a playlist cap left out."""

    tracks: tuple[Track, ...]
    left_out: int = 0


class PlayerState(enum.Enum):
    PLAYING = "playing"
    PAUSED = "paused"
    IDLE = "idle"


class LoopMode(enum.Enum):
    OFF = "off"
    TRACK = "track"
    QUEUE = "queue"


class Request(Generic[R]):
    """Base of every message that expects an answer of type R."""

    __slots__ = ()

    reply_timeout: ClassVar[float] = 5.0
    """Seconds `ask()` waits for the answer; an actor answers at once unless it says otherwise."""


class Refused(Exception):
    """An actor's expected "no" (the queue is full, there is no track 7...). The message is
    written for the user who asked; it is an answer, not a failure."""


# --- GuildPlayer requests ---------------------------------------------------------------------


@attrs.frozen
class Enqueued:
    position: int
    """1-based position of the first added track in the queue; 0 when it starts playing now."""
    count: int
    """Tracks added."""
    left_out: int = 0
    """Tracks not added because the queue reached its limit."""


@attrs.frozen
class Enqueue(Request[Enqueued]):
    """Add tracks to the queue. With `wait_for_start`, a first track that starts now is answered
    only once its audio is flowing (or with the SourceError that stopped it), so the user hears
    about a dead link from the command itself."""

    tracks: tuple[Track, ...]
    wait_for_start: bool = False
    reply_timeout: ClassVar[float] = 60.0


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
class SetVolume(Request[int]):
    """Set the volume (0-200 %) from the current position on; answers the new volume."""

    percent: int


@attrs.frozen
class Seek(Request[float]):
    """Jump to `seconds` into the current track; answers the new position."""

    seconds: float


@attrs.frozen
class SetLoop(Request[LoopMode]):
    mode: LoopMode


@attrs.frozen
class Shuffle(Request[int]):
    """Shuffle the upcoming tracks; answers how many were shuffled."""


@attrs.frozen
class Remove(Request[Track]):
    """Remove the upcoming track at 1-based `position`; answers the track removed."""

    position: int


@attrs.frozen
class NowPlaying:
    track: Track
    elapsed: float
    paused: bool
    volume: int = 100
    loop: LoopMode = LoopMode.OFF


@attrs.frozen
class GetNowPlaying(Request["NowPlaying | None"]):
    pass


@attrs.frozen
class QueueView:
    now_playing: NowPlaying | None
    upcoming: tuple[Track, ...]
    loop: LoopMode = LoopMode.OFF
    volume: int = 100


@attrs.frozen
class GetQueue(Request[QueueView]):
    pass


# --- Events the core reports to whoever renders them (the Discord adapter) --------------------


class EndReason(enum.Enum):
    LEFT = "left"
    """Someone ran /leave."""
    IDLE = "idle"
    """Nothing played and nobody asked for anything for idle_timeout."""
    ALONE = "alone"
    """Nobody else was in the voice channel for alone_timeout."""
    PAUSED = "paused"
    """Paused for paused_timeout."""
    DISCONNECTED = "disconnected"
    """Discord took the bot out of the voice channel (a moderator, a deleted channel)."""
    CRASHED = "crashed"
    SHUTDOWN = "shutdown"


@attrs.frozen
class TrackStarted:
    guild_id: int
    track: Track
    answered: bool = False
    """The command that queued it was answered with its start: no need to announce it again."""
    repeat: bool = False
    """It started again because the track loops."""


@attrs.frozen
class TrackFailed:
    guild_id: int
    track: Track
    reason: str


@attrs.frozen
class PlayerEnded:
    guild_id: int
    reason: EndReason
    seconds: float
    """How long it had been in the state that ended it (idle, alone, paused)."""


PlayerEvent = TrackStarted | TrackFailed | PlayerEnded
