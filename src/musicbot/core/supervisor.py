"""ResourceSupervisor: owns every GuildPlayer, the connection limit, idle sweeps and the cache.

Every player runs in the supervisor's `players` nursery, each in a cancel scope the supervisor
keeps. Leaving `open_supervisor` cancels that nursery, so every player's shielded teardown runs
before the `async with` exits: nothing a player owns can outlive the supervisor.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from musicbot.core.cache import CacheStatistics, LRUCache
from musicbot.core.clock import FrameClock
from musicbot.core.mailbox import ActorGone, Inbox, InboxReceiver, ask, close_inbox
from musicbot.core.messages import (
    EndReason,
    Enqueue,
    Enqueued,
    GetNowPlaying,
    GetQueue,
    Leave,
    LoopMode,
    NowPlaying,
    Pause,
    PlayerEnded,
    QueueView,
    Refused,
    Remove,
    Request,
    Resolved,
    Resume,
    Seek,
    SetLoop,
    SetVolume,
    Shuffle,
    Skip,
    Stop,
    Track,
)
from musicbot.core.player import GuildPlayer, PlayerLimits, PlayerStatistics
from musicbot.core.ports import (
    EventSink,
    FrameSource,
    Heap,
    NoHeap,
    ResolveError,
    Resolver,
    VoiceConnectError,
    VoiceFactory,
    Warmer,
    ignore_event,
)
from musicbot.core.services import open_service_nursery

log = logging.getLogger(__name__)

NO_HEAP = NoHeap()

PLAYER_INBOX_SIZE = 16


class SpawnRefused(Refused):
    """A new guild was refused because `limit` voice connections are already active."""

    def __init__(self, limit: int, active: int) -> None:
        super().__init__(
            f"all {limit} voice connections are in use ({active} active); try again later"
        )
        self.limit = limit
        self.active = active


class ShuttingDown(Refused):
    """No new players: the bot is shutting down."""


class PlayerHandle:
    """The face of one GuildPlayer: every method is a request to the actor (Trio-flavoured)."""

    def __init__(self, guild_id: int, inbox: Inbox) -> None:
        self.guild_id = guild_id
        self._inbox = inbox

    async def enqueue(self, *tracks: Track, wait_for_start: bool = False) -> Enqueued:
        """Queue `tracks`. With `wait_for_start`, a first track that starts now is answered once
        its audio flows, or raises the SourceError that stopped it."""
        return await ask(self._inbox, Enqueue(tracks, wait_for_start))

    async def skip(self) -> Track | None:
        return await ask(self._inbox, Skip())

    async def pause(self) -> bool:
        return await ask(self._inbox, Pause())

    async def resume(self) -> bool:
        return await ask(self._inbox, Resume())

    async def stop(self) -> int:
        return await ask(self._inbox, Stop())

    async def leave(self) -> None:
        await ask(self._inbox, Leave())

    async def set_volume(self, percent: int) -> int:
        return await ask(self._inbox, SetVolume(percent))

    async def seek(self, seconds: float) -> float:
        return await ask(self._inbox, Seek(seconds))

    async def set_loop(self, mode: LoopMode) -> LoopMode:
        return await ask(self._inbox, SetLoop(mode))

    async def shuffle(self) -> int:
        return await ask(self._inbox, Shuffle())

    async def remove(self, position: int) -> Track:
        return await ask(self._inbox, Remove(position))

    async def now_playing(self) -> NowPlaying | None:
        return await ask(self._inbox, GetNowPlaying())

    async def queue(self) -> QueueView:
        return await ask(self._inbox, GetQueue())

    def __repr__(self) -> str:
        return f"<PlayerHandle guild={self.guild_id}>"


@attrs.frozen
class ReapedPlayer:
    guild_id: int
    reason: EndReason
    seconds: float
    """How long it had been idle, alone or paused."""


@attrs.frozen
class CleanupReport:
    at: float
    """When the sweep started, in the supervisor's clock (seconds)."""
    reaped: tuple[ReapedPlayer, ...]
    cache_expired: int
    duration: float
    memory_released: int = 0
    """Bytes of free heap the sweep gave back to the operating system."""


@attrs.frozen
class SupervisorStatistics:
    active: int
    max_connections: int
    players: tuple[PlayerStatistics, ...]
    spawns: int
    refusals: int
    connect_failures: int
    reaped: int
    crashes: int
    cleanups: int
    last_cleanup: CleanupReport | None
    memory_released: int
    """Bytes of free heap the sweeps gave back to the operating system, all told."""
    uptime: float
    cache: CacheStatistics
    frames_sent: int
    """Frames sent since start, by every player, those gone included (never goes down)."""
    frames_late: int
    taken_at: float
    """When this snapshot was taken, in the supervisor's clock (as CleanupReport.at is)."""


@attrs.define(eq=False)
class _Child:
    """The supervisor's record of one player: its scope, and whether it got going."""

    player: GuildPlayer
    handle: PlayerHandle
    inbox: InboxReceiver
    on_ready: Callable[[], object]
    lifetime: trio.CancelScope = attrs.Factory(trio.CancelScope)
    ready: trio.Event = attrs.Factory(trio.Event)
    finished: trio.Event = attrs.Factory(trio.Event)
    failure: str | None = None
    end_reason: EndReason | None = None
    ended_after: float = 0.0

    @property
    def closing(self) -> bool:
        return self.end_reason is not None or self.player.ending

    def end(self, reason: EndReason, after: float = 0.0) -> None:
        """Cancel the player's scope; `after`: how long it was in the state that ends it."""
        if self.end_reason is None:
            self.end_reason = reason
            self.ended_after = after
        self.lifetime.cancel(reason=reason.value)

    def started(self, value: object = None) -> None:
        """The child's `task_status`: the player connected and is serving its inbox."""
        self.ready.set()
        self.on_ready()


# --- the supervisor's own messages -----------------------------------------------------------


@attrs.frozen
class _Spawning:
    child: _Child


@attrs.frozen
class _Closing:
    finished: trio.Event


@attrs.frozen
class _GetPlayer(Request["_Spawning | _Closing"]):
    guild_id: int
    channel_id: int | None


class ResourceSupervisor:
    """The actor that owns players, enforces the connection limit and sweeps idle ones."""

    def __init__(
        self,
        *,
        nursery: trio.Nursery,
        inbox: Inbox,
        max_connections: int,
        idle_timeout: float,
        alone_timeout: float,
        paused_timeout: float,
        cleanup_interval: float,
        cache: LRUCache[str, Resolved],
        make_voice: VoiceFactory,
        frame_source: FrameSource,
        resolver: Resolver | None,
        on_event: EventSink,
        player_limits: PlayerLimits,
        warmer: Warmer | None = None,
        heap: Heap = NO_HEAP,
    ) -> None:
        self._players = nursery
        self._inbox = inbox
        self.frame_clock = FrameClock()
        """The players' shared frame timer; its ticker runs in the players' nursery."""
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.alone_timeout = alone_timeout
        self.paused_timeout = paused_timeout
        self.cleanup_interval = cleanup_interval
        self.cache = cache
        self._make_voice = make_voice
        self._frame_source = frame_source
        self._resolver = resolver
        self._on_event = on_event
        self._player_limits = player_limits
        self._warmer = warmer
        self._heap = heap
        self._children: dict[int, _Child] = {}
        self._accepting = True
        self._started_at = trio.current_time()
        self._spawns = self._refusals = self._connect_failures = 0
        self._reaped = self._crashes = self._cleanups = 0
        self._frames_sent_by_departed = self._frames_late_by_departed = 0
        self._last_cleanup: CleanupReport | None = None
        self._memory_released = 0

    # --- the Trio-flavoured face -------------------------------------------------------------

    async def get_player(self, guild_id: int, *, channel_id: int | None = None) -> PlayerHandle:
        """The guild's live player, or a new one connected to `channel_id`.

        Raises SpawnRefused at the connection limit and VoiceConnectError if joining failed.
        A player that is on its way out is waited for, then replaced.
        """
        while True:
            answer = await ask(self._inbox, _GetPlayer(guild_id, channel_id))
            if isinstance(answer, _Closing):
                await answer.finished.wait()
                continue
            child = answer.child
            await child.ready.wait()
            if child.failure is not None:
                raise VoiceConnectError(child.failure)
            return child.handle

    def find_player(self, guild_id: int) -> PlayerHandle | None:
        """The guild's live player, or None; never spawns."""
        child = self._children.get(guild_id)
        if child is None or child.closing or not child.ready.is_set():
            return None
        return child.handle

    async def leave(self, guild_id: int) -> bool:
        """End the guild's player and wait until its voice is gone; False if it had none."""
        child = self._children.get(guild_id)
        if child is None:
            return False
        with contextlib.suppress(ActorGone):  # it was on its way out already
            await child.handle.leave()
        await child.finished.wait()
        return True

    async def end(self, guild_id: int, reason: EndReason) -> bool:
        """End the guild's player for `reason` and wait until it is gone; False if none."""
        child = self._children.get(guild_id)
        if child is None or child.closing:
            return False
        child.end(reason)
        await child.finished.wait()
        return True

    def has_resolved(self, query: str) -> bool:
        """Whether `resolve(query)` would answer from the cache now, without a lookup."""
        return query in self.cache

    async def resolve(self, query: str) -> Resolved:
        """Tracks for `query`, from the cache when a fresh answer is there."""
        cached = self.cache.get(query)
        if cached is not None:
            return cached
        if self._resolver is None:
            raise ResolveError("this bot has no resolver configured")
        resolved = await self._resolver.resolve(query)
        self.cache.set(query, resolved)
        return resolved

    async def drain(self) -> None:
        """Shut down in order: refuse new players, end every player (voice disconnected, child
        processes reaped), and return when all are gone. Leaving `open_supervisor` does the
        same by cancellation; this lets the caller do it while the rest is still up."""
        self._accepting = False
        children = list(self._children.values())
        for child in children:
            child.end(EndReason.SHUTDOWN)
        for child in children:
            await child.finished.wait()

    def set_alone(self, guild_id: int, alone: bool) -> None:
        """The adapter saw the guild's voice channel empty of listeners (or not)."""
        child = self._children.get(guild_id)
        if child is not None:
            child.player.set_alone(alone)

    def _overstay(self, player: GuildPlayer) -> tuple[EndReason, float] | None:
        """Why a player should go, by the idle policies, and for how long that has been so."""
        for reason, seconds, limit in (
            (EndReason.ALONE, player.alone_seconds(), self.alone_timeout),
            (EndReason.PAUSED, player.paused_seconds(), self.paused_timeout),
            (EndReason.IDLE, player.idle_seconds(), self.idle_timeout),
        ):
            if seconds > limit:
                return reason, seconds
        return None

    async def cleanup(self) -> CleanupReport:
        """Run the idle sweep now: end players that are idle, alone or paused for too long, and
        purge expired cache entries."""
        started = trio.current_time()
        reaped: list[tuple[_Child, ReapedPlayer]] = []
        for guild_id, child in list(self._children.items()):
            if child.closing or not child.ready.is_set():
                continue
            overstay = self._overstay(child.player)
            if overstay is not None:
                reason, seconds = overstay
                child.end(reason, seconds)
                reaped.append((child, ReapedPlayer(guild_id, reason, seconds)))
        expired = self.cache.purge_expired()
        for child, _ in reaped:
            await child.finished.wait()
        # Last, when the reaped players' buffers are free too.
        released = self._heap.sweep()
        report = CleanupReport(
            at=started,
            reaped=tuple(entry for _, entry in reaped),
            cache_expired=expired,
            duration=trio.current_time() - started,
            memory_released=released,
        )
        self._reaped += len(reaped)
        self._cleanups += 1
        self._memory_released += released
        self._last_cleanup = report
        if reaped:
            log.info(
                "cleanup reaped %d player(s): %s",
                len(reaped),
                ", ".join(f"{e.guild_id} ({e.reason.value})" for _, e in reaped),
            )
        return report

    def statistics(self) -> SupervisorStatistics:
        players = tuple(
            child.player.statistics()
            for child in self._children.values()
            if child.ready.is_set() and child.failure is None
        )
        return SupervisorStatistics(
            active=len(self._children),
            max_connections=self.max_connections,
            players=players,
            spawns=self._spawns,
            refusals=self._refusals,
            connect_failures=self._connect_failures,
            reaped=self._reaped,
            crashes=self._crashes,
            cleanups=self._cleanups,
            last_cleanup=self._last_cleanup,
            memory_released=self._memory_released,
            uptime=trio.current_time() - self._started_at,
            cache=self.cache.statistics(),
            frames_sent=self._frames_sent_by_departed + sum(p.frames_sent for p in players),
            frames_late=self._frames_late_by_departed + sum(p.frames_late for p in players),
            taken_at=trio.current_time(),
        )

    # --- the actor ---------------------------------------------------------------------------

    async def run(self, inbox: InboxReceiver) -> None:
        """Serve spawn requests one at a time, so one guild never gets two players."""
        try:
            async for request in inbox:
                with request.reply_to:
                    request.reply_to.send_nowait(self._answer(request.body))
        finally:
            close_inbox(inbox)

    def _answer(self, body: object) -> _Spawning | _Closing | Refused:
        if not isinstance(body, _GetPlayer):
            raise TypeError(f"ResourceSupervisor got an unknown message: {body!r}")
        child = self._children.get(body.guild_id)
        if child is not None:
            if child.closing:
                return _Closing(child.finished)
            return _Spawning(child)
        if not self._accepting:
            return ShuttingDown("I am restarting; please try again in a minute")
        if len(self._children) >= self.max_connections:
            self._refusals += 1
            return SpawnRefused(self.max_connections, len(self._children))
        try:
            voice = self._make_voice(body.guild_id)
        except Exception:
            # A bug in the adapter: this spawn fails, the supervisor and other guilds do not.
            log.exception("guild %s: could not make a voice connection", body.guild_id)
            self._crashes += 1
            return Refused("I could not set up a voice connection; the error was logged")
        inbox_tx, inbox_rx = trio.open_memory_channel[Any](PLAYER_INBOX_SIZE)
        player = GuildPlayer(
            body.guild_id,
            voice,
            self._frame_source,
            channel_id=body.channel_id,
            on_event=self._on_event,
            limits=self._player_limits,
            warmer=self._warmer,
            clock=self.frame_clock,
        )
        child = _Child(
            player, PlayerHandle(body.guild_id, inbox_tx), inbox_rx, on_ready=self._heap.settle
        )
        self._children[body.guild_id] = child
        self._spawns += 1
        self._players.start_soon(self._run_child, child, name=f"GuildPlayer({body.guild_id})")
        return _Spawning(child)

    async def _run_child(self, child: _Child) -> None:
        guild_id = child.player.guild_id
        try:
            with child.lifetime:
                await child.player.run(child.inbox, task_status=child)
            if child.end_reason is None:
                child.end_reason = EndReason.LEFT
        except VoiceConnectError as exc:
            if child.ready.is_set():
                raise  # only connect() may raise this; anything later is a bug
            child.failure = str(exc)
            child.end_reason = EndReason.LEFT
            self._connect_failures += 1
            log.info("guild %s: could not join voice: %s", guild_id, exc)
        except Exception:
            child.end_reason = EndReason.CRASHED
            if not child.ready.is_set():
                child.failure = "the voice connection failed unexpectedly"
            self._crashes += 1
            log.exception("guild %s: player crashed; it was disconnected and removed", guild_id)
        finally:
            if child.end_reason is None:
                child.end_reason = EndReason.SHUTDOWN
            del self._children[guild_id]
            departed = child.player.statistics()
            self._frames_sent_by_departed += departed.frames_sent
            self._frames_late_by_departed += departed.frames_late
            child.inbox.close()
            child.ready.set()
            child.finished.set()
            if child.failure is None:
                seconds = child.ended_after or child.player.idle_seconds()
                self._on_event(PlayerEnded(guild_id, child.end_reason, seconds))


@asynccontextmanager
async def open_supervisor(
    *,
    make_voice: VoiceFactory,
    frame_source: FrameSource,
    max_connections: int = 10,
    idle_timeout: float = 3600.0,
    alone_timeout: float = 300.0,
    paused_timeout: float = 1800.0,
    cleanup_interval: float = 300.0,
    cache: LRUCache[str, Resolved] | None = None,
    resolver: Resolver | None = None,
    on_event: EventSink | None = None,
    player_limits: PlayerLimits = PlayerLimits(),
    warmer: Warmer | None = None,
    heap: Heap = NO_HEAP,
) -> AsyncIterator[ResourceSupervisor]:
    """Run a ResourceSupervisor for the body of the `async with`.

    Leaving the block, by any route, cancels every player; each one's teardown (voice
    disconnect, child processes) runs shielded and bounded before this returns.
    """
    if max_connections < 1:
        raise ValueError(f"max_connections must be at least 1, not {max_connections}")
    if min(cleanup_interval, idle_timeout, alone_timeout, paused_timeout) <= 0:
        raise ValueError("the idle timeouts and cleanup_interval must be positive")
    inbox_tx, inbox_rx = trio.open_memory_channel[Any](0)
    async with open_service_nursery("supervisor closing") as players:
        supervisor = ResourceSupervisor(
            nursery=players,
            inbox=inbox_tx,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            alone_timeout=alone_timeout,
            paused_timeout=paused_timeout,
            cleanup_interval=cleanup_interval,
            cache=cache if cache is not None else LRUCache(clock=trio.current_time),
            make_voice=make_voice,
            frame_source=frame_source,
            resolver=resolver,
            on_event=on_event if on_event is not None else ignore_event,
            player_limits=player_limits,
            warmer=warmer,
            heap=heap,
        )
        players.start_soon(supervisor.frame_clock.run, name="frame clock")
        players.start_soon(supervisor.run, inbox_rx, name="ResourceSupervisor")
        players.start_soon(_sweep_periodically, supervisor, name="idle sweep")
        yield supervisor


async def _sweep_periodically(supervisor: ResourceSupervisor) -> None:
    while True:
        await trio.sleep(supervisor.cleanup_interval)
        await supervisor.cleanup()
