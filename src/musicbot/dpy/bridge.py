"""Crossing between Trio and the asyncio loop that hosts discord.py (via trio-asyncio).

Each function says its flavour in its name: `*_from_asyncio` is awaited from asyncio code (a cog)
and runs Trio code; `*_from_trio` is awaited from Trio code (an actor) and runs asyncio code.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import trio_asyncio

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


async def call_trio_from_asyncio(
    fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
) -> T:
    """Await the Trio function `fn(*args, **kwargs)` from asyncio code."""
    result: T = await trio_asyncio.trio_as_aio(functools.partial(fn, *args, **kwargs))()
    return result


async def call_asyncio_from_trio(
    fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
) -> T:
    """Await the asyncio coroutine function `fn(*args, **kwargs)` from Trio code."""
    result: T = await trio_asyncio.aio_as_trio(functools.partial(fn, *args, **kwargs))()
    return result


@contextmanager
def asyncio_errors_logged() -> Iterator[None]:
    """Log what asyncio code reports to its loop instead of raising it into the loop.

    trio-asyncio's default handler re-raises every such report ("Task exception was never
    retrieved", a callback that raised), which ends the loop and the bot with it. discord.py
    reports harmless races that way: an IP discovery reply that lands after its connect was
    given up sets a cancelled future. A bot that runs for months logs them and carries on.
    """
    loop = trio_asyncio.current_loop.get()
    if loop is None:
        raise RuntimeError("asyncio_errors_logged() needs a running trio-asyncio loop")
    previous = loop.get_exception_handler()
    loop.set_exception_handler(_log_report)
    try:
        yield
    finally:
        loop.set_exception_handler(previous)


def _log_report(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    error = context.get("exception")
    log.warning(
        "asyncio reported an error nobody awaited (the bot carries on): %s",
        context.get("message") or "no message",
        exc_info=error if isinstance(error, BaseException) else None,
    )


PURGE_AT_LEAST = 100
"""Cancelled timers before a purge is considered (asyncio's own threshold)."""


@contextmanager
def cancelled_timers_purged() -> Iterator[None]:
    """Drop cancelled asyncio timers from the loop's heap once they are most of it.

    asyncio does this itself; trio-asyncio keeps a cancelled timer until its deadline. Every
    aiohttp request and gateway read arms a timeout of a minute or more and cancels it when the
    answer comes, so a busy bot kept tens of thousands of dead timers (megabytes) that the soak
    counted as growth.
    """
    loop = trio_asyncio.current_loop.get()
    if loop is None:
        raise RuntimeError("cancelled_timers_purged() needs a running trio-asyncio loop")
    timers: list[asyncio.TimerHandle] = loop._timers
    cancelled = 0

    def purge_if_mostly_cancelled(handle: asyncio.TimerHandle) -> None:
        nonlocal cancelled
        # Counted even if already run or not yet in the heap: at worst a purge comes early.
        cancelled += 1
        if cancelled >= PURGE_AT_LEAST and cancelled * 2 > len(timers):
            timers[:] = [timer for timer in timers if not timer.cancelled()]
            heapq.heapify(timers)
            cancelled = 0

    loop._timer_handle_cancelled = purge_if_mostly_cancelled
    try:
        yield
    finally:
        del loop._timer_handle_cancelled
