from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from musicbot.core.mailbox import ActorGone
from musicbot.core.messages import PlayerState, Track, TrackFailed, TrackStarted
from musicbot.core.player import GuildPlayer
from musicbot.core.ports import FRAME_SECONDS
from musicbot.core.supervisor import PlayerHandle
from musicbot.testing import FakeFrameSource, FakeVoice, tone_track


class PlayerRig:
    """One GuildPlayer running in a test's nursery, with its fakes and its handle."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.voice = FakeVoice(1)
        self.source = FakeFrameSource()
        self.events: list[object] = []
        self.player = GuildPlayer(
            1, self.voice, self.source, channel_id=77, on_event=self.events.append
        )
        inbox_tx, self.inbox = trio.open_memory_channel[Any](16)
        self.handle = PlayerHandle(1, inbox_tx)
        self.scope = trio.CancelScope()
        self.nursery = nursery

    async def start(self) -> None:
        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with self.scope:
                await self.player.run(self.inbox, task_status=task_status)

        await self.nursery.start(run)


@pytest.fixture
async def rig() -> AsyncIterator[PlayerRig]:
    async with trio.open_nursery() as nursery:
        rig = PlayerRig(nursery)
        await rig.start()
        yield rig
        nursery.cancel_scope.cancel()


def spacing(times: list[float]) -> set[float]:
    return {round(b - a, 9) for a, b in itertools.pairwise(times)}


async def test_frames_go_out_every_20_ms_on_absolute_deadlines(
    rig: PlayerRig, autojump_clock: trio.abc.Clock
) -> None:
    started = trio.current_time()
    await rig.handle.enqueue(tone_track("a", seconds=1.0))
    await trio.sleep(1.5)
    times = [frame.at for frame in rig.voice.frames]
    assert rig.voice.payloads() == [f"a:{k}".encode() for k in range(50)]
    assert times == [pytest.approx(started + k * FRAME_SECONDS, abs=1e-9) for k in range(50)]
    stats = rig.player.statistics()
    assert (stats.frames_sent, stats.frames_late, stats.lateness_max) == (50, 0, 0.0)


class SlowSource:
    """Each frame takes `delays[k]` seconds to produce (default 10 ms): a busy decoder."""

    def __init__(self, delays: dict[int, float], frames: int = 20) -> None:
        self.delays = delays
        self.frames = frames

    @asynccontextmanager
    async def open(
        self, track: Track, *, start: float = 0.0, volume: int = 100
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        async def frames() -> AsyncGenerator[bytes, None]:
            for k in range(self.frames):
                await trio.sleep(self.delays.get(k, 0.010))
                yield b"%d" % k

        stream = frames()
        try:
            yield stream
        finally:
            await stream.aclose()


async def test_a_late_frame_does_not_delay_the_frames_after_it(
    rig: PlayerRig, autojump_clock: trio.abc.Clock
) -> None:
    rig.player._source = SlowSource({5: 0.030})
    await rig.handle.enqueue(tone_track("slow"))
    await trio.sleep(1)
    times = [frame.at for frame in rig.voice.frames]
    anchor = times[0]
    late = [round(t - (anchor + k * FRAME_SECONDS), 9) for k, t in enumerate(times)]
    # Frame 5 took 30 ms to produce, so it left 10 ms late; every other frame left on time.
    assert late == [0.0] * 5 + [0.010] + [0.0] * 14
    stats = rig.player.statistics()
    assert (stats.frames_sent, stats.frames_late, stats.resyncs) == (20, 1, 0)
    assert stats.lateness_max == pytest.approx(0.010)


async def test_a_stalled_source_restarts_the_schedule_instead_of_bursting(
    rig: PlayerRig, autojump_clock: trio.abc.Clock
) -> None:
    rig.player._source = SlowSource({5: 0.500})
    await rig.handle.enqueue(tone_track("stall"))
    await trio.sleep(2)
    times = [frame.at for frame in rig.voice.frames]
    assert len(times) == 20
    # After the stall the frames are 20 ms apart again, not sent back to back to catch up.
    assert spacing(times[5:]) == {FRAME_SECONDS}
    assert rig.player.statistics().resyncs == 1


async def test_queue_plays_in_order_and_reports_start_events(
    rig: PlayerRig, autojump_clock: trio.abc.Clock
) -> None:
    first = await rig.handle.enqueue(tone_track("a", 0.1))
    later = await rig.handle.enqueue(tone_track("b", 0.1), tone_track("c", 0.1))
    assert (first.position, first.count) == (0, 1)
    assert (later.position, later.count) == (1, 2)
    await trio.sleep(1)
    titles = [payload.split(b":")[0] for payload in rig.voice.payloads()]
    assert titles == [b"a"] * 5 + [b"b"] * 5 + [b"c"] * 5
    assert [e.track.title for e in rig.events if isinstance(e, TrackStarted)] == ["a", "b", "c"]


async def test_speaking_is_on_while_sending_and_off_when_the_queue_runs_dry(
    rig: PlayerRig, autojump_clock: trio.abc.Clock
) -> None:
    await rig.handle.enqueue(tone_track("a", 0.2), tone_track("b", 0.2))
    await trio.sleep(1)
    changes = rig.voice.speaking_changes
    assert [speaking for _, speaking in changes] == [True, False]
    assert changes[0][0] == rig.voice.frames[0].at
    assert changes[1][0] >= rig.voice.frames[-1].at


async def test_pause_sends_nothing_and_resume_continues_where_it_stopped(
    rig: PlayerRig, autojump_clock: trio.abc.Clock
) -> None:
    await rig.handle.enqueue(tone_track("a", 1.0))
    await trio.sleep(0.3)
    assert await rig.handle.pause() is True
    assert await rig.handle.pause() is False
    sent_at_pause = len(rig.voice.frames)
    assert rig.player.state is PlayerState.PAUSED
    await trio.sleep(5)
    assert len(rig.voice.frames) in (sent_at_pause, sent_at_pause + 1)
    assert rig.voice.speaking_changes[-1][1] is False
    now_playing = await rig.handle.now_playing()
    assert now_playing is not None and now_playing.paused
    resumed_at = trio.current_time()
    assert await rig.handle.resume() is True
    assert await rig.handle.resume() is False
    await trio.sleep(2)
    assert rig.voice.payloads() == [f"a:{k}".encode() for k in range(50)]
    after = [f.at for f in rig.voice.frames if f.at >= resumed_at]
    assert after[0] == pytest.approx(resumed_at)
    assert spacing(after) == {FRAME_SECONDS}  # no burst after the pause


async def test_pause_and_resume_when_nothing_plays_change_nothing(
    rig: PlayerRig, autojump_clock: trio.abc.Clock
) -> None:
    assert await rig.handle.pause() is False
    assert await rig.handle.resume() is False


async def test_skip_closes_the_current_source_and_plays_the_next(
    rig: PlayerRig, autojump_clock: trio.abc.Clock
) -> None:
    await rig.handle.enqueue(tone_track("a", 10), tone_track("b", 0.1))
    await trio.sleep(0.5)
    skipped = await rig.handle.skip()
    assert skipped is not None and skipped.title == "a"
    await trio.sleep(1)
    assert rig.source.closed == ["a", "b"]
    assert rig.voice.payloads()[-5:] == [f"b:{k}".encode() for k in range(5)]
    assert await rig.handle.skip() is None


async def test_stop_clears_the_queue_and_stays_connected(
    rig: PlayerRig, autojump_clock: trio.abc.Clock
) -> None:
    await rig.handle.enqueue(tone_track("a", 10), tone_track("b"), tone_track("c"))
    await trio.sleep(0.5)
    assert await rig.handle.stop() == 3
    await trio.testing.wait_all_tasks_blocked()
    sent = len(rig.voice.frames)
    await trio.sleep(5)
    assert len(rig.voice.frames) == sent
    assert rig.source.closed == ["a"]
    assert rig.voice.connected
    view = await rig.handle.queue()
    assert view.now_playing is None and view.upcoming == ()
    assert rig.player.state is PlayerState.IDLE


async def test_stop_while_paused_ends_the_track(
    rig: PlayerRig, autojump_clock: trio.abc.Clock
) -> None:
    await rig.handle.enqueue(tone_track("a", 10))
    await trio.sleep(0.5)
    await rig.handle.pause()
    assert await rig.handle.stop() == 1
    await trio.testing.wait_all_tasks_blocked()
    assert rig.player.state is PlayerState.IDLE
    await rig.handle.enqueue(tone_track("b", 0.1))
    await trio.sleep(0.5)
    assert rig.voice.payloads()[-1] == b"b:4"


async def test_queue_and_now_playing_report_titles_positions_and_elapsed(
    rig: PlayerRig, autojump_clock: trio.abc.Clock
) -> None:
    assert await rig.handle.now_playing() is None
    await rig.handle.enqueue(tone_track("a", 10), tone_track("b"), tone_track("c"))
    await trio.sleep(1.0)
    view = await rig.handle.queue()
    assert view.now_playing is not None
    assert view.now_playing.track.title == "a"
    assert view.now_playing.elapsed == pytest.approx(1.0, abs=0.021)
    assert [t.title for t in view.upcoming] == ["b", "c"]


async def test_a_track_that_cannot_be_read_is_reported_and_the_queue_goes_on(
    rig: PlayerRig, autojump_clock: trio.abc.Clock
) -> None:
    broken = tone_track("broken", url="fail:the server answered 404 Not Found")
    await rig.handle.enqueue(broken, tone_track("ok", 0.1))
    await trio.sleep(1)
    failed = [e for e in rig.events if isinstance(e, TrackFailed)]
    assert [(e.track.title, e.reason) for e in failed] == [
        ("broken", "the server answered 404 Not Found")
    ]
    assert rig.voice.payloads() == [f"ok:{k}".encode() for k in range(5)]


async def test_leave_ends_the_actor_and_disconnects_once(
    rig: PlayerRig, autojump_clock: trio.abc.Clock
) -> None:
    await rig.handle.enqueue(tone_track("a", 10))
    await trio.sleep(0.2)
    await rig.handle.leave()
    await trio.testing.wait_all_tasks_blocked()
    assert rig.voice.disconnects == 1
    assert rig.source.closed == ["a"]
    with pytest.raises(ActorGone):
        await rig.handle.queue()


async def test_connect_happens_before_started_and_uses_the_channel(
    rig: PlayerRig, autojump_clock: trio.abc.Clock
) -> None:
    assert (rig.voice.connects, rig.voice.channel_id) == (1, 77)


async def test_idle_seconds_count_from_the_last_activity_and_are_zero_while_playing(
    rig: PlayerRig, autojump_clock: trio.abc.Clock
) -> None:
    await trio.sleep(100)
    assert rig.player.idle_seconds() == pytest.approx(100)
    await rig.handle.enqueue(tone_track("a", 60))
    await trio.sleep(30)
    assert rig.player.idle_seconds() == 0.0
    await trio.sleep(40)
    assert rig.player.idle_seconds() == pytest.approx(10, abs=0.05)


async def test_a_bug_handling_a_request_ends_the_player_and_the_asker_hears_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    from musicbot.core.mailbox import ask
    from musicbot.core.messages import Request

    class Unknown(Request[None]):
        pass

    voice, source = FakeVoice(1), FakeFrameSource()
    player = GuildPlayer(1, voice, source)
    inbox_tx, inbox_rx = trio.open_memory_channel[Any](16)
    crashes: list[Exception] = []

    async def run_and_record(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await player.run(inbox_rx, task_status=task_status)
        except Exception as exc:  # what a supervisor would log as a crash
            crashes.append(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_and_record)
        with pytest.raises(ActorGone):
            await ask(inbox_tx, Unknown())
        assert trio.current_time() == 0  # at once, not after the reply timeout
    (crash,) = crashes
    assert isinstance(crash, ExceptionGroup)
    assert crash.subgroup(lambda e: isinstance(e, TypeError) and "unknown message" in str(e))
    assert voice.disconnects == 1
