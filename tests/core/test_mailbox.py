from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

from musicbot.core.mailbox import ActorGone, ask, close_inbox
from musicbot.core.messages import Request


@attrs.frozen
class Double(Request[int]):
    value: int


@attrs.frozen
class Refuse(Request[int]):
    pass


async def echo_actor(inbox: trio.MemoryReceiveChannel[Any]) -> None:
    async for request in inbox:
        with request.reply_to:
            if isinstance(request.body, Refuse):
                request.reply_to.send_nowait(ValueError("refused"))
            else:
                request.reply_to.send_nowait(request.body.value * 2)


async def test_ask_returns_the_actors_answer_and_raises_its_refusals() -> None:
    inbox_tx, inbox_rx = trio.open_memory_channel[Any](0)
    async with trio.open_nursery() as actors:
        actors.start_soon(echo_actor, inbox_rx)
        assert await ask(inbox_tx, Double(21)) == 42
        with pytest.raises(ValueError, match="refused"):
            await ask(inbox_tx, Refuse())
        actors.cancel_scope.cancel()


async def test_ask_to_an_ended_actor_raises_actor_gone() -> None:
    inbox_tx, inbox_rx = trio.open_memory_channel[Any](1)
    inbox_rx.close()
    with pytest.raises(ActorGone, match="Double"):
        await ask(inbox_tx, Double(1))


async def test_an_actor_that_dies_mid_request_answers_actor_gone() -> None:
    inbox_tx, inbox_rx = trio.open_memory_channel[Any](0)

    async def dying_actor() -> None:
        request = await inbox_rx.receive()
        with request.reply_to:
            raise RuntimeError("died before answering")

    with pytest.raises(ExceptionGroup) as died:  # noqa: PT012 - the nursery is the subject
        async with trio.open_nursery() as actors:
            actors.start_soon(dying_actor)
            with pytest.raises(ActorGone):
                await ask(inbox_tx, Double(1))
    assert died.group_contains(RuntimeError, match="died before answering")


async def test_close_inbox_answers_queued_requests_at_once(autojump_clock: trio.abc.Clock) -> None:
    inbox_tx, inbox_rx = trio.open_memory_channel[Any](8)
    outcomes: list[str] = []

    async def asker() -> None:
        try:
            await ask(inbox_tx, Double(1))
        except ActorGone:
            outcomes.append("gone")

    async with trio.open_nursery() as askers:
        for _ in range(3):
            askers.start_soon(asker)
        await trio.testing.wait_all_tasks_blocked()
        close_inbox(inbox_rx)
    assert outcomes == ["gone"] * 3
    assert trio.current_time() == 0


async def test_an_actor_that_never_answers_times_out(autojump_clock: trio.abc.Clock) -> None:
    inbox_tx, _inbox_rx = trio.open_memory_channel[Any](1)
    with pytest.raises(trio.TooSlowError):
        await ask(inbox_tx, Double(1))
    assert trio.current_time() == Double.reply_timeout == 5.0
