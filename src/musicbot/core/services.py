"""`open_service_nursery`: the nursery an `open_*` context manager keeps its helpers in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def open_service_nursery(closing: str) -> AsyncIterator[trio.Nursery]:
    """A nursery for the background tasks of a context manager's lifetime.

    Leaving the block cancels them (with reason `closing`), and an exception from the block is
    raised as itself once they are gone, not wrapped in an exception group, so the caller of
    the outer context manager sees its own exception.
    """
    body_error: Exception | None = None
    async with trio.open_nursery() as services:
        try:
            yield services
        except Exception as exc:
            body_error = exc
        finally:
            services.cancel_scope.cancel(reason=closing)
    if body_error is not None:
        raise body_error
