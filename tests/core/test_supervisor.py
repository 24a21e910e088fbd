from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from musicbot.core.cache import LRUCache
from musicbot.core.mailbox import ActorGone
from musicbot.core.messages import EndReason, PlayerEnded, PlayerState, Refused, Resolved
from musicbot.core.player import DISCONNECT_TIMEOUT
from musicbot.core.ports import ResolveError, VoiceConnectError
from musicbot.core.supervisor import (
    ResourceSupervisor,
    ShuttingDown,
    SpawnRefused,
    open_supervisor,
)
from musicbot.testing import FakeFrameSource, FakeResolver, FakeVoice, tone_track

Clock = trio.abc.Clock


class Rig:
    """Fakes for a supervisor: one FakeVoice per guild, made on demand and kept for asserts."""

    def __init__(self, **voice_options: Any) -> None:
        self.voices: dict[int, list[FakeVoice]] = {}
        self.voice_options: dict[int, dict[str, Any]] = {}
        self.default_voice_options = voice_options
        self.source = FakeFrameSource()
        self.events: list[object] = []

    def make_voice(self, guild_id: int) -> FakeVoice:
        options = self.voice_options.get(guild_id, self.default_voice_options)
        voice = FakeVoice(guild_id, **options)
        self.voices.setdefault(guild_id, []).append(voice)
        return voice

    def voice(self, guild_id: int) -> FakeVoice:
        return self.voices[guild_id][-1]

    @asynccontextmanager
    async def supervisor(self, **options: Any) -> AsyncIterator[ResourceSupervisor]:
        async with open_supervisor(
            make_voice=self.make_voice,
            frame_source=self.source,
            on_event=self.events.append,
            **options,
        ) as supervisor:
            yield supervisor


async def test_get_player_spawns_one_connected_player(autojump_clock: Clock) -> None:
    rig = Rig()
    async with rig.supervisor() as supervisor:
        player = await supervisor.get_player(1, channel_id=42)
        assert player.guild_id == 1
        assert rig.voice(1).connected
        assert rig.voice(1).channel_id == 42
        assert await supervisor.get_player(1) is player
        assert supervisor.find_player(1) is player
        assert supervisor.find_player(2) is None
        stats = supervisor.statistics()
        assert (stats.active, stats.spawns, stats.max_connections) == (1, 1, 10)


async def test_concurrent_requests_for_one_guild_yield_one_player(autojump_clock: Clock) -> None:
    rig = Rig(connect_delay=0.5)
    handles = []
    async with rig.supervisor() as supervisor:

        async def get() -> None:
            handles.append(await supervisor.get_player(7, channel_id=1))

        async with trio.open_nursery() as requests:
            for _ in range(20):
                requests.start_soon(get)
        assert len(handles) == 20
        assert len({id(handle) for handle in handles}) == 1
        assert len(rig.voices[7]) == 1
        assert rig.voice(7).connects == 1
        assert supervisor.statistics().spawns == 1


async def test_a_new_guild_past_the_limit_is_refused_and_the_others_keep_playing(
    autojump_clock: Clock,
) -> None:
    rig = Rig()
    async with rig.supervisor(max_connections=2) as supervisor:
        for guild_id in (1, 2):
            player = await supervisor.get_player(guild_id)
            await player.enqueue(tone_track(f"g{guild_id}", 10))
        await trio.sleep(1.01)  # between two frames, so counts do not depend on task order
        with pytest.raises(SpawnRefused) as refused:
            await supervisor.get_player(3)
        assert (refused.value.limit, refused.value.active) == (2, 2)
        assert "try again later" in str(refused.value)
        assert 3 not in rig.voices
        sent = {g: len(rig.voice(g).frames) for g in (1, 2)}
        await trio.sleep(1)
        assert all(len(rig.voice(g).frames) == sent[g] + 50 for g in (1, 2))
        stats = supervisor.statistics()
        assert (stats.active, stats.refusals) == (2, 1)
        # A freed slot can be used again.
        await (await supervisor.get_player(1)).leave()
        await trio.testing.wait_all_tasks_blocked()
        await supervisor.get_player(3)
        assert supervisor.statistics().active == 2


async def test_an_idle_player_is_reaped_by_the_sweep_after_the_timeout(
    autojump_clock: Clock,
) -> None:
    rig = Rig()
    async with rig.supervisor(idle_timeout=3600, cleanup_interval=300) as supervisor:
        await supervisor.get_player(1)
        await trio.sleep(3600)
        assert supervisor.statistics().active == 1  # idle exactly an hour: not more than one
        await trio.sleep(300)
        await trio.testing.wait_all_tasks_blocked()
        assert supervisor.statistics().active == 0
        assert rig.voice(1).disconnects == 1
        assert rig.voice(1).disconnected_at == pytest.approx(3900, abs=1e-6)
        stats = supervisor.statistics()
        assert (stats.reaped, stats.cleanups) == (1, 13)
        assert stats.last_cleanup is not None
        assert [r.guild_id for r in stats.last_cleanup.reaped] == [1]
        assert stats.last_cleanup.reaped[0].seconds == pytest.approx(3900, abs=1e-6)
        assert stats.last_cleanup.reaped[0].reason is EndReason.IDLE
        ended = [e for e in rig.events if isinstance(e, PlayerEnded)]
        assert [(e.guild_id, e.reason) for e in ended] == [(1, EndReason.IDLE)]


async def test_a_playing_player_is_never_idle(autojump_clock: Clock) -> None:
    rig = Rig()
    async with rig.supervisor(idle_timeout=60, cleanup_interval=10) as supervisor:
        player = await supervisor.get_player(1)
        await player.enqueue(tone_track("long", 600))
        await trio.sleep(599)
        assert supervisor.statistics().active == 1
        assert supervisor.statistics().players[0].state is PlayerState.PLAYING
        await trio.sleep(1 + 60 + 10)
        assert supervisor.statistics().active == 0


async def test_a_paused_player_counts_as_idle(autojump_clock: Clock) -> None:
    rig = Rig()
    async with rig.supervisor(idle_timeout=60, cleanup_interval=10) as supervisor:
        player = await supervisor.get_player(1)
        await player.enqueue(tone_track("long", 600))
        await trio.sleep(5)
        await player.pause()
        await trio.sleep(61)
        assert supervisor.statistics().active == 1
        await trio.sleep(10)
        assert supervisor.statistics().active == 0


async def test_a_command_counts_as_activity(autojump_clock: Clock) -> None:
    rig = Rig()
    async with rig.supervisor(idle_timeout=60, cleanup_interval=10) as supervisor:
        player = await supervisor.get_player(1)
        for _ in range(10):
            await trio.sleep(50)
            await player.queue()
        assert supervisor.statistics().active == 1


async def test_cleanup_now_reaps_idle_players_and_purges_the_cache(autojump_clock: Clock) -> None:
    rig = Rig()
    cache: LRUCache[str, Resolved] = LRUCache(max_size=10, ttl=100, clock=trio.current_time)
    options = {"idle_timeout": 50, "cleanup_interval": 10_000, "cache": cache}
    async with rig.supervisor(**options) as supervisor:
        busy = await supervisor.get_player(1)
        await supervisor.get_player(2)
        await supervisor.get_player(3, channel_id=9)
        cache.set("old", Resolved(()))
        await trio.sleep(60)
        cache.set("new", Resolved(()))
        await busy.enqueue(tone_track("song", 100))
        await trio.sleep(45)
        report = await supervisor.cleanup()
        assert sorted(r.guild_id for r in report.reaped) == [2, 3]
        assert all(r.seconds == pytest.approx(105) for r in report.reaped)
        assert report.cache_expired == 1
        assert report.at == pytest.approx(105)
        assert 0 <= report.duration <= DISCONNECT_TIMEOUT
        assert "new" in cache
        assert (rig.voice(2).disconnects, rig.voice(3).disconnects) == (1, 1)
        assert rig.voice(1).connected
        stats = supervisor.statistics()
        assert (stats.active, stats.reaped, stats.cleanups, stats.last_cleanup) == (
            1,
            2,
            1,
            report,
        )
        again = await supervisor.cleanup()
        assert (again.reaped, again.cache_expired) == ((), 0)


class RecordingHeap:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.settled: list[int] = []
        self.swept: list[int] = []

    def settle(self) -> None:
        self.settled.append(sum(len(voices) for voices in self.rig.voices.values()))

    def sweep(self) -> int:
        # After the reaped player's teardown: its voice is disconnected by now.
        self.swept.append(self.rig.voice(1).disconnects)
        return 3 * 2**20


async def test_the_heap_settles_after_each_join_and_is_swept_after_the_reaped_are_gone(
    autojump_clock: Clock,
) -> None:
    rig = Rig()
    heap = RecordingHeap(rig)
    options = {"idle_timeout": 50, "cleanup_interval": 100, "heap": heap}
    async with rig.supervisor(**options) as supervisor:
        await supervisor.get_player(1)
        await supervisor.get_player(2)
        assert heap.settled == [1, 2]
        await trio.sleep(60)
        report = await supervisor.cleanup()
        assert (heap.swept, report.memory_released) == ([1], 3 * 2**20)
        await trio.sleep(100)  # the periodic sweep
        assert heap.swept == [1, 1]
        stats = supervisor.statistics()
        assert (stats.cleanups, stats.memory_released) == (2, 6 * 2**20)


class ExplodingVoice(FakeVoice):
    def send_frame(self, opus: bytes) -> None:
        if len(self.frames) == 10:
            raise RuntimeError("boom")
        super().send_frame(opus)


async def test_a_crashing_player_is_removed_and_the_others_keep_playing(
    autojump_clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig()
    voices: dict[int, FakeVoice] = {}

    def make_voice(guild_id: int) -> FakeVoice:
        cls = ExplodingVoice if guild_id == 1 else FakeVoice
        return voices.setdefault(guild_id, cls(guild_id))

    async with open_supervisor(
        make_voice=make_voice, frame_source=rig.source, on_event=rig.events.append
    ) as supervisor:
        for guild_id in (1, 2):
            await (await supervisor.get_player(guild_id)).enqueue(tone_track("t", 10))
        await trio.sleep(1.01)
        stats = supervisor.statistics()
        assert (stats.active, stats.crashes) == (1, 1)
        assert voices[1].disconnects == 1
        assert len(voices[2].frames) == 51
        await trio.sleep(1)
        assert len(voices[2].frames) == 101
        assert "guild 1: player crashed" in caplog.text
        assert "boom" in caplog.text
        ended = [e for e in rig.events if isinstance(e, PlayerEnded)]
        assert [(e.guild_id, e.reason) for e in ended] == [(1, EndReason.CRASHED)]
        # The guild can start over.
        await supervisor.get_player(3)
        assert supervisor.statistics().spawns == 3


async def test_a_failed_voice_connection_is_reported_and_frees_its_slot(
    autojump_clock: Clock,
) -> None:
    rig = Rig()
    rig.voice_options[1] = {"connect_error": "I cannot join that channel: missing permission"}
    async with rig.supervisor(max_connections=1) as supervisor:
        with pytest.raises(VoiceConnectError, match="missing permission"):
            await supervisor.get_player(1)
        stats = supervisor.statistics()
        assert (stats.active, stats.connect_failures, stats.crashes) == (0, 1, 0)
        assert rig.voice(1).disconnects == 1  # a half-made connection is torn down too
        await supervisor.get_player(2)
        assert supervisor.statistics().active == 1
    assert not [e for e in rig.events if isinstance(e, PlayerEnded) and e.guild_id == 1]


async def test_leaving_the_supervisor_disconnects_every_player_exactly_once(
    autojump_clock: Clock,
) -> None:
    rig = Rig()
    with trio.CancelScope() as outside:
        async with rig.supervisor(max_connections=50) as supervisor:
            for guild_id in range(50):
                await (await supervisor.get_player(guild_id)).enqueue(tone_track("t", 60))
            await trio.sleep(1)
            cancelled_at = trio.current_time()
            outside.cancel()
            await trio.sleep_forever()
    assert trio.current_time() == cancelled_at  # teardown took no (virtual) time
    assert sorted(rig.voices) == list(range(50))
    assert all(len(v) == 1 and v[0].disconnects == 1 for v in rig.voices.values())
    assert rig.source.closed == ["t"] * 50
    ended = [e for e in rig.events if isinstance(e, PlayerEnded)]
    assert {e.reason for e in ended} == {EndReason.SHUTDOWN}
    assert len(ended) == 50


async def test_a_hanging_disconnect_cannot_hold_up_shutdown(autojump_clock: Clock) -> None:
    rig = Rig(hang_on_disconnect=True)
    async with rig.supervisor() as supervisor:
        for guild_id in range(5):
            await (await supervisor.get_player(guild_id)).enqueue(tone_track("t", 60))
        await trio.sleep(1)
        closing_at = trio.current_time()
    assert trio.current_time() - closing_at == pytest.approx(DISCONNECT_TIMEOUT)
    assert all(v[0].disconnects == 1 for v in rig.voices.values())


async def test_an_exception_in_the_body_still_cleans_up(autojump_clock: Clock) -> None:
    rig = Rig()
    with pytest.raises(KeyError, match="body failed"):  # noqa: PT012 - the body is the point
        async with rig.supervisor() as supervisor:
            await supervisor.get_player(1)
            raise KeyError("body failed")
    assert rig.voice(1).disconnects == 1


async def test_a_request_during_teardown_waits_and_gets_a_fresh_player(
    autojump_clock: Clock,
) -> None:
    rig = Rig()
    async with rig.supervisor() as supervisor:
        old = await supervisor.get_player(1)
        rig.voice(1).hang_on_disconnect = True
        await old.leave()
        requested_at = trio.current_time()
        new = await supervisor.get_player(1)
        assert new is not old
        assert trio.current_time() - requested_at == pytest.approx(DISCONNECT_TIMEOUT)
        assert len(rig.voices[1]) == 2
        assert rig.voice(1).connected
        with pytest.raises(ActorGone):
            await old.queue()


async def test_resolve_goes_through_the_cache(autojump_clock: Clock) -> None:
    answer = Resolved((tone_track("a"),))
    resolver = FakeResolver({"a song": answer})
    rig = Rig()
    cache: LRUCache[str, Resolved] = LRUCache(max_size=10, ttl=1800, clock=trio.current_time)
    async with rig.supervisor(resolver=resolver, cache=cache) as supervisor:
        assert await supervisor.resolve("a song") == answer
        assert await supervisor.resolve("a song") == answer
        assert resolver.calls == ["a song"]
        with pytest.raises(ResolveError):
            await supervisor.resolve("nothing")
        with pytest.raises(ResolveError):
            await supervisor.resolve("nothing")
        assert resolver.calls == ["a song", "nothing", "nothing"]  # failures are not cached
        await trio.sleep(1800)
        assert await supervisor.resolve("a song") == answer
        assert resolver.calls[-1] == "a song"
        cache_stats = supervisor.statistics().cache
        assert (cache_stats.hits, cache_stats.misses, cache_stats.expirations) == (1, 4, 1)


async def test_statistics_show_each_player(autojump_clock: Clock) -> None:
    rig = Rig()
    async with rig.supervisor() as supervisor:
        playing = await supervisor.get_player(1)
        await playing.enqueue(tone_track("a", 10), tone_track("b", 10))
        paused = await supervisor.get_player(2)
        await paused.enqueue(tone_track("c", 10))
        await supervisor.get_player(3)
        await trio.sleep(2.01)
        await paused.pause()
        await trio.sleep(3)
        stats = supervisor.statistics()
        by_guild = {p.guild_id: p for p in stats.players}
        assert {g: p.state for g, p in by_guild.items()} == {
            1: PlayerState.PLAYING,
            2: PlayerState.PAUSED,
            3: PlayerState.IDLE,
        }
        assert by_guild[1].queue_length == 1
        assert by_guild[1].frames_sent == 251
        assert by_guild[2].frames_sent == 101
        assert by_guild[2].idle_seconds == pytest.approx(3)
        assert by_guild[3].idle_seconds == pytest.approx(5.01)
        assert stats.uptime == pytest.approx(5.01)


@pytest.mark.parametrize(
    "options",
    [{"max_connections": 0}, {"idle_timeout": 0}, {"cleanup_interval": -1}],
)
async def test_nonsense_limits_are_refused(options: dict[str, float]) -> None:
    rig = Rig()
    with pytest.raises(ValueError, match="must be"):
        async with rig.supervisor(**options):
            pass


async def test_leave_waits_until_the_voice_is_gone(autojump_clock: Clock) -> None:
    rig = Rig()
    async with rig.supervisor() as supervisor:
        assert await supervisor.leave(1) is False
        await supervisor.get_player(1)
        rig.voice(1).hang_on_disconnect = True
        asked_at = trio.current_time()
        assert await supervisor.leave(1) is True
        assert trio.current_time() - asked_at == pytest.approx(DISCONNECT_TIMEOUT)
        assert supervisor.statistics().active == 0
        assert rig.voice(1).disconnects == 1
        ended = [e for e in rig.events if isinstance(e, PlayerEnded)]
        assert [(e.guild_id, e.reason) for e in ended] == [(1, EndReason.LEFT)]


async def test_a_player_alone_in_its_channel_too_long_is_reaped_even_while_playing(
    autojump_clock: Clock,
) -> None:
    rig = Rig()
    options = {"alone_timeout": 300, "cleanup_interval": 60}
    async with rig.supervisor(**options) as supervisor:
        player = await supervisor.get_player(1)
        await player.enqueue(tone_track("long", 3600))
        await trio.sleep(10)
        supervisor.set_alone(1, True)
        await trio.sleep(200)
        supervisor.set_alone(1, False)  # someone came back: the clock starts over
        await trio.sleep(100)
        supervisor.set_alone(1, True)
        await trio.sleep(300)
        assert supervisor.statistics().active == 1
        await trio.sleep(60)
        await trio.testing.wait_all_tasks_blocked()
        stats = supervisor.statistics()
        assert stats.active == 0
        assert stats.last_cleanup is not None
        (reaped,) = stats.last_cleanup.reaped
        assert reaped.reason is EndReason.ALONE
        assert 300 < reaped.seconds <= 360
        ended = [e for e in rig.events if isinstance(e, PlayerEnded)]
        assert [(e.reason, e.seconds) for e in ended] == [(EndReason.ALONE, reaped.seconds)]


async def test_a_player_paused_too_long_is_reaped(autojump_clock: Clock) -> None:
    rig = Rig()
    options = {"paused_timeout": 1800, "idle_timeout": 7200, "cleanup_interval": 300}
    async with rig.supervisor(**options) as supervisor:
        player = await supervisor.get_player(1)
        await player.enqueue(tone_track("long", 3600))
        await trio.sleep(10)
        await player.pause()
        await trio.sleep(1800)
        assert supervisor.statistics().players[0].paused_seconds == pytest.approx(1800)
        await trio.sleep(300)
        await trio.testing.wait_all_tasks_blocked()
        stats = supervisor.statistics()
        assert stats.active == 0
        assert stats.last_cleanup is not None
        assert [r.reason for r in stats.last_cleanup.reaped] == [EndReason.PAUSED]


async def test_pacing_over_the_last_minute_counts_sent_and_missing_frames(
    autojump_clock: Clock,
) -> None:
    class StallingSource(FakeFrameSource):
        async def _frames(self, track, start):  # type: ignore[no-untyped-def,override]
            for k in range(500):
                if k == 100:
                    await trio.sleep(1.0)  # the network stalls for a second
                await trio.lowlevel.checkpoint()
                yield b"%d" % k

    rig = Rig()
    rig.source = StallingSource()
    async with rig.supervisor() as supervisor:
        player = await supervisor.get_player(1)
        await player.enqueue(tone_track("t", 10))
        await trio.sleep(12)
        (stats,) = supervisor.statistics().players
        assert stats.frames_sent_last_minute == 500
        assert stats.frames_missing_last_minute == 49  # 0.98 s late: 49 slots went empty
        assert stats.resyncs == 1
        await trio.sleep(60)
        (later,) = supervisor.statistics().players
        assert (later.frames_sent_last_minute, later.frames_missing_last_minute) == (0, 0)
        assert later.frames_sent == 500


async def test_drain_ends_every_player_and_refuses_new_ones(autojump_clock: Clock) -> None:
    rig = Rig()
    async with rig.supervisor() as supervisor:
        for guild_id in range(5):
            await (await supervisor.get_player(guild_id)).enqueue(tone_track("t", 60))
        await trio.sleep(1)
        await supervisor.drain()
        assert supervisor.statistics().active == 0
        assert all(v[0].disconnects == 1 for v in rig.voices.values())
        assert rig.source.closed == ["t"] * 5
        with pytest.raises(ShuttingDown, match="restarting"):
            await supervisor.get_player(9)
    ended = [e for e in rig.events if isinstance(e, PlayerEnded)]
    assert [e.reason for e in ended] == [EndReason.SHUTDOWN] * 5


async def test_a_voice_factory_that_fails_refuses_that_spawn_only(autojump_clock: Clock) -> None:
    rig = Rig()

    def broken_for_guild_1(guild_id: int) -> FakeVoice:
        if guild_id == 1:
            raise RuntimeError("adapter bug")
        return rig.make_voice(guild_id)

    async with open_supervisor(make_voice=broken_for_guild_1, frame_source=rig.source) as sup:
        with pytest.raises(Refused, match="could not set up a voice connection"):
            await sup.get_player(1)
        await sup.get_player(2)  # the supervisor lives on
        stats = sup.statistics()
        assert (stats.active, stats.crashes) == (1, 1)
