"""Volume, seek, loop, shuffle, remove, queue limits and waiting for a track to start."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from musicbot.core.mailbox import ActorGone
from musicbot.core.messages import LoopMode, Refused, Track, TrackFailed, TrackStarted
from musicbot.core.player import GuildPlayer, PlayerLimits
from musicbot.core.ports import FRAME_SECONDS, SourceError
from musicbot.core.supervisor import PlayerHandle
from musicbot.testing import FakeFrameSource, FakeVoice, tone_track

Clock = trio.abc.Clock


class Rig:
    def __init__(self, nursery: trio.Nursery, limits: PlayerLimits, source: Any) -> None:
        self.voice = FakeVoice(1)
        self.source = source
        self.events: list[object] = []
        self.player = GuildPlayer(1, self.voice, source, on_event=self.events.append, limits=limits)
        inbox_tx, inbox_rx = trio.open_memory_channel[Any](16)
        self.handle = PlayerHandle(1, inbox_tx)
        nursery.start_soon(self.player.run, inbox_rx)

    def indexes(self, title: str) -> list[int]:
        return [
            int(p.split(b":")[1]) for p in self.voice.payloads() if p.startswith(title.encode())
        ]


@asynccontextmanager
async def open_rig(limits: PlayerLimits = PlayerLimits(), source: Any = None) -> AsyncIterator[Rig]:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, limits, source or FakeFrameSource())
        await trio.testing.wait_all_tasks_blocked()
        yield rig
        nursery.cancel_scope.cancel()


async def test_volume_reopens_the_stream_where_it_was_at_the_new_volume(
    autojump_clock: Clock,
) -> None:
    async with open_rig() as rig:
        await rig.handle.enqueue(tone_track("a", 4))
        await trio.sleep(1.005)
        assert await rig.handle.set_volume(50) == 50
        await trio.sleep(4)
        assert [(start, volume) for _, start, volume in rig.source.opened] == [
            (0.0, 100),
            (pytest.approx(1.02), 50),
        ]
        assert rig.indexes("a") == list(range(200))  # nothing lost, nothing repeated
        times = [f.at for f in rig.voice.frames]
        assert max(b - a for a, b in itertools.pairwise(times)) <= 0.2
        assert await rig.handle.set_volume(50) == 50
        assert len(rig.source.opened) == 2  # no change, no reopen


@pytest.mark.parametrize("percent", [-1, 201, 10_000])
async def test_volume_out_of_range_is_refused(percent: int, autojump_clock: Clock) -> None:
    async with open_rig() as rig:
        with pytest.raises(Refused, match="from 0 to 200"):
            await rig.handle.set_volume(percent)


async def test_seek_jumps_to_the_position(autojump_clock: Clock) -> None:
    async with open_rig() as rig:
        await rig.handle.enqueue(tone_track("a", 4))
        await trio.sleep(0.5)
        assert await rig.handle.seek(2.0) == 2.0
        await trio.testing.wait_all_tasks_blocked()
        now_playing = await rig.handle.now_playing()
        assert now_playing is not None
        assert now_playing.elapsed == pytest.approx(2.0, abs=0.021)
        await trio.sleep(3)
        indexes = rig.indexes("a")
        assert indexes[:25] == list(range(25))
        assert indexes[-100:] == list(range(100, 200))
        assert rig.source.opened[-1][1] == 2.0


@pytest.mark.parametrize(
    ("track", "seconds", "message"),
    [
        (tone_track("a", 4), 4.0, r"not a position in this track \(it is 4 s long\)"),
        (tone_track("a", 4), -1.0, "not a position"),
        (Track("radio", "fake://radio", duration=None, live=True), 5.0, "live stream"),
    ],
)
async def test_impossible_seeks_are_refused(
    track: Track, seconds: float, message: str, autojump_clock: Clock
) -> None:
    async with open_rig() as rig:
        with pytest.raises(Refused, match="nothing is playing"):
            await rig.handle.seek(1.0)
        await rig.handle.enqueue(track)
        await trio.sleep(0.1)
        with pytest.raises(Refused, match=message):
            await rig.handle.seek(seconds)


async def test_loop_track_repeats_it_and_skip_moves_on(autojump_clock: Clock) -> None:
    async with open_rig() as rig:
        assert await rig.handle.set_loop(LoopMode.TRACK) is LoopMode.TRACK
        await rig.handle.enqueue(tone_track("a", 0.1), tone_track("b", 0.1))
        await trio.sleep(0.35)
        starts = [e for e in rig.events if isinstance(e, TrackStarted)]
        assert [e.track.title for e in starts] == ["a", "a", "a", "a"]
        assert [e.repeat for e in starts] == [False, True, True, True]
        await rig.handle.skip()
        await trio.sleep(0.25)
        started = [e.track.title for e in rig.events if isinstance(e, TrackStarted)]
        assert started[4:] == ["b", "b", "b"]


async def test_loop_queue_cycles_through_the_queue(autojump_clock: Clock) -> None:
    async with open_rig() as rig:
        await rig.handle.set_loop(LoopMode.QUEUE)
        await rig.handle.enqueue(tone_track("a", 0.1), tone_track("b", 0.1), tone_track("c", 0.1))
        await trio.sleep(0.25)
        await rig.handle.skip()  # a skipped track stays in the cycle
        await trio.sleep(0.75)
        started = [e.track.title for e in rig.events if isinstance(e, TrackStarted)]
        assert started[:7] == ["a", "b", "c", "a", "b", "c", "a"]
        view = await rig.handle.queue()
        assert view.loop is LoopMode.QUEUE


async def test_stop_ends_a_looping_queue(autojump_clock: Clock) -> None:
    async with open_rig() as rig:
        await rig.handle.set_loop(LoopMode.QUEUE)
        await rig.handle.enqueue(tone_track("a", 0.1), tone_track("b", 0.1))
        await trio.sleep(0.05)
        assert await rig.handle.stop() == 2
        await trio.sleep(1)
        assert (await rig.handle.queue()).upcoming == ()
        assert len([e for e in rig.events if isinstance(e, TrackStarted)]) == 1


async def test_shuffle_keeps_the_same_tracks(autojump_clock: Clock) -> None:
    async with open_rig() as rig:
        titles = [f"t{i}" for i in range(30)]
        await rig.handle.enqueue(tone_track("now", 60), *(tone_track(t) for t in titles))
        assert await rig.handle.shuffle() == 30
        upcoming = [t.title for t in (await rig.handle.queue()).upcoming]
        assert sorted(upcoming) == sorted(titles)
        assert upcoming != titles  # 1 in 30! that a shuffle changes nothing


async def test_remove_takes_out_the_track_at_a_position(autojump_clock: Clock) -> None:
    async with open_rig() as rig:
        with pytest.raises(Refused, match="the queue is empty"):
            await rig.handle.remove(1)
        await rig.handle.enqueue(tone_track("now", 60), tone_track("x"), tone_track("y"))
        removed = await rig.handle.remove(1)
        assert removed.title == "x"
        assert [t.title for t in (await rig.handle.queue()).upcoming] == ["y"]
        for position in (0, 2, -3):
            with pytest.raises(Refused, match=r"no track .* it has 1 to 1"):
                await rig.handle.remove(position)


async def test_the_queue_limit_holds_and_says_what_was_left_out(autojump_clock: Clock) -> None:
    async with open_rig(PlayerLimits(max_queue_length=3)) as rig:
        await rig.handle.enqueue(tone_track("now", 60))
        await trio.testing.wait_all_tasks_blocked()
        added = await rig.handle.enqueue(*(tone_track(f"t{i}") for i in range(5)))
        assert (added.position, added.count, added.left_out) == (1, 3, 2)
        with pytest.raises(Refused, match=r"the queue is full \(3 tracks\)"):
            await rig.handle.enqueue(tone_track("one more"))
        assert len((await rig.handle.queue()).upcoming) == 3


async def test_waiting_for_start_answers_once_audio_flows(autojump_clock: Clock) -> None:
    async with open_rig() as rig:
        enqueued = await rig.handle.enqueue(tone_track("a", 1), wait_for_start=True)
        assert (enqueued.position, enqueued.count) == (0, 1)
        assert rig.source.opened[0][0] == "a"
        (started,) = [e for e in rig.events if isinstance(e, TrackStarted)]
        assert (started.answered, started.repeat) == (True, False)
        queued = await rig.handle.enqueue(tone_track("b", 1), wait_for_start=True)
        assert queued.position == 1  # not starting now: answered at once


async def test_waiting_for_start_raises_the_failure_instead_of_announcing_it(
    autojump_clock: Clock,
) -> None:
    async with open_rig() as rig:
        broken = tone_track("broken", url="fail:the server answered 404 Not Found")
        with pytest.raises(SourceError, match="404"):
            await rig.handle.enqueue(broken, tone_track("next", 0.1), wait_for_start=True)
        await trio.sleep(0.5)
        assert not [e for e in rig.events if isinstance(e, TrackFailed)]
        assert [e.track.title for e in rig.events if isinstance(e, TrackStarted)] == ["next"]


class SilentSource:
    """Opens, then never sends a frame: a server that accepts and stalls."""

    @asynccontextmanager
    async def open(
        self, track: Track, *, start: float = 0.0, volume: int = 100
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        await trio.sleep_forever()
        yield  # type: ignore[misc]  # never reached


async def test_a_track_that_never_starts_fails_after_the_open_timeout(
    autojump_clock: Clock,
) -> None:
    async with open_rig(PlayerLimits(open_timeout=3), SilentSource()) as rig:
        asked = trio.current_time()
        with pytest.raises(SourceError, match="did not start sending audio in time"):
            await rig.handle.enqueue(tone_track("a"), wait_for_start=True)
        assert trio.current_time() - asked == pytest.approx(3)


async def test_a_stall_mid_track_fails_it_after_the_stall_timeout_and_moves_on(
    autojump_clock: Clock,
) -> None:
    async with open_rig(PlayerLimits(stall_timeout=4)) as rig:
        stalling = tone_track("stalling", 2, url="stall:")
        await rig.handle.enqueue(stalling, tone_track("next", 0.2))
        await trio.sleep(1 + 4 + 0.5)
        failed = [e for e in rig.events if isinstance(e, TrackFailed)]
        assert [(e.track.title, e.reason) for e in failed] == [
            ("stalling", "the server stopped sending audio")
        ]
        assert rig.indexes("next") == list(range(10))


async def test_a_long_pause_is_not_a_stall(autojump_clock: Clock) -> None:
    async with open_rig(PlayerLimits(stall_timeout=4)) as rig:
        await rig.handle.enqueue(tone_track("a", 1))
        await trio.sleep(0.5)
        await rig.handle.pause()
        await trio.sleep(60)
        await rig.handle.resume()
        await trio.sleep(1)
        assert not [e for e in rig.events if isinstance(e, TrackFailed)]
        assert rig.indexes("a") == list(range(50))


async def test_a_waiting_enqueue_hears_actor_gone_when_the_player_leaves(
    autojump_clock: Clock,
) -> None:
    async with (
        open_rig(PlayerLimits(open_timeout=30), SilentSource()) as rig,
        trio.open_nursery() as nursery,
    ):

        async def leave_soon() -> None:
            await trio.sleep(1)
            await rig.handle.leave()

        nursery.start_soon(leave_soon)
        with pytest.raises(ActorGone):
            await rig.handle.enqueue(tone_track("a"), wait_for_start=True)


def test_frame_seconds_is_discords() -> None:
    assert FRAME_SECONDS == 0.020


async def test_consecutive_tracks_keep_the_20_ms_rhythm(autojump_clock: Clock) -> None:
    async with open_rig() as rig:
        await rig.handle.enqueue(tone_track("a", 0.1), tone_track("b", 0.1), tone_track("c", 0.1))
        await trio.sleep(1)
        times = [f.at for f in rig.voice.frames]
        assert len(times) == 15
        assert {round(b - a, 9) for a, b in itertools.pairwise(times)} == {FRAME_SECONDS}
