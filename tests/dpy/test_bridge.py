"""The Trio/asyncio bridge's loop fixes, on a real trio-asyncio loop."""

from __future__ import annotations

import asyncio

import trio
import trio.lowlevel
import trio_asyncio

from musicbot.dpy.bridge import PURGE_AT_LEAST, cancelled_timers_purged


def _heap(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    timers: list[asyncio.TimerHandle] = loop._timers  # type: ignore[attr-defined]
    return timers


async def _arm_and_cancel(count: int) -> tuple[asyncio.AbstractEventLoop, list[int]]:
    """Arm `count` hour-long timers and cancel all but every tenth; the heap's size after."""
    loop = asyncio.get_running_loop()
    fired: list[int] = []
    handles = [loop.call_later(3600 + n, fired.append, n) for n in range(count)]
    await asyncio.sleep(0)  # trio-asyncio moves new timers into its heap in its own turn
    for n, handle in enumerate(handles):
        if n % 10:
            handle.cancel()
    await asyncio.sleep(0)
    return loop, fired


async def test_cancelled_timers_are_dropped_once_they_are_most_of_the_heap() -> None:
    async with trio_asyncio.open_loop():
        with cancelled_timers_purged():
            loop, _ = await trio_asyncio.aio_as_trio(_arm_and_cancel)(2000)
            heap = _heap(loop)
            # 1,800 cancelled: purged in steps, so at most a step's worth remains.
            cancelled = sum(timer.cancelled() for timer in heap)
            assert cancelled < PURGE_AT_LEAST + len(heap) // 2
            assert sum(not timer.cancelled() for timer in heap) == 200
            assert len(heap) < 600


async def test_timers_still_fire_in_order_after_a_purge() -> None:
    async with trio_asyncio.open_loop() as loop:
        with cancelled_timers_purged():
            fired: list[int] = []
            handles = [loop.call_later(0.01 * (n % 50), fired.append, n) for n in range(500)]
            await trio.lowlevel.checkpoint()
            for n, handle in enumerate(handles):
                if n % 5:
                    handle.cancel()
            await trio.sleep(0.6)
        kept = [n for n in range(500) if n % 5 == 0]
        assert sorted(fired) == kept
        assert fired == sorted(fired, key=lambda n: handles[n].when())


async def test_without_the_purge_trio_asyncio_keeps_cancelled_timers() -> None:
    """What the fix is for: if trio-asyncio ever purges on its own, this fails and the fix can
    go."""
    async with trio_asyncio.open_loop():
        loop, _ = await trio_asyncio.aio_as_trio(_arm_and_cancel)(1000)
        assert len(_heap(loop)) == 1000


async def test_the_loop_is_as_it_was_afterwards() -> None:
    async with trio_asyncio.open_loop() as loop:
        with cancelled_timers_purged():
            assert "_timer_handle_cancelled" in vars(loop)
        assert "_timer_handle_cancelled" not in vars(loop)
