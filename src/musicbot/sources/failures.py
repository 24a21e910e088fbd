"""yt-dlp's failures in plain words: every exception it raises becomes one short sentence.

yt-dlp reports nearly everything as a DownloadError whose `exc_info` holds the real cause (an
ExtractorError, an HTTPError, a TransportError...). `explain()` walks that chain and picks the
most telling cause. Nothing of a traceback, a command-line hint or a bug-report URL reaches the
user.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from yt_dlp.networking.exceptions import CertificateVerifyError, HTTPError, SSLError, TransportError
from yt_dlp.utils import ExtractorError, GeoRestrictedError, UnsupportedError

from musicbot.core.ports import ResolveError

GENERIC = "I could not get anything playable from that; the site may be down or may have changed"
UNREADABLE = "I could not read that site's page; the bot's yt-dlp may need an update"
UNSUPPORTED = (
    "I cannot play anything from that link: the site is not supported, or I found no audio"
)
GEO = "that is not available in the country the bot runs in"
MAX_MESSAGE = 200

_ADVICE = re.compile(r"--|yt-dlp|https?://|report this|\bcookies\b", re.IGNORECASE)


def explain(exc: BaseException, *, where: str = "that site") -> str:
    """A sentence for the user about why yt-dlp failed. `where` names the site, e.g. its host."""
    chain = list(causes(exc))
    for cause in chain:
        if isinstance(cause, ResolveError):
            return str(cause)  # the UrlPolicy refused a request yt-dlp wanted to make
    for cause in chain:
        if isinstance(cause, GeoRestrictedError):
            return GEO
        if isinstance(cause, UnsupportedError):
            return UNSUPPORTED
        status = _http_status(cause)
        if status is not None:
            return http_message(status, where)
        if isinstance(cause, CertificateVerifyError | SSLError):
            return f"I could not make a secure connection to {where}"
        if isinstance(cause, TimeoutError):
            return f"{where} took too long to answer"
        if isinstance(cause, TransportError):
            if "timed out" in str(cause).lower():
                return f"{where} took too long to answer"
            return f"I could not reach {where}"
    for cause in chain:
        if isinstance(cause, ExtractorError):
            if cause.expected:
                return _plain(cause.orig_msg) or GENERIC
            return UNREADABLE
    return _from_text(str(exc), where)


def http_message(status: int, where: str) -> str:
    if status in (404, 410):
        return f"there is nothing at that link (HTTP {status}: not found)"
    if status in (401, 403):
        return f"{where} refused to let me in (HTTP {status})"
    if status == 429:
        return f"{where} is limiting how often I may ask; try again later (HTTP 429)"
    if status >= 500:
        return f"{where} is having trouble (HTTP {status}); try again later"
    return f"{where} answered with an error (HTTP {status})"


def causes(exc: BaseException) -> Iterator[BaseException]:
    """exc, then what it wraps: yt-dlp's `exc_info` and `cause`, and Python's own chain."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        exc_info = getattr(current, "exc_info", None)
        wrapped = exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) == 3 else None
        for linked in (wrapped, getattr(current, "cause", None), current.__cause__,
                       current.__context__):  # fmt: skip
            if isinstance(linked, BaseException):
                todo.append(linked)


def _http_status(exc: BaseException) -> int | None:
    if isinstance(exc, HTTPError):
        return int(exc.status)
    code = getattr(exc, "code", None)  # urllib's own HTTPError, should one slip through
    if isinstance(exc, OSError) and isinstance(code, int) and 400 <= code <= 599:
        return code
    return None


def _from_text(text: str, where: str) -> str:
    """Last resort: the words of yt-dlp's message (its DownloadError may carry nothing else)."""
    if match := re.search(r"HTTP Error (\d{3})", text):
        return http_message(int(match[1]), where)
    if "Unsupported URL" in text:
        return UNSUPPORTED
    if "Requested format is not available" in text:
        return "I found no audio format I can play there"
    return GENERIC


def _plain(message: object) -> str:
    """yt-dlp's own explanation, without its command-line advice, cut to one short line."""
    if not isinstance(message, str):
        return ""
    first_line = message.strip().splitlines()[0] if message.strip() else ""
    first_line = re.sub(r"^(ERROR:\s*)?(\[[\w:]+\]\s*)?([\w-]+:\s)?", "", first_line)
    sentences = re.split(r"(?<=[.!?])\s+", first_line)
    kept = " ".join(s for s in sentences if s and not _ADVICE.search(s)).strip()
    if len(kept) > MAX_MESSAGE:
        kept = kept[: MAX_MESSAGE - 1].rstrip() + "…"
    return kept
