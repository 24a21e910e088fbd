"""FrameClock: one ticker wakes many pacing loops at their deadlines."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from musicbot.core.clock import BATCH, FrameClock


async def test_sleepers_wake_at_their_deadlines_in_order(autojump_clock: trio.abc.Clock) -> None:
    clock = FrameClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, deadline: float) -> None:
        await clock.sleep_until(deadline)
        woke.append((name, trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(clock.run)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        for name, offset in [("c", 0.06), ("a", 0.02), ("b", 0.04), ("a2", 0.02)]:
            nursery.start_soon(sleeper, name, start + offset)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert [name for name, _ in woke] in (["a", "a2", "b", "c"], ["a2", "a", "b", "c"])
    offsets = {name: at - start for name, at in woke}
    assert offsets == pytest.approx({"a": 0.02, "a2": 0.02, "b": 0.04, "c": 0.06})
    assert clock.wakes == 3  # the two due together shared one


async def test_an_earlier_deadline_wakes_the_ticker_early(autojump_clock: trio.abc.Clock) -> None:
    clock = FrameClock()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(clock.run)
        start = trio.current_time()
        nursery.start_soon(clock.sleep_until, start + 10)
        await trio.testing.wait_all_tasks_blocked()
        await clock.sleep_until(start + 1)
        assert trio.current_time() - start == pytest.approx(1)
        nursery.cancel_scope.cancel()


async def test_deadlines_within_a_batch_share_one_wake(autojump_clock: trio.abc.Clock) -> None:
    clock = FrameClock()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(clock.run)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        for index in range(100):
            nursery.start_soon(clock.sleep_until, start + 1 + index * BATCH / 200)
        await trio.sleep(2)
        assert clock.wakes == 1
        nursery.cancel_scope.cancel()


async def test_a_cancelled_sleeper_leaves_the_clock_and_the_others_wake(
    autojump_clock: trio.abc.Clock,
) -> None:
    clock = FrameClock()
    woke: list[str] = []

    async def sleeper(name: str, deadline: float) -> None:
        await clock.sleep_until(deadline)
        woke.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(clock.run)
        start = trio.current_time()
        with trio.CancelScope() as doomed:
            nursery.start_soon(sleeper, "other", start + 2)
            with trio.move_on_after(1) as timeout:
                await clock.sleep_until(start + 5)
            assert timeout.cancelled_caught
            assert trio.current_time() - start == pytest.approx(1)
        assert not doomed.cancelled_caught
        await trio.sleep(10)
        assert woke == ["other"]
        nursery.cancel_scope.cancel()


async def test_without_its_ticker_the_clock_sleeps_plainly(autojump_clock: trio.abc.Clock) -> None:
    clock = FrameClock()
    start = trio.current_time()
    await clock.sleep_until(start + 3)
    assert trio.current_time() - start == pytest.approx(3)


async def test_a_shielded_sleeper_is_woken_when_the_ticker_stops(
    autojump_clock: trio.abc.Clock,
) -> None:
    clock = FrameClock()
    woke_at: list[float] = []

    async def shielded_sleeper() -> None:
        with trio.CancelScope(shield=True):
            await clock.sleep_until(trio.current_time() + 100)
            woke_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(clock.run)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        nursery.start_soon(shielded_sleeper)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert woke_at == [pytest.approx(start + 1)]
