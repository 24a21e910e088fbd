"""Crossing between Trio and the asyncio loop that hosts discord.py (via trio-asyncio).

Each function says its flavour in its name: `*_from_asyncio` is awaited from asyncio code (a cog)
and runs Trio code; `*_from_trio` is awaited from Trio code (an actor) and runs asyncio code.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import trio_asyncio

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
