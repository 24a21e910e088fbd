"""explain() on stderr that ffmpeg 9.0.2 really printed (`-loglevel level+warning`)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from musicbot.audio.diagnosis import StderrTail, explain

SEEN = {
    "404": """\
[http @ 0x55f398e78300] [warning] HTTP error 404 Not Found
[in#0 @ 0x55f398e772c0] [error] Error opening input: Server returned 404 Not Found
[error] Error opening input file http://127.0.0.1:37043/missing/x.mp3.
[fatal] Error opening input files: Server returned 404 Not Found""",
    "416": """\
[http @ 0x562f6166f300] [warning] HTTP error 416 Requested Range Not Satisfiable
[in#0 @ 0x562f6166e2c0] [error] Error opening input: Server returned 4XX Client Error, but \
not one of 40{0,1,3,4}""",
    "5xx": "[in#0 @ 0x1] [error] Error opening input: Server returned 5XX Server Error reply",
    "refused": """\
[tcp @ 0x563c01f44c40] [error] Connection to tcp://127.0.0.1:1 failed: Connection refused
[in#0 @ 0x563c01f41100] [error] Error opening input: Connection refused""",
    "no dns": """\
[tcp @ 0x55b078372c40] [error] Failed to resolve hostname nonexistent.invalid: Name or service \
not known
[in#0 @ 0x55b07836f100] [error] Error opening input: Input/output error""",
    "stalled": """\
[http @ 0x557ab3939300] [warning] Will reconnect at 0 in 0 second(s), error=Connection timed out.
[in#0 @ 0x557ab39382c0] [error] Error opening input: Input/output error""",
    "html": """\
[in#0 @ 0x55ce9a5c7600] [warning] Format mp3 detected only with low score of 1, misdetection \
possible!
[in#0 @ 0x55ce9a5c7600] [error] Failed to find two consecutive MPEG audio frames.
[in#0 @ 0x55ce9a5c72c0] [error] Error opening input: Invalid data found when processing input""",
    "whitelist": """\
[http @ 0x56256770b300] [error] Protocol 'file' not on whitelist 'http,https,tcp,tls,crypto'!
[in#0 @ 0x56256770a2c0] [error] Error opening input: Invalid argument""",
    "empty opus": "[in#0 @ 0x5604557392c0] [error] Error opening input: End of file",
    "no file": "[in#0 @ 0x1] [error] Error opening input: No such file or directory",
    "video only": "[fatal] Stream map '0:a:0' matches no streams.",
}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("404", "the server answered 404 Not Found: the link is wrong or the file is gone"),
        ("416", "the server answered 416 Requested Range Not Satisfiable: the file is empty"),
        ("5xx", "the server answered with an error (5xx): it is having trouble, try again later"),
        ("refused", "could not reach the host: it refused the connection"),
        ("no dns", "could not find the host: its name does not resolve"),
        ("stalled", "the server stopped sending audio"),
        ("html", "that link is not an audio file"),
        ("whitelist", "that link leads somewhere I am not allowed to read from"),
        ("empty opus", "that audio file is empty or cut off before any sound"),
        ("no file", "the stored audio file is missing"),
        ("video only", "that link has no audio in it"),
    ],
)
def test_ffmpeg_complaints_become_plain_words(case: str, message: str) -> None:
    assert explain(SEEN[case]) == message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("HTTP error 403 Forbidden", "the server answered 403 Forbidden: it refused access; the "
         "link may have expired"),
        ("HTTP error 429 Too Many Requests", "the server answered 429 Too Many Requests: too many "
         "requests, try again later"),
        ("HTTP error 503 Service Unavailable", "the server answered 503 Service Unavailable: it "
         "is having trouble, try again later"),
        ("HTTP error 418 I'm a teapot", "the server answered 418 I'm a teapot"),
    ],
)  # fmt: skip
def test_http_statuses(line: str, message: str) -> None:
    assert explain(f"[http @ 0x1] [warning] {line}") == message


def test_something_unknown_still_gets_a_sentence() -> None:
    assert explain("[error] something nobody foresaw") == "the audio could not be read"
    assert explain("") == "the audio could not be read"


async def test_the_tail_keeps_only_the_last_bytes_and_whole_lines() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    tail = StderrTail(limit=100)
    async with trio.open_nursery() as readers:
        readers.start_soon(tail.drain, receive)
        for k in range(50):
            await send.send_all(f"[warning] line {k}\n".encode())
        await send.send_all(b"[error] Error opening input: Connection refused\n")
        await send.aclose()
        await tail.closed.wait()
    assert tail.total > 100
    assert tail.text.startswith("...[warning] line ")  # a cut line is dropped, not half shown
    assert tail.text.endswith("Connection refused")
    assert tail.errors() == ["[error] Error opening input: Connection refused"]
