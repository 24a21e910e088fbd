"""The ports the core needs from the outside world, as Protocols.

Adapters implement them: `musicbot.dpy.voice` over discord.py, `musicbot.audio` over ffmpeg and
the processed-song store, `musicbot.sources` over yt-dlp. `musicbot.testing` has fakes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from musicbot.core.messages import PlayerEvent, Resolved, Track

FRAME_SECONDS = 0.020
"""Discord voice carries one 20 ms Opus frame per RTP packet: 50 packets a second."""


class VoiceConnectError(Exception):
    """A voice connection could not be made. The message is written for the user who asked."""


class SourceError(Exception):
    """A track's audio could not be read. The message is written for the user who asked."""


class ResolveError(Exception):
    """A query could not be resolved to tracks. The message is written for the user who asked."""


class VoicePort(Protocol):
    """One guild's voice connection, owned by that guild's GuildPlayer."""

    async def connect(self, channel_id: int | None) -> None:
        """Join the voice channel; raises VoiceConnectError with a message for the user."""

    def send_frame(self, opus: bytes) -> None:
        """Send one 20 ms Opus frame now. Must not block: the pacing loop calls it on time."""

    async def set_speaking(self, speaking: bool) -> None:
        """Tell Discord whether audio is flowing (the speaking indicator)."""

    async def disconnect(self) -> None:
        """Leave voice. Called exactly once, shielded and bounded in time by the caller."""


class FrameSource(Protocol):
    """Where a track's Opus frames come from: ffmpeg, the processed-song store, a test tone."""

    def open(
        self, track: Track, *, start: float = 0.0, volume: int = 100
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Frames of `track` from `start` seconds, at `volume` percent.

        Leaving the context releases everything the stream holds (a child process is killed and
        reaped). Raises SourceError with a message for the user when the audio cannot be read.
        """
        ...


class Warmer(Protocol):
    """Prepares a track ahead of time (transcodes it into the processed-song store), so that it
    starts at once when its turn comes."""

    async def warm(self, track: Track) -> None:
        """Return when the track is ready, or cannot be made ready (never raises SourceError:
        warming is a favour, and the track will be tried again when it plays). Cancellable."""
        ...


class Heap(Protocol):
    """The process's memory, kept in shape for a run of months (musicbot.memory has the real
    one; the default does nothing)."""

    def settle(self) -> None:
        """A voice connection was just made: what it holds lives as long as it does."""
        ...

    def sweep(self) -> int:
        """At each idle sweep: collect what died since the last one and give free memory back
        to the operating system; returns the bytes given back."""
        ...


class NoHeap:
    """A Heap that leaves memory to Python as it is."""

    def settle(self) -> None:
        pass

    def sweep(self) -> int:
        return 0


class Resolver(Protocol):
    """Turns what a user typed into tracks."""

    async def resolve(self, query: str) -> Resolved:
        """Raises ResolveError with a message for the user when nothing playable is found."""
        ...


VoiceFactory = Callable[[int], VoicePort]
"""Makes the (not yet connected) voice port for a guild id."""

EventSink = Callable[[PlayerEvent], None]
"""Receives the core's events. Called synchronously from actors, so it must not block."""


def ignore_event(event: PlayerEvent) -> None:
    """The EventSink used when nobody listens."""
