"""Request/answer over Trio memory channels: `ask()` and the envelope an actor answers."""

from __future__ import annotations

from typing import Any, Generic, TypeAlias, TypeVar, cast

import attrs
import trio

from musicbot.core.messages import Request

R = TypeVar("R")


class ActorGone(Exception):
    """The actor ended before it answered (it left, was reaped, crashed or is shutting down)."""

    def __init__(self, request: object) -> None:
        super().__init__(f"the actor ended before answering {type(request).__name__}")
        self.request = request


@attrs.frozen
class Ask(Generic[R]):
    """A request with its own one-shot reply channel.

    The actor answers inside `with ask.reply_to:`, so if it dies mid-request the channel closes
    and the caller gets `ActorGone` instead of waiting forever.
    """

    body: Request[R]
    reply_to: trio.MemorySendChannel[R | BaseException] = attrs.field(repr=False)


Inbox: TypeAlias = trio.MemorySendChannel[Ask[Any]]
InboxReceiver: TypeAlias = trio.MemoryReceiveChannel[Ask[Any]]


async def ask(inbox: Inbox, body: Request[R]) -> R:
    """Send `body` to the actor behind `inbox` and wait for its answer.

    An answer that is an exception (an expected refusal) is raised here, in the caller. An actor
    that does not answer within the request's `reply_timeout` raises trio.TooSlowError: that is
    a bug to see, not a state to handle.
    """
    reply_tx, reply_rx = trio.open_memory_channel[Any](1)
    async with reply_rx:
        with trio.fail_after(body.reply_timeout):
            try:
                await inbox.send(Ask(body, reply_tx))
                answer = await reply_rx.receive()
            except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
                raise ActorGone(body) from None
    if isinstance(answer, BaseException):
        raise answer
    return cast(R, answer)


def close_inbox(inbox: InboxReceiver) -> None:
    """Close an actor's inbox, answering every request still queued in it with `ActorGone`.

    Without this, a request that arrived just before the actor ended would wait out its timeout.
    """
    while True:
        try:
            pending = inbox.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            break
        pending.reply_to.close()
    inbox.close()
