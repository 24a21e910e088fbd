"""Frames to send on one server-side websocket, in order, queued from asyncio or Trio code.

The websocket's handler (asyncio) runs `run()` as its writer; anyone may `send()` (which returns
a Trio event set once the frame is written, or once it never will be) or `close(code)`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import attrs
import trio
from aiohttp import web

from musicbot.testing.loopback.records import JSON


@attrs.frozen
class _Close:
    code: int


class Outbox:
    def __init__(self, ws: web.WebSocketResponse, *, on_written: Callable[[], None]) -> None:
        self._ws = ws
        self._on_written = on_written
        self._queue: asyncio.Queue[tuple[str, trio.Event] | _Close | None] = asyncio.Queue()
        self.closed_by_server: int | None = None

    def send(self, payload: JSON) -> trio.Event:
        written = trio.Event()
        self._queue.put_nowait((json.dumps(payload), written))
        return written

    def close(self, code: int) -> None:
        """Close the websocket from the server side, after the frames queued before."""
        self._queue.put_nowait(_Close(code))

    def finish(self) -> None:
        """Stop the writer after the frames queued so far (the handler is ending)."""
        self._queue.put_nowait(None)

    async def run(self) -> None:
        """The writer loop (asyncio)."""
        try:
            while (item := await self._queue.get()) is not None:
                if isinstance(item, _Close):
                    if self.closed_by_server is None and not self._ws.closed:
                        self.closed_by_server = item.code
                        await self._ws.close(code=item.code)
                    continue
                text, written = item
                try:
                    if not self._ws.closed:
                        await self._ws.send_str(text)
                except (ConnectionError, RuntimeError):
                    pass  # the peer is gone; the frame stays unwritten, like on a real network
                finally:
                    written.set()
                    self._on_written()
        finally:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if isinstance(item, tuple):
                    item[1].set()
