from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

import attrs
import h11
import pytest
import trio
import trio.testing

from musicbot.testing._http import RangeNotSatisfiable, byte_range
from musicbot.testing.media import MediaServer, open_media_server, unreachable_url

# --- a small HTTP client that tells a complete body from a cut one ---------------------------


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool
    """False when the connection closed before the body Content-Length promised."""


class Client:
    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.http = h11.Connection(h11.CLIENT)

    async def next_event(self) -> h11.Event:
        while True:
            event = self.http.next_event()
            if isinstance(event, h11.Event):
                return event
            self.http.receive_data(await self.stream.receive_some(65536))

    async def ask(
        self, target: str, method: str = "GET", headers: tuple[tuple[str, str], ...] = ()
    ) -> Answer:
        if self.http.our_state is h11.DONE:
            self.http.start_next_cycle()
        request = h11.Request(method=method, target=target, headers=[("Host", self.host), *headers])
        await self.stream.send_all(self.http.send(request) + self.http.send(h11.EndOfMessage()))
        response = await self.next_event()
        assert isinstance(response, h11.Response)
        received = {k.decode().lower(): v.decode() for k, v in response.headers}
        body = bytearray()
        try:
            while not isinstance(event := await self.next_event(), h11.EndOfMessage):
                assert isinstance(event, h11.Data)
                body += event.data
        except h11.RemoteProtocolError:
            return Answer(response.status_code, received, bytes(body), complete=False)
        return Answer(response.status_code, received, bytes(body), complete=True)


async def connect(url: str) -> Client:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return Client(await trio.open_tcp_stream(parts.hostname, parts.port), parts.netloc)


def target(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def fetch(url: str, method: str = "GET", **headers: str) -> Answer:
    client = await connect(url)
    async with client.stream:
        return await client.ask(target(url), method, tuple(headers.items()))


# --- tones ------------------------------------------------------------------------------------


async def test_a_tone_is_served_whole(media: MediaServer) -> None:
    url = media.tone_url(440, 1, "mp3")
    assert url == f"http://127.0.0.1:{media.port}/tone/440/1.mp3"
    answer = await fetch(url)
    file = (await media.tone_file(440, 1, "mp3")).read_bytes()
    assert answer.status == 200 and answer.complete
    assert answer.body == file and file[:3] in (b"ID3", b"\xff\xfb")
    assert answer.headers["content-type"] == "audio/mpeg"
    assert answer.headers["content-length"] == str(len(file))
    assert answer.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize(
    ("fmt", "content_type", "magic"),
    [("opus", "audio/ogg", b"OggS"), ("ogg", "audio/ogg", b"OggS"), ("wav", "audio/wav", b"RIFF")],
)
async def test_every_format_is_served(
    media: MediaServer, fmt: str, content_type: str, magic: bytes
) -> None:
    answer = await fetch(media.tone_url(440, 0.5, fmt))  # type: ignore[arg-type]
    assert answer.status == 200
    assert answer.headers["content-type"] == content_type
    assert answer.body.startswith(magic)


async def test_head_has_the_headers_and_no_body(media: MediaServer) -> None:
    url = media.tone_url(440, 1, "mp3")
    size = (await media.tone_file(440, 1, "mp3")).stat().st_size
    answer = await fetch(url, "HEAD")
    assert answer.status == 200 and answer.body == b""
    assert answer.headers["content-length"] == str(size)


@pytest.mark.parametrize(
    ("header", "piece"),
    [("bytes=100-199", slice(100, 200)), ("bytes=-50", slice(-50, None)),
     ("bytes=1000-", slice(1000, None)), ("bytes=0-99999999", slice(0, None))],
)  # fmt: skip
async def test_ranges_are_honoured(media: MediaServer, header: str, piece: slice) -> None:
    file = (await media.tone_file(440, 1, "mp3")).read_bytes()
    answer = await fetch(media.tone_url(440, 1, "mp3"), Range=header)
    start, stop, _ = piece.indices(len(file))
    assert answer.status == 206
    assert answer.body == file[piece]
    assert answer.headers["content-range"] == f"bytes {start}-{stop - 1}/{len(file)}"


async def test_a_range_past_the_end_is_416(media: MediaServer) -> None:
    size = (await media.tone_file(440, 1, "mp3")).stat().st_size
    answer = await fetch(media.tone_url(440, 1, "mp3"), Range=f"bytes={size}-")
    assert answer.status == 416
    assert answer.headers["content-range"] == f"bytes */{size}"


@pytest.mark.parametrize(
    ("header", "wanted"),
    [(None, None), ("bytes=0-0", (0, 1)), ("bytes=5-", (5, 10)), ("bytes=-3", (7, 10)),
     ("bytes=-30", (0, 10)), ("bytes=2-4,6-8", None), ("items=1-2", None), ("bytes=-", None)],
)  # fmt: skip
def test_byte_range(header: str | None, wanted: tuple[int, int] | None) -> None:
    assert byte_range(header, 10) == wanted


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=-0", "bytes=5-3"])
def test_byte_range_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        byte_range(header, 10)


async def test_a_connection_is_kept_alive_between_requests(media: MediaServer) -> None:
    url = media.tone_url(440, 1, "mp3")
    client = await connect(url)
    async with client.stream:
        first = await client.ask(target(url))
        second = await client.ask(target(url), headers=(("Range", "bytes=0-9"),))
    assert (first.status, second.status) == (200, 206)
    assert second.body == first.body[:10]
    assert media.statistics().connections == 1


async def test_requests_are_counted_and_tones_made_once(media_cache: Path, tmp_path: Path) -> None:
    async with open_media_server(cache_dir=tmp_path) as media:
        url = media.tone_url(523, 1, "mp3")
        assert media.request_count(url) == 0
        await fetch(url)
        await fetch(url, "HEAD")
        await fetch(url, Range="bytes=0-1")
        await fetch(media.not_found_url())
        assert media.request_count(url) == 3
        assert media.request_count(urlsplit(url).path) == 3
        assert media.request_count(media.not_found_url()) == 1
        assert media.statistics().requests == 4
        assert media.statistics().tones_generated == 1
    async with open_media_server(cache_dir=tmp_path) as again:
        await fetch(again.tone_url(523, 1, "mp3"))
        assert again.statistics().tones_generated == 0  # found on disk


# --- links that fail on purpose ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/missing/track.mp3", "/tone/5/1.mp3", "/tone/440/1.flac", "/"])
async def test_unknown_paths_are_404(media: MediaServer, path: str) -> None:
    answer = await fetch(media.base_url + path)
    assert answer.status == 404
    assert media.not_found_url().startswith(media.base_url)
    assert (await fetch(media.not_found_url())).status == 404


async def test_only_get_and_head(media: MediaServer) -> None:
    answer = await fetch(media.tone_url(), "POST")
    assert answer.status == 405
    assert answer.headers["allow"] == "GET, HEAD"


async def test_a_malformed_request_gets_400(media: MediaServer) -> None:
    stream = await trio.open_tcp_stream(media.host, media.port)
    async with stream:
        await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
        reply = await stream.receive_some(1000)
    assert reply.startswith(b"HTTP/1.1 400 ")


async def test_a_page_embeds_the_tone(media: MediaServer) -> None:
    answer = await fetch(media.page_url(440, 2, "mp3", title="Concert A & friends"))
    assert answer.headers["content-type"] == "text/html"
    page = answer.body.decode()
    assert f'<audio controls src="{media.tone_url(440, 2, "mp3")}"' in page
    assert "<title>Concert A &amp; friends</title>" in page


async def test_yt_dlp_finds_the_tone_in_the_page(media: MediaServer) -> None:
    yt_dlp = pytest.importorskip("yt_dlp")
    options = {"quiet": True, "no_warnings": True, "logger": logging.getLogger("yt-dlp-test")}

    def extract() -> dict[str, object]:
        with yt_dlp.YoutubeDL(options) as ydl:
            info: dict[str, object] = ydl.extract_info(media.page_url(440, 2), download=False)
            return info

    info = await trio.to_thread.run_sync(extract)
    entries = info.get("entries")
    track = entries[0] if isinstance(entries, list) else info
    assert isinstance(track, dict)
    assert track["url"] == media.tone_url(440, 2, "mp3")


async def test_a_stalled_link_sends_some_bytes_then_nothing(
    media: MediaServer, autojump_clock: trio.testing.MockClock
) -> None:
    file = (await fetch(media.tone_url(440, 3, "mp3"))).body  # read now: no thread runs later
    url = media.stalled_url(440, 3, after=1000)
    client = await connect(url)
    async with client.stream:
        await client.stream.send_all(
            f"GET {target(url)} HTTP/1.1\r\nHost: {client.host}\r\n\r\n".encode()
        )
        received = b""
        with trio.move_on_after(3600) as waited:
            while chunk := await client.stream.receive_some(65536):
                received += chunk
        assert waited.cancelled_caught  # an hour, and the connection is still open
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert f"content-length: {len(file)}".encode() in head.lower()
        assert body == file[:1000]
        assert media.statistics().open_connections == 1
    await trio.testing.wait_all_tasks_blocked()
    assert media.statistics().open_connections == 0  # let go when the client hung up


async def test_a_truncated_link_promises_more_than_it_sends(media: MediaServer) -> None:
    file = (await media.tone_file(440, 2, "mp3")).read_bytes()
    url = media.truncated_url(440, 2, keep=0.25)
    answer = await fetch(url)
    assert answer.headers["content-length"] == str(len(file))
    assert answer.body == file[: len(file) // 4]
    assert not answer.complete
    # A client that resumes past the cut gets headers and a closed connection, every time.
    resumed = await fetch(url, Range=f"bytes={len(file) // 2}-")
    assert resumed.status == 206 and resumed.body == b"" and not resumed.complete


async def test_a_short_file_is_served_complete(media: MediaServer) -> None:
    file = (await media.tone_file(440, 2, "mp3")).read_bytes()
    answer = await fetch(media.truncated_url(440, 2, keep=0.25, declared=False))
    assert answer.complete and answer.body == file[: len(file) // 4]


async def test_not_audio(media: MediaServer) -> None:
    page = await fetch(media.not_audio_url("page"))
    assert page.headers["content-type"] == "text/html"
    assert page.body.startswith(b"<!doctype html>")
    noise = await fetch(media.not_audio_url("noise"))
    assert noise.headers["content-type"] == "audio/mpeg"
    assert len(noise.body) == 64 * 1024
    assert noise.body == (await fetch(media.not_audio_url("noise"))).body  # the same noise


async def test_redirects_go_anywhere(media: MediaServer) -> None:
    answer = await fetch(media.redirect_url("file:///etc/hostname"))
    assert answer.status == 302
    assert answer.headers["location"] == "file:///etc/hostname"


async def test_bad_helper_arguments_are_refused(media: MediaServer) -> None:
    with pytest.raises(ValueError, match="fraction"):
        media.truncated_url(keep=2)
    with pytest.raises(ValueError, match="format"):
        media.tone_url(fmt="flac")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="frequency"):
        media.tone_url(freq=5)


# --- lifetime ---------------------------------------------------------------------------------


async def assert_refused(port: int) -> None:
    with trio.socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        await probe.connect(("127.0.0.1", port))


async def test_closing_the_server_closes_everything(media_cache: Path) -> None:
    with trio.fail_after(10):
        async with open_media_server(cache_dir=media_cache) as media:
            assert media.host == "127.0.0.1"
            lingering = await trio.open_tcp_stream(media.host, media.port)
            await lingering.send_all(b"GET /tone/440/1.mp3 HTTP/1.1\r\nHost: x\r\n\r\n")
            await lingering.receive_some(10)
            port = media.port
        # The listener is gone, and the open connection was closed by the server.
        await assert_refused(port)
        async with lingering:
            while await lingering.receive_some(65536):
                pass


async def test_an_unreachable_url_refuses_connections() -> None:
    url = unreachable_url()
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    await assert_refused(parts.port or 0)
