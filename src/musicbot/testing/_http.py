"""A small HTTP/1.1 server on Trio sockets and h11: GET and HEAD, byte ranges, keep-alive.

Enough for ffmpeg and yt-dlp on loopback, and able to misbehave on purpose: a handler may stop
mid-body (`Response.abort()`), and the connection then closes with the body cut short.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import suppress
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
import h11
import trio

MAX_REQUEST_HEAD = 16 * 1024
CHUNK = 64 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")

_KNOWN_STATUSES = frozenset(HTTPStatus)

Headers = Iterable[tuple[str, str]]


class RangeNotSatisfiable(Exception):
    pass


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The [start, stop) slice a `Range` header asks of `size` bytes; None for the whole body.

    One range only (a multi-range or malformed header is ignored: the whole body is a valid
    answer). Raises RangeNotSatisfiable when the range starts past the end.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(header)
        return max(size - suffix, 0), size
    start = int(first)
    stop = size if not last else min(int(last) + 1, size)
    if start >= size or stop <= start:
        raise RangeNotSatisfiable(header)
    return start, stop


@attrs.frozen
class Request:
    method: str
    target: str
    path: str
    """Percent-decoded path, without the query."""
    query: Mapping[str, str]
    headers: Mapping[str, str]
    """Lower-case names; the last value of a repeated header."""

    @classmethod
    def from_h11(cls, event: h11.Request) -> Request:
        target = event.target.decode("ascii", errors="replace")
        parts = urlsplit(target)
        return cls(
            method=event.method.decode("ascii", errors="replace"),
            target=target,
            path=unquote(parts.path),
            query=dict(parse_qsl(parts.query)),
            headers={
                name.decode().lower(): value.decode("latin-1") for name, value in event.headers
            },
        )


class Response:
    """The answer to one request. Send it whole with `send_body`, or in parts with `start`,
    `send` and `finish`. A handler that returns before `finish()` closes the connection, cutting
    the body short: how a test server misbehaves on purpose."""

    def __init__(self, connection: _Connection, request: Request) -> None:
        self._connection = connection
        self.request = request
        self.started = False
        self.finished = False

    async def start(self, status: int, headers: Headers) -> None:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        head = [("Server", "musicbot-testing"), *headers]
        reason = HTTPStatus(status).phrase.encode() if status in _KNOWN_STATUSES else b""
        await self._connection.send(h11.Response(status_code=status, headers=head, reason=reason))

    async def send(self, data: bytes) -> None:
        if self.request.method == "HEAD":
            return
        for offset in range(0, len(data), CHUNK):
            await self._connection.send(h11.Data(data=data[offset : offset + CHUNK]))

    async def wait_client_gone(self) -> None:
        """Send nothing more; return when the client closes the connection."""
        await self._connection.wait_closed()

    async def finish(self) -> None:
        await self._connection.send(h11.EndOfMessage())
        self.finished = True

    async def send_body(
        self,
        body: bytes,
        content_type: str,
        *,
        status: int = 200,
        headers: Headers = (),
        ranges: bool = True,
    ) -> None:
        """Answer with `body`, honouring a `Range` request (206 or 416) when `ranges` is true."""
        size = len(body)
        common = [("Content-Type", content_type), *headers]
        if ranges:
            common.append(("Accept-Ranges", "bytes"))
        try:
            wanted = byte_range(self.request.headers.get("range"), size) if ranges else None
        except RangeNotSatisfiable:
            unsatisfiable = ("Content-Range", f"bytes */{size}")
            await self.start(416, [*common, unsatisfiable, ("Content-Length", "0")])
            await self.finish()
            return
        if wanted is None:
            await self.start(status, [*common, ("Content-Length", str(size))])
            await self.send(body)
        else:
            start, stop = wanted
            content_range = f"bytes {start}-{stop - 1}/{size}"
            length = ("Content-Length", str(stop - start))
            await self.start(206, [*common, ("Content-Range", content_range), length])
            await self.send(body[start:stop])
        await self.finish()


Handler = Callable[[Request, Response], Awaitable[None]]


KEEP_ALIVE_SECONDS = 5.0
"""How long a connection may wait for its next request before the server closes it (nginx: 75 s).
Short here, so that the idle keep-alive connections a client pools (yt-dlp's do) end within a
test instead of outliving it."""


class _Connection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)

    async def next_event(self) -> h11.Event:
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                raise RuntimeError("h11 paused: start_next_cycle() was not called")
            self.h11.receive_data(await self.stream.receive_some(CHUNK))

    async def wait_closed(self) -> None:
        """Read (and drop) whatever the client sends until it closes the connection."""
        while await self.stream.receive_some(CHUNK):
            pass


async def serve_connection(stream: trio.SocketStream, handler: Handler) -> None:
    """Answer requests on one connection until either side closes it."""
    connection = _Connection(stream)
    try:
        while True:
            with trio.move_on_after(KEEP_ALIVE_SECONDS) as idle:
                event = await connection.next_event()
            if idle.cancelled_caught:
                return  # no request came: closed, as every real server does
            if isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):
                continue  # body data of a request we do not read, or its end
            response = Response(connection, Request.from_h11(event))
            await handler(response.request, response)
            if not response.finished or connection.h11.our_state is h11.MUST_CLOSE:
                return
            while connection.h11.their_state is h11.SEND_BODY:
                await connection.next_event()
            if connection.h11.their_state is not h11.DONE:
                return
            connection.h11.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        if connection.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await _bad_request(connection, exc)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the client went away mid-answer: normal for a player that stops listening


async def _bad_request(connection: _Connection, error: h11.RemoteProtocolError) -> None:
    body = f"bad request: {error}\n".encode()
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    await connection.send(h11.Response(status_code=error.error_status_hint, headers=headers))
    await connection.send(h11.Data(data=body))
    await connection.send(h11.EndOfMessage())
