"""explain(): every yt-dlp failure as one plain sentence; info: reading yt-dlp's dicts."""

from __future__ import annotations

import io
from typing import Any

import pytest
from yt_dlp.networking import Response
from yt_dlp.networking.exceptions import CertificateVerifyError, HTTPError, TransportError
from yt_dlp.utils import (
    DownloadError,
    ExtractorError,
    GeoRestrictedError,
    RegexNotFoundError,
    UnsupportedError,
)

from musicbot.core.ports import ResolveError
from musicbot.sources.failures import GENERIC, GEO, UNREADABLE, UNSUPPORTED, explain
from musicbot.sources.info import Candidate, Pending, clock, read_listing, refusal


def wrapped(cause: BaseException) -> DownloadError:
    """What yt-dlp raises: a DownloadError carrying the cause in exc_info."""
    try:
        raise cause
    except BaseException as exc:
        return DownloadError(f"ERROR: {exc}", (type(exc), exc, exc.__traceback__))


def http_error(status: int) -> HTTPError:
    response = Response(io.BytesIO(b""), "http://1.1.1.1/x", {}, status=status, reason="x")
    error = HTTPError(response)
    response.close()
    return error


@pytest.mark.parametrize(
    ("cause", "message"),
    [
        (http_error(404), "there is nothing at that link (HTTP 404: not found)"),
        (http_error(403), "site.example refused to let me in (HTTP 403)"),
        (http_error(500), "site.example is having trouble (HTTP 500); try again later"),
        (http_error(418), "site.example answered with an error (HTTP 418)"),
        (TransportError(cause=ConnectionRefusedError(111, "Connection refused")),
         "I could not reach site.example"),
        (TransportError("The read operation timed out"), "site.example took too long to answer"),
        (TransportError(cause=TimeoutError("timed out")), "site.example took too long to answer"),
        (CertificateVerifyError("certificate verify failed"),
         "I could not make a secure connection to site.example"),
        (GeoRestrictedError("The uploader has not made this video available in your country",
                            countries=["DE"]), GEO),
        (UnsupportedError("http://1.1.1.1/page"), UNSUPPORTED),
        (ExtractorError("Private video. Sign in if you've been granted access to this video. "
                        "Use --cookies-from-browser or --cookies for the authentication. "
                        "See  https://github.com/yt-dlp/yt-dlp/wiki/FAQ  for how to pass cookies",
                        expected=True),
         "Private video. Sign in if you've been granted access to this video."),
        (ExtractorError("Video unavailable", expected=True, video_id="abc", ie="youtube"),
         "Video unavailable"),
        (RegexNotFoundError("Unable to extract title; please report this issue on "
                            "https://github.com/yt-dlp/yt-dlp/issues"), UNREADABLE),
        (ExtractorError("Use --cookies for the authentication", expected=True), GENERIC),
        (ResolveError("that link points somewhere"), "that link points somewhere"),
    ],
)  # fmt: skip
def test_yt_dlp_failures_in_plain_words(cause: BaseException, message: str) -> None:
    assert explain(wrapped(cause), where="site.example") == message


def test_a_cause_deep_in_the_chain_is_found() -> None:
    extractor_error = ExtractorError(
        "Unable to download webpage: HTTP Error 410: Gone", cause=http_error(410), expected=True
    )
    assert explain(wrapped(extractor_error)) == (
        "there is nothing at that link (HTTP 410: not found)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ERROR: [generic] x: Unable to download webpage: HTTP Error 404: Not Found", "HTTP 404"),
        ("ERROR: Unsupported URL: http://1.1.1.1/", UNSUPPORTED),
        ("ERROR: [youtube] x: Requested format is not available", "no audio format"),
        ("ERROR: something nobody expected\nTraceback (most recent call last): ...", GENERIC),
    ],
)
def test_a_bare_download_error_is_read_from_its_text(text: str, message: str) -> None:
    assert message in explain(DownloadError(text))


def test_long_messages_are_cut() -> None:
    message = explain(ExtractorError("This video is " + "very " * 100 + "odd.", expected=True))
    assert len(message) <= 200 and message.endswith("…")


# --- info -----------------------------------------------------------------------------------


def test_clock() -> None:
    assert [clock(s) for s in (0, 59.9, 65, 3600, 3725, 36000)] == [
        "0:00", "0:59", "1:05", "1:00:00", "1:02:05", "10:00:00"
    ]  # fmt: skip


def candidate(**fields: Any) -> Candidate:
    values: dict[str, Any] = {
        "title": "Song",
        "url": "https://cdn.example/a.mp3",
        "page_url": "https://site.example/a",
        "duration": 100.0,
        "thumbnail": None,
        "is_live": False,
    }
    return Candidate(**(values | fields))


@pytest.mark.parametrize(
    ("item", "allow_live", "problem"),
    [
        (candidate(), False, None),
        (candidate(duration=None), False, None),  # unknown durations pass
        (candidate(duration=3 * 3600), False, None),  # the limit itself is allowed
        (candidate(duration=3 * 3600 + 1), False,
         "“Song” is 3:00:01 long; the longest I play is 3:00:00"),
        (candidate(is_live=True, duration=None), True, None),
        (candidate(is_live=True), False, "“Song” is a live stream, and those are off here"),
        (candidate(url=""), True, "I found no audio I can play in “Song”"),
        (Pending(entry={}, url="u", title="Far", duration=5e5, is_live=False), True,
         "“Far” is 138:53:20 long; the longest I play is 3:00:00"),
    ],
)  # fmt: skip
def test_refusal(item: Candidate | Pending, allow_live: bool, problem: str | None) -> None:
    assert refusal(item, max_duration=3 * 3600, allow_live=allow_live) == problem


def test_read_listing_of_a_playlist() -> None:
    info = {
        "_type": "playlist",
        "webpage_url": "https://site.example/list",
        "playlist_count": 120,
        "entries": [
            {"_type": "url", "url": "https://site.example/1", "title": "One", "duration": 61},
            {"title": "Two", "url": "https://cdn.example/2.mp3", "thumbnails": [
                {"url": "https://img.example/small.jpg"}, {"url": "https://img.example/big.jpg"},
            ], "duration": float("nan")},
            {"_type": "playlist", "entries": []},
            None,
            {"_type": "url"},
        ],
    }  # fmt: skip
    listing = read_listing(info, page_url="ignored")
    assert listing.is_playlist and listing.total == 120
    first, second, *rest = listing.items
    assert isinstance(first, Pending)
    assert (first.url, first.title, first.duration) == ("https://site.example/1", "One", 61.0)
    assert second == Candidate(
        title="Two",
        url="https://cdn.example/2.mp3",
        page_url="https://site.example/list",
        duration=None,
        thumbnail="https://img.example/big.jpg",
        is_live=False,
        key="url:https://cdn.example/2.mp3",  # no extractor named: the media's URL is the key
    )
    assert rest == [None, None, None]


def test_read_listing_of_one_track_keeps_what_is_safe() -> None:
    info = {
        "title": "\u202eevil\x00 title " + "x" * 300,
        "url": "https://cdn.example/a.m4a",
        "webpage_url": "javascript:alert(1)",
        "thumbnail": "file:///etc/passwd",
        "duration": True,
        "live_status": "is_live",
    }
    listing = read_listing(info, page_url="https://site.example/a")
    (track,) = listing.items
    assert isinstance(track, Candidate)
    assert track.title.startswith("evil title x") and len(track.title) == 256
    assert track.page_url == "https://site.example/a"
    assert track.thumbnail is None
    assert track.duration is None and track.is_live
    assert track.to_track().duration is None
