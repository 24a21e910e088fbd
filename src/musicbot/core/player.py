"""GuildPlayer: one actor per guild, owning its voice connection, queue and pacing loop."""

from __future__ import annotations

import enum
import logging
import math
import random
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

from musicbot.core.clock import FrameClock
from musicbot.core.mailbox import InboxReceiver, close_inbox
from musicbot.core.messages import (
    Enqueue,
    Enqueued,
    GetNowPlaying,
    GetQueue,
    Leave,
    LoopMode,
    NowPlaying,
    Pause,
    PlayerState,
    QueueView,
    Refused,
    Remove,
    Resume,
    Seek,
    SetLoop,
    SetVolume,
    Shuffle,
    Skip,
    Stop,
    Track,
    TrackFailed,
    TrackStarted,
)
from musicbot.core.pacing import FrameWindow
from musicbot.core.ports import (
    FRAME_SECONDS,
    EventSink,
    FrameSource,
    SourceError,
    VoicePort,
    Warmer,
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

WATCHDOG_REFRESH = 1.0
"""Seconds between moves of the stall watchdog's deadline while frames flow."""

MAX_VOLUME = 200

_DEFERRED: Any = object()
"""What `_handle` returns when the answer will be sent later (by the playback task)."""


class _Outcome(enum.Enum):
    FINISHED = "finished"
    SKIPPED = "skipped"
    STOPPED = "stopped"
    FAILED = "failed"


@attrs.frozen
class PlayerLimits:
    max_queue_length: int = 500
    open_timeout: float = 10.0
    """Seconds a track may take to start sending audio before it counts as failed."""
    stall_timeout: float = 15.0
    """Seconds without a frame, mid-track, before the track counts as failed."""
    warm_ahead: int = 2
    """Upcoming tracks prepared in the background while one plays (with a Warmer)."""


@attrs.frozen
class PlayerStatistics:
    guild_id: int
    state: PlayerState
    idle_seconds: float
    """Seconds since the last activity (a command, the end of a track); 0 while playing."""
    queue_length: int
    frames_sent: int
    frames_late: int
    frames_sent_last_minute: int
    frames_missing_last_minute: int
    """Frames that should have gone out in the last minute but did not (the source stalled)."""
    resyncs: int
    alone_seconds: float
    """Seconds nobody else has been in the voice channel; 0 when someone is."""
    paused_seconds: float
    lateness_p50: float
    lateness_p99: float
    lateness_max: float


@attrs.define(eq=False)
class _Entry:
    """A track in this queue; identity matters (the same song may be queued twice)."""

    track: Track
    waiter: trio.MemorySendChannel[Any] | None = None
    """The Enqueue waiting to hear whether this track started..."""
    owed: Enqueued | None = None
    """...and the answer it gets if it did (or if it was skipped before it could)."""
    repeat: bool = False
    """Queued again by loop track."""

    def settle(self, failure: SourceError | None = None) -> None:
        """Answer the waiting Enqueue, if any: `owed`, or the failure that stopped the track."""
        if self.waiter is not None:
            with self.waiter:
                self.waiter.send_nowait(failure if failure is not None else self.owed)
            self.waiter = None

    def forget(self) -> None:
        """The player is ending: the waiting Enqueue hears ActorGone."""
        if self.waiter is not None:
            self.waiter.close()
            self.waiter = None


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
        limits: PlayerLimits = PlayerLimits(),
        warmer: Warmer | None = None,
        clock: FrameClock | None = None,
    ) -> None:
        self.guild_id = guild_id
        # A supervisor's players share its FrameClock; a player on its own sleeps by itself.
        self._sleep_until = trio.sleep_until if clock is None else clock.sleep_until
        self._voice = voice
        self._source = source
        self._channel_id = channel_id
        self._on_event = on_event
        self._limits = limits
        self._warmer = warmer
        self._upcoming_changed = trio.Event()

        self._queue: deque[_Entry] = deque()
        self._queue_changed = trio.Event()
        self._current: _Entry | None = None
        self._track_scope: trio.CancelScope | None = None
        self._stream_scope: trio.CancelScope | None = None
        self._restart_at: float | None = None
        self._stream_start = 0.0
        self._frames_into_stream = 0
        self._next_due = -math.inf
        """When the frame after the last one sent is due: the next stream starts no earlier."""
        self._volume = 100
        self._loop = LoopMode.OFF
        self._ended_by: _Outcome | None = None
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
        self._window = FrameWindow()
        self._alone_since: float | None = None
        self._paused_since: float | None = None
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
                    if self._warmer is not None and self._limits.warm_ahead > 0:
                        activities.start_soon(self._warm_upcoming, self._warmer)
                    await self._serve(inbox)
                    activities.cancel_scope.cancel()
        finally:
            self.ending = True
            close_inbox(inbox)
            for entry in (self._current, *self._queue):
                if entry is not None:
                    entry.forget()
            with trio.move_on_after(DISCONNECT_TIMEOUT, shield=True):
                await self._voice.disconnect()

    async def _serve(self, inbox: InboxReceiver) -> None:
        async for request in inbox:
            self._touch()
            try:
                answer = self._handle(request.body, request.reply_to)
            except Refused as refusal:
                answer = refusal
            except BaseException:
                request.reply_to.close()  # the asker hears ActorGone now, not at its timeout
                raise
            if answer is _DEFERRED:
                continue  # the reply channel now belongs to a queue entry
            with request.reply_to:
                request.reply_to.send_nowait(answer)

    def _handle(self, body: object, reply_to: trio.MemorySendChannel[Any]) -> object:
        match body:
            case Enqueue(tracks=tracks, wait_for_start=wait):
                return self._enqueue(tracks, reply_to if wait else None)
            case Skip():
                skipped = self._current.track if self._current else None
                self._end_track(_Outcome.SKIPPED)
                return skipped
            case Pause():
                if self._current is None or self._paused:
                    return False
                self._paused = True
                self._paused_since = trio.current_time()
                self._resumed = trio.Event()
                return True
            case Resume():
                if not self._paused:
                    return False
                self._paused = False
                self._resumed.set()
                return True
            case Stop():
                dropped = len(self._queue) + (self._current is not None)
                for entry in self._queue:
                    entry.settle()
                self._queue.clear()
                self._upcoming_changed.set()
                self._end_track(_Outcome.STOPPED)
                return dropped
            case Leave():
                self.ending = True
                self._leave_scope.cancel()
                return None
            case SetVolume(percent=percent):
                return self._set_volume(percent)
            case Seek(seconds=seconds):
                return self._seek(seconds)
            case SetLoop(mode=mode):
                self._loop = mode
                return mode
            case Shuffle():
                upcoming = list(self._queue)
                random.shuffle(upcoming)
                self._queue = deque(upcoming)
                self._upcoming_changed.set()
                return len(upcoming)
            case Remove(position=position):
                if not 1 <= position <= len(self._queue):
                    raise Refused(self._no_position(position))
                removed = self._queue[position - 1]
                del self._queue[position - 1]
                self._upcoming_changed.set()
                removed.settle()
                return removed.track
            case GetNowPlaying():
                return self._now_playing()
            case GetQueue():
                return QueueView(
                    self._now_playing(),
                    tuple(entry.track for entry in self._queue),
                    self._loop,
                    self._volume,
                )
        raise TypeError(f"GuildPlayer got an unknown message: {body!r}")

    def _enqueue(
        self, tracks: tuple[Track, ...], waiter: trio.MemorySendChannel[Any] | None
    ) -> object:
        room = self._limits.max_queue_length - len(self._queue)
        if room <= 0:
            raise Refused(
                f"the queue is full ({self._limits.max_queue_length} tracks); "
                "wait for some to play, or /remove some"
            )
        added = tracks[:room]
        starts_now = self._current is None and not self._queue
        position = 0 if starts_now else len(self._queue) + 1
        entries = [_Entry(track) for track in added]
        self._queue.extend(entries)
        self._queue_changed.set()
        self._upcoming_changed.set()
        enqueued = Enqueued(position=position, count=len(added), left_out=len(tracks) - len(added))
        if starts_now and waiter is not None:
            entries[0].waiter, entries[0].owed = waiter, enqueued
            return _DEFERRED
        return enqueued

    def _set_volume(self, percent: int) -> int:
        if not 0 <= percent <= MAX_VOLUME:
            raise Refused(f"the volume goes from 0 to {MAX_VOLUME} %")
        if percent != self._volume:
            self._volume = percent
            self._restart_here()
        return percent

    def _seek(self, seconds: float) -> float:
        current = self._current
        if current is None:
            raise Refused("nothing is playing")
        if current.track.live:
            raise Refused("this is a live stream; it cannot be wound")
        duration = current.track.duration
        if not seconds >= 0 or (duration is not None and seconds >= duration):
            length = "" if duration is None else f" (it is {duration:.0f} s long)"
            raise Refused(f"that is not a position in this track{length}")
        self._restart_at = seconds
        if self._stream_scope is not None:
            self._stream_scope.cancel()
        return seconds

    def _restart_here(self) -> None:
        """Reopen the current track's stream where it is (a new volume applies from there)."""
        if self._current is not None and self._stream_scope is not None:
            self._restart_at = self._elapsed()
            self._stream_scope.cancel()

    def _end_track(self, outcome: _Outcome) -> None:
        if self._current is not None:
            self._ended_by = outcome
        if self._track_scope is not None:
            self._track_scope.cancel()
        self._paused = False
        self._resumed.set()

    def _no_position(self, position: int) -> str:
        if not self._queue:
            return "the queue is empty"
        return f"there is no track {position} in the queue; it has 1 to {len(self._queue)}"

    def _elapsed(self) -> float:
        return self._stream_start + self._frames_into_stream * FRAME_SECONDS

    def _now_playing(self) -> NowPlaying | None:
        if self._current is None:
            return None
        return NowPlaying(
            self._current.track, self._elapsed(), self._paused, self._volume, self._loop
        )

    # --- playback ----------------------------------------------------------------------------

    async def _play_queue(self) -> None:
        while True:
            while not self._queue:
                await self._set_speaking(False)
                self._queue_changed = trio.Event()
                await self._queue_changed.wait()
            entry = self._current = self._queue.popleft()
            self._upcoming_changed.set()
            self._ended_by = None
            try:
                outcome = await self._play(entry)
            finally:
                self._current = None
                self._paused = False
                self._touch()
            if outcome is _Outcome.FINISHED and self._loop is LoopMode.TRACK:
                self._queue.appendleft(_Entry(entry.track, repeat=True))
            elif outcome in (_Outcome.FINISHED, _Outcome.SKIPPED) and self._loop is LoopMode.QUEUE:
                self._queue.append(_Entry(entry.track))

    async def _play(self, entry: _Entry) -> _Outcome:
        """Play one entry from its start, reopening the stream for seeks and volume changes."""
        track = entry.track
        self._restart_at = 0.0
        started = False
        try:
            with trio.CancelScope() as self._track_scope:
                while self._restart_at is not None:
                    start, self._restart_at = self._restart_at, None
                    self._stream_start = start
                    self._frames_into_stream = 0
                    # The open deadline covers the whole stream context (which may hold a
                    # nursery), and is lifted once the stream is open.
                    stalled = False
                    with (
                        trio.CancelScope() as self._stream_scope,
                        trio.move_on_after(self._limits.open_timeout) as opening,
                    ):
                        source = self._source.open(track, start=start, volume=self._volume)
                        async with source as frames:
                            opening.deadline = math.inf
                            if not started:
                                started = True
                                answered = entry.waiter is not None
                                entry.settle()
                                self._on_event(
                                    TrackStarted(self.guild_id, track, answered, entry.repeat)
                                )
                            stalled = not await self._pace(frames)
                    # Raised here, outside the source's context, so no nursery of its wraps it.
                    if opening.cancelled_caught:
                        raise SourceError("the server did not start sending audio in time")
                    if stalled:
                        raise SourceError("the server stopped sending audio")
                return _Outcome.FINISHED
            return self._ended_by or _Outcome.SKIPPED
        except SourceError as failure:
            log.info("guild %s: track %r failed: %s", self.guild_id, track.title, failure)
            if entry.waiter is not None:
                entry.settle(failure)  # the user hears it as the answer to their /play
            else:
                self._on_event(TrackFailed(self.guild_id, track, str(failure)))
            return _Outcome.FAILED
        finally:
            self._track_scope = self._stream_scope = None
            if self._ended_by is not None:
                entry.settle()  # skipped or stopped before it started: no failure to report
            else:
                entry.forget()  # the player is ending: ActorGone

    async def _warm_upcoming(self, warmer: Warmer) -> None:
        """Prepare the next few tracks while one plays; start over when the queue changes.

        It runs in the player's own nursery, so it ends with the player (and its ffmpeg with it).
        """
        while True:
            changed = self._upcoming_changed = trio.Event()
            upcoming = [entry.track for entry in list(self._queue)[: self._limits.warm_ahead]]
            async with trio.open_nursery() as warming:
                warming.start_soon(self._warm_in_order, warmer, upcoming)
                await changed.wait()
                warming.cancel_scope.cancel()

    @staticmethod
    async def _warm_in_order(warmer: Warmer, tracks: list[Track]) -> None:
        for track in tracks:
            await warmer.warm(track)

    async def _pace(self, frames: AsyncIterator[bytes]) -> bool:
        """Send frame k at anchor + k x 20 ms: absolute deadlines, so lateness never accumulates.

        Returns False if the source sent nothing for `stall_timeout` (the track has stalled;
        told within WATCHDOG_REFRESH of it: moving a deadline every frame costs Trio a heap push).
        """
        anchor: float | None = None  # set when the first frame is in hand, not before
        k = 0
        stall_timeout = self._limits.stall_timeout
        watchdog_set = trio.current_time()
        with trio.CancelScope(deadline=watchdog_set + stall_timeout) as watchdog:
            async for frame in frames:
                now = trio.current_time()
                if anchor is None:
                    # Not before the previous stream's last frame has had its 20 ms.
                    anchor = max(now, self._next_due)
                due = anchor + k * FRAME_SECONDS
                await self._sleep_until(due)
                if self._paused:
                    watchdog.deadline = math.inf
                    await self._set_speaking(False)
                    await self._wait_until_resumed()
                    anchor = trio.current_time() - k * FRAME_SECONDS
                    due = anchor + k * FRAME_SECONDS
                now = trio.current_time()
                lateness = now - due
                missed = 0
                if lateness > RESYNC_AFTER:
                    anchor += lateness
                    self._resyncs += 1
                    missed = round(lateness / FRAME_SECONDS)
                await self._set_speaking(True)
                self._voice.send_frame(frame)
                self._window.record(now, sent=1, missed=missed)
                self._frames_sent += 1
                self._frames_into_stream += 1
                if lateness > LATE_AFTER:
                    self._frames_late += 1
                self._lateness.append(lateness)
                k += 1
                self._next_due = due + FRAME_SECONDS
                if now - watchdog_set >= WATCHDOG_REFRESH:
                    watchdog.deadline = now + stall_timeout
                    watchdog_set = now
        return not watchdog.cancelled_caught

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

    def set_alone(self, alone: bool) -> None:
        """What the voice channel looks like: nobody but the bot in it, or someone listening."""
        if not alone:
            self._alone_since = None
        elif self._alone_since is None:
            self._alone_since = trio.current_time()

    def alone_seconds(self) -> float:
        since = self._alone_since
        return 0.0 if since is None else trio.current_time() - since

    def paused_seconds(self) -> float:
        if not self._paused or self._paused_since is None:
            return 0.0
        return trio.current_time() - self._paused_since

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
        sent, missing = self._window.totals(trio.current_time())
        return PlayerStatistics(
            guild_id=self.guild_id,
            state=self.state,
            idle_seconds=self.idle_seconds(),
            queue_length=len(self._queue),
            frames_sent=self._frames_sent,
            frames_late=self._frames_late,
            frames_sent_last_minute=sent,
            frames_missing_last_minute=missing,
            resyncs=self._resyncs,
            alone_seconds=self.alone_seconds(),
            paused_seconds=self.paused_seconds(),
            lateness_p50=_percentile(ordered, 0.50),
            lateness_p99=_percentile(ordered, 0.99),
            lateness_max=ordered[-1] if ordered else 0.0,
        )
