"""GuildPlayer: one actor per guild, owning its voice connection, queue and pacing loop."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator

import attrs
import trio

from musicbot.core.mailbox import InboxReceiver, close_inbox
from musicbot.core.messages import (
    Enqueue,
    Enqueued,
    GetNowPlaying,
    GetQueue,
    Leave,
    NowPlaying,
    Pause,
    PlayerState,
    QueueView,
    Resume,
    Skip,
    Stop,
    Track,
    TrackFailed,
    TrackStarted,
)
from musicbot.core.ports import (
    FRAME_SECONDS,
    EventSink,
    FrameSource,
    SourceError,
    VoicePort,
    ignore_event,
)

log = logging.getLogger(__name__)

DISCONNECT_TIMEOUT = 2.0
"""Seconds a player's voice teardown may take before it is abandoned."""

LATE_AFTER = 0.005
"""A frame sent more than this after its deadline counts as late."""

RESYNC_AFTER = 0.100
"""A frame this late (the source stalled) restarts the schedule instead of bursting to catch up."""

LATENESS_WINDOW = 3000
"""Lateness samples kept for percentiles: the last minute of frames."""


@attrs.frozen
class PlayerStatistics:
    guild_id: int
    state: PlayerState
    idle_seconds: float
    """Seconds since the last activity (a command, the end of a track); 0 while playing."""
    queue_length: int
    frames_sent: int
    frames_late: int
    resyncs: int
    lateness_p50: float
    lateness_p99: float
    lateness_max: float


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)
    return ordered[max(index, 0)]


class GuildPlayer:
    """Plays one guild's queue into its voice connection.

    Runs as `await player.run(inbox, task_status=...)` inside a cancel scope its supervisor owns.
    It connects before it reports started, serves its inbox while a second task paces frames,
    and whatever ends it (Leave, the supervisor's cancel, a crash) disconnects voice on the way
    out, shielded and bounded by DISCONNECT_TIMEOUT.
    """

    def __init__(
        self,
        guild_id: int,
        voice: VoicePort,
        source: FrameSource,
        *,
        channel_id: int | None = None,
        on_event: EventSink = ignore_event,
    ) -> None:
        self.guild_id = guild_id
        self._voice = voice
        self._source = source
        self._channel_id = channel_id
        self._on_event = on_event

        self._queue: deque[Track] = deque()
        self._queue_changed = trio.Event()
        self._current: Track | None = None
        self._track_scope: trio.CancelScope | None = None
        self._frames_into_track = 0
        self._paused = False
        self._resumed = trio.Event()
        self._speaking = False
        self._last_activity = trio.current_time()
        self._leave_scope = trio.CancelScope()
        self.ending = False
        """True once the player is on its way out: it takes no new work."""

        self._frames_sent = 0
        self._frames_late = 0
        self._resyncs = 0
        self._lateness: deque[float] = deque(maxlen=LATENESS_WINDOW)

    # --- the actor ---------------------------------------------------------------------------

    async def run(
        self,
        inbox: InboxReceiver,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await self._voice.connect(self._channel_id)
            self._touch()
            task_status.started()
            with self._leave_scope:
                async with trio.open_nursery() as activities:
                    activities.start_soon(self._play_queue)
                    await self._serve(inbox)
                    activities.cancel_scope.cancel()
        finally:
            self.ending = True
            close_inbox(inbox)
            with trio.move_on_after(DISCONNECT_TIMEOUT, shield=True):
                await self._voice.disconnect()

    async def _serve(self, inbox: InboxReceiver) -> None:
        async for request in inbox:
            with request.reply_to:
                self._touch()
                request.reply_to.send_nowait(self._handle(request.body))

    def _handle(self, body: object) -> object:
        match body:
            case Enqueue(tracks=tracks):
                return self._enqueue(tracks)
            case Skip():
                skipped = self._current
                if self._track_scope is not None:
                    self._track_scope.cancel()
                return skipped
            case Pause():
                if self._current is None or self._paused:
                    return False
                self._paused = True
                self._resumed = trio.Event()
                return True
            case Resume():
                if not self._paused:
                    return False
                self._paused = False
                self._resumed.set()
                return True
            case Stop():
                dropped = len(self._queue)
                self._queue.clear()
                if self._track_scope is not None:
                    self._track_scope.cancel()
                    dropped += 1
                self._paused = False
                self._resumed.set()
                return dropped
            case Leave():
                self.ending = True
                self._leave_scope.cancel()
                return None
            case GetNowPlaying():
                return self._now_playing()
            case GetQueue():
                return QueueView(self._now_playing(), tuple(self._queue))
        raise TypeError(f"GuildPlayer got an unknown message: {body!r}")

    def _enqueue(self, tracks: tuple[Track, ...]) -> Enqueued:
        starts_now = self._current is None and not self._queue
        position = 0 if starts_now else len(self._queue) + 1
        self._queue.extend(tracks)
        self._queue_changed.set()
        return Enqueued(position=position, count=len(tracks))

    def _now_playing(self) -> NowPlaying | None:
        if self._current is None:
            return None
        elapsed = self._frames_into_track * FRAME_SECONDS
        return NowPlaying(self._current, elapsed, self._paused)

    # --- playback ----------------------------------------------------------------------------

    async def _play_queue(self) -> None:
        while True:
            while not self._queue:
                await self._set_speaking(False)
                self._queue_changed = trio.Event()
                await self._queue_changed.wait()
            track = self._queue.popleft()
            self._current = track
            self._frames_into_track = 0
            try:
                with trio.CancelScope() as self._track_scope:
                    async with self._source.open(track) as frames:
                        self._on_event(TrackStarted(self.guild_id, track))
                        await self._pace(frames)
            except SourceError as exc:
                log.info("guild %s: track %r failed: %s", self.guild_id, track.title, exc)
                self._on_event(TrackFailed(self.guild_id, track, str(exc)))
            finally:
                self._current = None
                self._track_scope = None
                self._paused = False
                self._touch()

    async def _pace(self, frames: AsyncIterator[bytes]) -> None:
        """Send frame k at anchor + k x 20 ms: absolute deadlines, so lateness never accumulates."""
        anchor: float | None = None  # set when the first frame is in hand, not before
        k = 0
        async for frame in frames:
            if anchor is None:
                anchor = trio.current_time()
            due = anchor + k * FRAME_SECONDS
            await trio.sleep_until(due)
            if self._paused:
                await self._set_speaking(False)
                await self._wait_until_resumed()
                anchor = trio.current_time() - k * FRAME_SECONDS
                due = anchor + k * FRAME_SECONDS
            lateness = trio.current_time() - due
            if lateness > RESYNC_AFTER:
                anchor += lateness
                self._resyncs += 1
            await self._set_speaking(True)
            self._voice.send_frame(frame)
            self._frames_sent += 1
            self._frames_into_track += 1
            if lateness > LATE_AFTER:
                self._frames_late += 1
            self._lateness.append(lateness)
            k += 1

    async def _wait_until_resumed(self) -> None:
        while self._paused:
            await self._resumed.wait()

    async def _set_speaking(self, speaking: bool) -> None:
        if speaking != self._speaking:
            self._speaking = speaking
            await self._voice.set_speaking(speaking)

    def _touch(self) -> None:
        self._last_activity = trio.current_time()

    # --- what the supervisor reads -----------------------------------------------------------

    @property
    def state(self) -> PlayerState:
        if self._current is None:
            return PlayerState.IDLE
        return PlayerState.PAUSED if self._paused else PlayerState.PLAYING

    def idle_seconds(self) -> float:
        """Seconds without activity; 0 while a track is playing (playing is activity)."""
        if self.state is PlayerState.PLAYING:
            return 0.0
        return trio.current_time() - self._last_activity

    def statistics(self) -> PlayerStatistics:
        ordered = sorted(self._lateness)
        return PlayerStatistics(
            guild_id=self.guild_id,
            state=self.state,
            idle_seconds=self.idle_seconds(),
            queue_length=len(self._queue),
            frames_sent=self._frames_sent,
            frames_late=self._frames_late,
            resyncs=self._resyncs,
            lateness_p50=_percentile(ordered, 0.50),
            lateness_p99=_percentile(ordered, 0.99),
            lateness_max=ordered[-1] if ordered else 0.0,
        )
