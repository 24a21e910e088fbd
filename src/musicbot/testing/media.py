"""A loopback media server: generated tones over real HTTP, and links that fail on purpose.

    async with open_media_server() as media:
        url = media.tone_url(440, seconds=3, fmt="mp3")   # http://127.0.0.1:PORT/tone/440/3.mp3
        ...
        assert media.request_count(url) == 1

It binds 127.0.0.1 only, answers GET and HEAD with byte ranges and keep-alive (enough for ffmpeg
and yt-dlp), counts requests per path, and on leaving the context closes every connection and
listener: no task outlives it. Tones are made with the bundled ffmpeg (see
`musicbot.testing.tones` for their level) on first request, which then waits for it (20 ms for
3 s of mp3, 0.5 s for two minutes; `await media.tone_file(...)` makes one ahead of time), and
cached on disk: pass `cache_dir` to share the cache between servers, else a temporary directory
lives as long as the server. A tone's bytes are also kept in memory once served.

Routes (the URL helpers build them; tests should not need to spell them):
    /tone/F/S.EXT               a tone: F Hz, S seconds, EXT in mp3 opus ogg wav
    /page/F/S.EXT?title=T       an HTML page with one <audio src> pointing at that tone
    /stalled/F/S.EXT?after=N    headers, the tone's bytes below offset N, then nothing, ever
    /truncated/F/S.EXT?keep=K   Content-Length of the whole tone, a fraction K of it, a close
    /short/F/S.EXT?keep=K       a fraction K of the tone, served as a complete (short) file
    /paced/F/S.EXT?rate=R&burst=B  B seconds of the tone at once, then the rest at R times its
                                playing speed (ranges honoured), as streaming sites send: a
                                reader cannot get far ahead of it
    /hang/NAME                  reads the request, then never answers, until the client hangs up
    /not-audio/page.mp3         an HTML page (text/html)
    /not-audio/noise.mp3        random bytes served as audio/mpeg
    /redirect?to=URL            302 to URL
    anything else               404 Not Found
"""

from __future__ import annotations

import collections
import html
import random
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlencode, urlsplit

import attrs
import trio

from musicbot.testing._http import (
    RangeNotSatisfiable,
    Request,
    Response,
    byte_range,
    serve_connection,
)
from musicbot.testing.tones import TONE_FORMATS, Tone, ToneCache, ToneFormat

NOISE_BYTES = 64 * 1024
NOISE_SEED = 1234


@attrs.frozen
class MediaStatistics:
    requests: int
    """Requests answered (or being answered), all paths together."""
    connections: int
    """Connections accepted."""
    open_connections: int
    tones_generated: int


class MediaServer:
    """The running server: URL helpers and request counts. Made by `open_media_server()`."""

    def __init__(self, port: int, tones: ToneCache) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.base_url = f"http://{self.host}:{port}"
        self.tones = tones
        self._requests: collections.Counter[str] = collections.Counter()
        self._connections = 0
        self._open_connections = 0
        self._noise = random.Random(NOISE_SEED).randbytes(NOISE_BYTES)
        self._bodies: dict[Tone, bytes] = {}
        """Tone files read once (they are small), so answers after the first need no thread."""

    # --- URLs -------------------------------------------------------------------------------

    def tone_url(self, freq: int = 440, seconds: float = 3.0, fmt: ToneFormat = "mp3") -> str:
        return f"{self.base_url}/tone/{Tone(freq, seconds, fmt).name}"

    async def tone_file(
        self, freq: int = 440, seconds: float = 3.0, fmt: ToneFormat = "mp3"
    ) -> Path:
        """The tone as a local file (made now if needed), for sources that read files."""
        return await self.tones.path(Tone(freq, seconds, fmt))

    def page_url(
        self,
        freq: int = 440,
        seconds: float = 3.0,
        fmt: ToneFormat = "mp3",
        *,
        title: str | None = None,
    ) -> str:
        """An HTML page whose one `<audio src>` is the tone, as yt-dlp's generic extractor likes."""
        name = Tone(freq, seconds, fmt).name
        query = f"?{urlencode({'title': title})}" if title is not None else ""
        return f"{self.base_url}/page/{name}{query}"

    def playlist_url(self, *tones: tuple[int, float], title: str = "A loopback playlist") -> str:
        """An HTML page with one `<audio>` tag per (frequency, seconds): yt-dlp reads it as a
        playlist of those tones."""
        listed = ",".join(f"{freq}:{seconds:g}" for freq, seconds in tones)
        return f"{self.base_url}/playlist?{urlencode({'tones': listed, 'title': title})}"

    def not_found_url(self) -> str:
        return f"{self.base_url}/missing/track.mp3"

    def stalled_url(
        self, freq: int = 440, seconds: float = 3.0, fmt: ToneFormat = "mp3", *, after: int = 0
    ) -> str:
        """Headers promising the whole tone, the bytes below offset `after` (ranges honoured, so
        a client that reconnects gets no further), then nothing until the client hangs up or
        the server closes."""
        return f"{self.base_url}/stalled/{Tone(freq, seconds, fmt).name}?after={after}"

    def truncated_url(
        self,
        freq: int = 440,
        seconds: float = 3.0,
        fmt: ToneFormat = "mp3",
        *,
        keep: float = 0.5,
        declared: bool = True,
    ) -> str:
        """The first `keep` (a fraction) of the tone. `declared=True`: the headers promise the
        whole file and the connection closes early (every request, ranges included);
        `declared=False`: a short file, served whole and correctly."""
        if not 0 <= keep <= 1:
            raise ValueError(f"keep is a fraction of the file, got {keep}")
        route = "truncated" if declared else "short"
        return f"{self.base_url}/{route}/{Tone(freq, seconds, fmt).name}?keep={keep:g}"

    def paced_url(
        self,
        freq: int = 440,
        seconds: float = 3.0,
        fmt: ToneFormat = "mp3",
        *,
        rate: float = 1.5,
        burst: float = 1.0,
    ) -> str:
        """The tone as a streaming site sends it: `burst` seconds of it at once (from the offset
        a range asks for), then the rest at `rate` times the speed it plays at, so that ffmpeg
        stays about as far ahead of the player as the server lets it."""
        if not rate > 0 or not burst >= 0:
            raise ValueError(f"rate must be positive and burst not negative, got {rate}, {burst}")
        query = urlencode({"rate": f"{rate:g}", "burst": f"{burst:g}"})
        return f"{self.base_url}/paced/{Tone(freq, seconds, fmt).name}?{query}"

    def hung_url(self, name: str = "page") -> str:
        """A link whose server reads the request and never answers (no status line, ever):
        what a client sees of a site that hangs. The connection stays open until the client
        gives up or the server closes."""
        return f"{self.base_url}/hang/{quote(name)}"

    def not_audio_url(self, kind: Literal["page", "noise"] = "page") -> str:
        """`page`: an HTML page (text/html); `noise`: random bytes served as audio/mpeg."""
        return f"{self.base_url}/not-audio/{kind}.mp3"

    def redirect_url(self, location: str) -> str:
        """Answers 302 Found with `Location: location` (any scheme, file: included)."""
        return f"{self.base_url}/redirect?{urlencode({'to': location})}"

    # --- counts -----------------------------------------------------------------------------

    def request_count(self, url_or_path: str) -> int:
        """Requests for one path (a full URL's query is ignored), HEAD and GET alike."""
        path = urlsplit(url_or_path).path if "://" in url_or_path else url_or_path
        return self._requests[path]

    def statistics(self) -> MediaStatistics:
        return MediaStatistics(
            requests=self._requests.total(),
            connections=self._connections,
            open_connections=self._open_connections,
            tones_generated=self.tones.generated,
        )

    # --- serving ----------------------------------------------------------------------------

    async def serve(self, stream: trio.SocketStream) -> None:
        self._connections += 1
        self._open_connections += 1
        try:
            await serve_connection(stream, self._answer)
        finally:
            self._open_connections -= 1

    async def _answer(self, request: Request, response: Response) -> None:
        self._requests[request.path] += 1
        if request.method not in ("GET", "HEAD"):
            await _plain(response, 405, "only GET and HEAD here\n", [("Allow", "GET, HEAD")])
            return
        route, _, rest = request.path.lstrip("/").partition("/")
        if route == "playlist":
            await self._playlist(request, response)
            return
        if route == "hang":
            await response.wait_client_gone()
            return
        if route == "redirect" and "to" in request.query:
            # A header is ASCII: a target in any script goes percent-encoded, as servers send it.
            location = quote(request.query["to"], safe=":/?#[]@!$&'()*+,;=%")
            await _plain(response, 302, "moved\n", [("Location", location)])
            return
        if route == "not-audio" and rest in ("page.mp3", "noise.mp3"):
            if rest == "page.mp3":
                await response.send_body(
                    _page("Not a song", "<p>Just a web page.</p>"), "text/html"
                )
            else:
                await response.send_body(self._noise, "audio/mpeg")
            return
        tone = _parse_tone(rest) if route in _TONE_ROUTES else None
        if tone is None:
            await _plain(response, 404, f"nothing at {request.path}\n")
            return
        if route == "page":
            title = request.query.get("title", f"Tone {tone.frequency} Hz")
            src = html.escape(f"{self.base_url}/tone/{quote(tone.name)}")
            audio = f'<audio controls src="{src}" type="{tone.content_type}"></audio>'
            await response.send_body(_page(title, audio), "text/html")
            return
        body = self._bodies.get(tone)
        if body is None:
            body = self._bodies[tone] = await self.tones.read(tone)
        if route == "tone":
            await response.send_body(body, tone.content_type)
        elif route == "short":
            keep = _fraction(request.query.get("keep"), len(body))
            await response.send_body(body[:keep], tone.content_type)
        elif route == "truncated":
            keep = _fraction(request.query.get("keep"), len(body))
            await _send_cut(response, body, keep, tone.content_type)
        elif route == "paced":
            per_second = len(body) / tone.seconds
            speed = float(request.query.get("rate", "1")) * per_second
            burst = round(float(request.query.get("burst", "0")) * per_second)
            await _send_paced(response, body, speed, burst, tone.content_type)
        else:  # stalled
            after = int(request.query.get("after", "0"))
            await _send_cut(response, body, after, tone.content_type, stall=True)

    async def _playlist(self, request: Request, response: Response) -> None:
        tags = []
        for item in request.query.get("tones", "").split(","):
            tone = _parse_tone(item.replace(":", "/") + ".mp3")
            if tone is None:
                await _plain(response, 404, f"not a tone: {item!r}\n")
                return
            src = html.escape(f"{self.base_url}/tone/{quote(tone.name)}")
            tags.append(f'<audio controls src="{src}" type="{tone.content_type}"></audio>')
        title = request.query.get("title", "A loopback playlist")
        await response.send_body(_page(title, "\n".join(tags)), "text/html")


_TONE_ROUTES = frozenset({"tone", "page", "stalled", "truncated", "short", "paced"})

PACED_CHUNK_SECONDS = 0.05
"""A paced answer goes out in pieces this far apart."""


def _parse_tone(name: str) -> Tone | None:
    """`440/3.mp3` -> Tone(440, 3.0, "mp3"); None when it is not a valid tone name."""
    frequency, _, file = name.partition("/")
    seconds, _, fmt = file.rpartition(".")
    if fmt not in TONE_FORMATS:
        return None
    try:
        return Tone(int(frequency), float(seconds), fmt)  # type: ignore[arg-type]
    except ValueError:
        return None


def _fraction(value: str | None, size: int) -> int:
    return int(size * float(value if value is not None else 0.5))


async def _send_cut(
    response: Response, body: bytes, keep: int, content_type: str, *, stall: bool = False
) -> None:
    """Promise all of `body` (or of the range asked) and send only what lies below byte `keep`.
    Then return unfinished, so the connection closes (a server that drops mid-file, every time),
    or with `stall`, send nothing more until the client hangs up (a server that hangs)."""
    size = len(body)
    wanted = byte_range(response.request.headers.get("range"), size) or (0, size)
    start, stop = wanted
    headers = [("Content-Type", content_type), ("Accept-Ranges", "bytes")]
    if wanted == (0, size):
        await response.start(200, [*headers, ("Content-Length", str(size))])
    else:
        content_range = f"bytes {start}-{stop - 1}/{size}"
        length = ("Content-Length", str(stop - start))
        await response.start(206, [*headers, ("Content-Range", content_range), length])
    await response.send(body[start : max(start, min(stop, keep))])
    if stall:
        await response.wait_client_gone()


async def _send_paced(
    response: Response, body: bytes, bytes_per_second: float, burst: int, content_type: str
) -> None:
    """All of `body` (or of the range asked): `burst` bytes at once, then the rest at
    `bytes_per_second`, in small pieces."""
    size = len(body)
    try:
        wanted = byte_range(response.request.headers.get("range"), size)
    except RangeNotSatisfiable:
        await _plain(
            response, 416, "range not satisfiable\n", [("Content-Range", f"bytes */{size}")]
        )
        return
    start, stop = wanted or (0, size)
    headers = [("Content-Type", content_type), ("Accept-Ranges", "bytes")]
    length = ("Content-Length", str(stop - start))
    if wanted is None:
        await response.start(200, [*headers, length])
    else:
        await response.start(
            206, [*headers, ("Content-Range", f"bytes {start}-{stop - 1}/{size}"), length]
        )
    if response.request.method == "HEAD":
        await response.finish()
        return
    first = min(start + burst, stop)
    await response.send(body[start:first])
    chunk = max(1, round(bytes_per_second * PACED_CHUNK_SECONDS))
    began = trio.current_time()
    for offset in range(first, stop, chunk):
        await trio.sleep_until(began + (offset - first) / bytes_per_second)
        await response.send(body[offset : min(offset + chunk, stop)])
    await response.finish()


async def _plain(
    response: Response, status: int, text: str, headers: list[tuple[str, str]] | None = None
) -> None:
    await response.send_body(
        text.encode(),
        "text/plain; charset=utf-8",
        status=status,
        headers=headers or (),
        ranges=False,
    )


def _page(title: str, body: str) -> bytes:
    title = html.escape(title)
    return (
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{title}</title></head>\n"
        f"<body><h1>{title}</h1>\n{body}\n</body></html>\n"
    ).encode()


@asynccontextmanager
async def open_media_server(
    *, cache_dir: Path | None = None, ffmpeg: str | None = None
) -> AsyncIterator[MediaServer]:
    """Run the media server on 127.0.0.1 (a free port) for the duration of the context."""
    with tempfile.TemporaryDirectory(prefix="musicbot-media-") as scratch:
        tones = ToneCache(cache_dir if cache_dir is not None else Path(scratch), ffmpeg=ffmpeg)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        media = MediaServer(port, tones)
        async with trio.open_nursery() as server:
            await server.start(trio.serve_listeners, media.serve, listeners)
            try:
                yield media
            finally:
                server.cancel_scope.cancel()


def unreachable_url(path: str = "/track.mp3") -> str:
    """An http URL on a loopback port nobody listens on (bound, then closed, just now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
