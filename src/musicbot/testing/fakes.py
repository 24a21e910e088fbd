"""Fakes for the core's ports, for tests of anything built on the core (yours too).

They run on whatever clock Trio runs on, so with `autojump_clock` a minute of playback takes
microseconds and every recorded time is exact.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager

import attrs
import trio

from musicbot.core.messages import Resolved, Track
from musicbot.core.ports import FRAME_SECONDS, ResolveError, SourceError, VoiceConnectError


@attrs.frozen
class SentFrame:
    at: float
    opus: bytes


class FakeVoice:
    """A VoicePort that records what a player does with it.

    `connect_error` makes connect() fail with that message; `hang_on_disconnect` makes
    disconnect() never return, to prove the caller bounds it. `record=False` only counts
    frames and speaking changes (`frames_sent`, `speaking_switches`), for runs long enough
    that keeping them would be what grows.
    """

    def __init__(
        self,
        guild_id: int = 0,
        *,
        connect_error: str | None = None,
        connect_delay: float = 0.0,
        hang_on_disconnect: bool = False,
        record: bool = True,
    ) -> None:
        self.guild_id = guild_id
        self.record = record
        self.connect_error = connect_error
        self.connect_delay = connect_delay
        self.hang_on_disconnect = hang_on_disconnect
        self.channel_id: int | None = None
        self.connects = 0
        self.disconnects = 0
        self.disconnected_at: float | None = None
        self.frames: list[SentFrame] = []
        self.speaking_changes: list[tuple[float, bool]] = []
        self.frames_sent = 0
        self.speaking_switches = 0

    @property
    def connected(self) -> bool:
        return self.connects > 0 and self.disconnects == 0

    async def connect(self, channel_id: int | None) -> None:
        await trio.sleep(self.connect_delay)
        if self.connect_error is not None:
            raise VoiceConnectError(self.connect_error)
        self.channel_id = channel_id
        self.connects += 1

    def send_frame(self, opus: bytes) -> None:
        if self.disconnects:
            raise RuntimeError("frame sent after disconnect")
        self.frames_sent += 1
        if self.record:
            self.frames.append(SentFrame(trio.current_time(), opus))

    async def set_speaking(self, speaking: bool) -> None:
        self.speaking_switches += 1
        if self.record:
            self.speaking_changes.append((trio.current_time(), speaking))

    async def disconnect(self) -> None:
        self.disconnects += 1
        self.disconnected_at = trio.current_time()
        if self.hang_on_disconnect:
            await trio.sleep_forever()

    def payloads(self) -> list[bytes]:
        return [frame.opus for frame in self.frames]


class FakeFrameSource:
    """A FrameSource whose frames name their track and index: b"<title>:<k>".

    A track plays for its duration (one frame per 20 ms); a track whose url starts with
    "fail:" raises SourceError on open, one starting with "stall:" stops delivering frames
    halfway until `release_stalls()`. It records every stream it opened and closed
    (`record=False`: only counts them, in `streams_opened` and `streams_closed`).
    """

    def __init__(self, *, record: bool = True) -> None:
        self.record = record
        self.opened: list[tuple[str, float, int]] = []
        self.closed: list[str] = []
        self.streams_opened = 0
        self.streams_closed = 0
        self._stall_released = trio.Event()

    def release_stalls(self) -> None:
        self._stall_released.set()

    @asynccontextmanager
    async def open(
        self, track: Track, *, start: float = 0.0, volume: int = 100
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        if track.url.startswith("fail:"):
            raise SourceError(track.url.removeprefix("fail:") or "this track cannot be read")
        self.streams_opened += 1
        if self.record:
            self.opened.append((track.title, start, volume))
        frames = self._frames(track, start)
        try:
            # A real source holds a nursery (ffmpeg's stderr reader); so does this one, so that
            # a caller that misuses cancel scopes around it fails here as it would there.
            async with trio.open_nursery():
                yield frames
        finally:
            await frames.aclose()
            self.streams_closed += 1
            if self.record:
                self.closed.append(track.title)

    async def _frames(self, track: Track, start: float) -> AsyncGenerator[bytes, None]:
        total = math.ceil((track.duration or 1.0) / FRAME_SECONDS)
        first = round(start / FRAME_SECONDS)
        for k in range(first, total):
            if track.url.startswith("stall:") and k == total // 2:
                await self._stall_released.wait()
            await trio.lowlevel.checkpoint()
            yield f"{track.title}:{k}".encode()


class FakeResolver:
    """A Resolver answering from a mapping of query to tracks; counts the calls it gets."""

    def __init__(self, answers: Mapping[str, Resolved] | None = None) -> None:
        self.answers = dict(answers or {})
        self.calls: list[str] = []

    async def resolve(self, query: str) -> Resolved:
        self.calls.append(query)
        await trio.lowlevel.checkpoint()
        try:
            return self.answers[query]
        except KeyError:
            raise ResolveError(f"nothing found for {query!r}") from None


def tone_track(title: str, seconds: float = 1.0, *, url: str | None = None) -> Track:
    """A Track for FakeFrameSource: `seconds` of frames named after `title`."""
    return Track(title=title, url=url or f"fake://{title}", duration=seconds)


class FakeWarmer:
    """A Warmer that takes `seconds` per track and records what it started, finished and had
    cancelled (by title)."""

    def __init__(self, seconds: float = 1.0) -> None:
        self.seconds = seconds
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []

    async def warm(self, track: Track) -> None:
        self.started.append(track.title)
        try:
            await trio.sleep(self.seconds)
        except trio.Cancelled:
            self.cancelled.append(track.title)
            raise
        self.finished.append(track.title)
