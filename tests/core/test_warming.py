"""While a track plays, the next ones are prepared; the work follows the queue and the actor."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from musicbot.core.player import GuildPlayer, PlayerLimits
from musicbot.core.supervisor import PlayerHandle
from musicbot.testing import FakeFrameSource, FakeVoice, FakeWarmer, tone_track

Clock = trio.abc.Clock


async def start_player(nursery: trio.Nursery, warmer: FakeWarmer, ahead: int = 2) -> PlayerHandle:
    player = GuildPlayer(
        1, FakeVoice(), FakeFrameSource(), limits=PlayerLimits(warm_ahead=ahead), warmer=warmer
    )
    inbox_tx, inbox_rx = trio.open_memory_channel[Any](16)
    await nursery.start(player.run, inbox_rx)
    return PlayerHandle(1, inbox_tx)


async def test_the_next_tracks_are_warmed_in_order_while_one_plays(autojump_clock: Clock) -> None:
    warmer = FakeWarmer(seconds=1)
    async with trio.open_nursery() as nursery:
        player = await start_player(nursery, warmer)
        await player.enqueue(*(tone_track(t, 30) for t in "abcd"))
        await trio.sleep(5)
        assert warmer.finished == ["b", "c"]  # two ahead, not d, and never the playing one
        await player.skip()
        await trio.sleep(5)
        assert warmer.finished[2:] == ["c", "d"]  # c is already ready: a real warmer returns
        nursery.cancel_scope.cancel()


async def test_a_queue_change_cancels_warming_and_starts_over(autojump_clock: Clock) -> None:
    warmer = FakeWarmer(seconds=10)
    async with trio.open_nursery() as nursery:
        player = await start_player(nursery, warmer)
        await player.enqueue(tone_track("a", 60), tone_track("b"), tone_track("c"))
        await trio.sleep(5)
        assert warmer.started == ["b"]
        await player.remove(1)  # b is gone: stop preparing it
        await trio.testing.wait_all_tasks_blocked()
        assert warmer.cancelled == ["b"]
        assert warmer.started == ["b", "c"]
        await player.stop()
        await trio.testing.wait_all_tasks_blocked()
        assert warmer.cancelled == ["b", "c"]
        assert warmer.finished == []
        nursery.cancel_scope.cancel()


async def test_warming_ends_with_the_player(autojump_clock: Clock) -> None:
    warmer = FakeWarmer(seconds=10)
    async with trio.open_nursery() as nursery:
        player = await start_player(nursery, warmer)
        await player.enqueue(tone_track("a", 60), tone_track("b"))
        await trio.sleep(1)
        await player.leave()
    assert warmer.cancelled == ["b"]


async def test_no_warming_when_it_is_off(autojump_clock: Clock) -> None:
    warmer = FakeWarmer(seconds=1)
    async with trio.open_nursery() as nursery:
        player = await start_player(nursery, warmer, ahead=0)
        await player.enqueue(tone_track("a", 10), tone_track("b"))
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert warmer.started == []
