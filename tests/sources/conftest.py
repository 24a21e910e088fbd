"""Fixtures: a 1 s tone made with the bundled ffmpeg, and a tiny media server on 127.0.0.1.

The server is minimal HTTP/1.1 on Trio sockets: GET and HEAD, one request per connection.
Routes are exact paths; anything else is a 404. `/stall...` accepts and never answers (until the
fixture ends and closes the connection). Tests use it only through the `media` fixture.
"""

from __future__ import annotations

import functools
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import imageio_ffmpeg
import pytest
import trio

MAX_HEAD = 16 * 1024


@attrs.frozen
class Route:
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()


@attrs.define
class MediaServer:
    routes: dict[str, Route] = attrs.Factory(dict)
    port: int = 0
    requests: list[str] = attrs.Factory(list)
    """Paths asked for, in order."""
    stalled: trio.Event = attrs.Factory(trio.Event)
    """Set when a client reached a `/stall` path."""

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def serve(
        self,
        path: str,
        body: bytes = b"",
        *,
        content_type: str = "text/html; charset=utf-8",
        status: int = 200,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> str:
        self.routes[path] = Route(body, content_type, status, headers)
        return self.url(path)

    def page(self, path: str, html: str) -> str:
        return self.serve(path, html.encode())

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            head = await _read_head(stream)
            if head is None:
                return
            method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            self.requests.append(path)
            if path.startswith("/stall"):
                self.stalled.set()
                await trio.sleep_forever()
            route = self.routes.get(path, Route(b"not found", "text/plain", 404))
            lines = [
                f"HTTP/1.1 {route.status} {'OK' if route.status == 200 else 'Nope'}",
                f"Content-Type: {route.content_type}",
                f"Content-Length: {len(route.body)}",
                "Connection: close",
                *(f"{name}: {value}" for name, value in route.headers),
            ]
            answer = ("\r\n".join(lines) + "\r\n\r\n").encode()
            await stream.send_all(answer + (b"" if method == "HEAD" else route.body))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away: nothing to answer
        finally:
            await stream.aclose()


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk or len(data) > MAX_HEAD:
            return None
        data += chunk
    return data


@pytest.fixture(scope="session")
def tone_mp3(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """One second of 440 Hz as MP3, made once per session with the bundled ffmpeg."""
    path = Path(tmp_path_factory.mktemp("media")) / "tone.mp3"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin",
         "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "libmp3lame",
         "-b:a", "64k", str(path)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return path.read_bytes()


@pytest.fixture
async def media(tone_mp3: bytes) -> AsyncIterator[MediaServer]:
    server = MediaServer()
    server.routes["/tone.mp3"] = Route(tone_mp3, "audio/mpeg")
    server.routes["/second.mp3"] = Route(tone_mp3, "audio/mpeg")
    server.routes["/one.html"] = Route(
        b"<html><head><title>One Song</title></head>"
        b'<body><audio src="/tone.mp3"></audio></body></html>'
    )
    server.routes["/two.html"] = Route(
        b"<html><head><title>Two Songs</title></head><body>"
        b'<audio src="/tone.mp3"></audio><audio src="/second.mp3"></audio></body></html>'
    )
    server.routes["/plain.html"] = Route(
        b"<html><head><title>Just words</title></head><body>no audio here</body></html>"
    )
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1")
        )
        server.port = listeners[0].socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
