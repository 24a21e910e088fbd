"""What ffmpeg's complaints mean, in words for the Discord user who asked for the track.

ffmpeg runs with `-loglevel level+warning`, so each line it prints carries its level in brackets
(`[error] Error opening input: Server returned 404 Not Found`). `StderrTail` keeps the last few
KiB of them; `explain()` turns them into one plain sentence.
"""

from __future__ import annotations

import re

import trio

TAIL_BYTES = 8 * 1024


class StderrTail:
    """The last `limit` bytes a child process wrote to stderr, kept while it runs."""

    def __init__(self, limit: int = TAIL_BYTES) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self.total = 0
        """Bytes seen, including those no longer kept."""
        self.closed = trio.Event()

    async def drain(self, stream: trio.abc.ReceiveStream) -> None:
        """Read `stream` to its end (run it in a nursery for as long as the process lives)."""
        while data := await stream.receive_some(TAIL_BYTES):
            self.total += len(data)
            self._buffer += data
            if len(self._buffer) > self._limit:
                del self._buffer[: len(self._buffer) - self._limit]
        self.closed.set()

    @property
    def text(self) -> str:
        text = self._buffer.decode("utf-8", errors="replace")
        if self.total > len(self._buffer):
            text = "..." + text.partition("\n")[2]  # drop the partial first line
        return text.strip()

    def errors(self) -> list[str]:
        """The lines ffmpeg logged at level error or fatal."""
        return [line for line in self.text.splitlines() if "[error]" in line or "[fatal]" in line]


_HTTP_STATUS = re.compile(r"HTTP error (\d{3}) ?([^\n]*)|Server returned (\d)(\d\d|XX) ?([^\n]*)")

_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), message)
    for pattern, message in (
        (r"not on whitelist", "that link leads somewhere I am not allowed to read from"),
        (r"Connection refused", "could not reach the host: it refused the connection"),
        (
            r"Failed to resolve hostname|Name or service not known",
            "could not find the host: its name does not resolve",
        ),
        (r"Network is unreachable|No route to host", "could not reach the host: no route to it"),
        (r"timed out", "the server stopped sending audio"),
        (r"Connection reset by peer|Broken pipe", "the server dropped the connection"),
        (
            r"certificate|\[tls @|SSL routines|handshake",
            "could not make a secure connection to the server",
        ),
        (r"No such file or directory", "the stored audio file is missing"),
        (r"Permission denied", "the audio file could not be opened (permission denied)"),
        (
            r"matches no streams|does not contain any stream|Output file does not contain",
            "that link has no audio in it",
        ),
        (
            r"Invalid data found|Failed to find two consecutive|could not find codec parameters"
            r"|Unknown input format|misdetection possible",
            "that link is not an audio file",
        ),
        (r"End of file", "that audio file is empty or cut off before any sound"),
    )
)

_STATUS_MEANING = {
    400: "it did not understand the request",
    401: "it wants a login",
    403: "it refused access; the link may have expired",
    404: "the link is wrong or the file is gone",
    410: "the file is gone",
    416: "the file is empty",
    429: "too many requests, try again later",
}


def explain(stderr: str) -> str:
    """One sentence for a user about why ffmpeg could not read a track, from its stderr."""
    status = _HTTP_STATUS.search(stderr)
    if status is not None:
        return _explain_status(status)
    for pattern, message in _RULES:
        if pattern.search(stderr):
            return message
    return "the audio could not be read"


def _explain_status(match: re.Match[str]) -> str:
    if match.group(1) is not None:
        code, reason = int(match.group(1)), match.group(2).strip()
        status = f"{code} {reason}".strip()
    else:
        # "Server returned 404 Not Found", or a class: "Server returned 5XX Server Error reply".
        first, rest, reason = match.group(3), match.group(4), match.group(5).strip()
        if rest == "XX":
            return f"the server answered with an error ({first}xx)" + (
                ": it is having trouble, try again later" if first == "5" else ""
            )
        code = int(first + rest)
        status = f"{code} {reason}".strip()
    if code >= 500:
        return f"the server answered {status}: it is having trouble, try again later"
    meaning = _STATUS_MEANING.get(code)
    return f"the server answered {status}" + (f": {meaning}" if meaning else "")
