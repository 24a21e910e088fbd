"""Stable track identities: yt-dlp's id when known, else the canonical URL."""

from __future__ import annotations

import pytest

from musicbot.audio.store.keys import canonical_url, track_key
from musicbot.core.messages import Track


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("HTTPS://Example.COM/Song.mp3#t=30", "https://example.com/Song.mp3"),
        ("https://example.com:443/a?b=C", "https://example.com/a?b=C"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("http://example.com:8080/a", "http://example.com:8080/a"),
        ("https://example.com", "https://example.com/"),
        ("https://[2001:DB8::1]:443/x", "https://[2001:db8::1]/x"),
        ("https://User:Pw@Example.com/x", "https://User:Pw@example.com/x"),
        ("  https://example.com/x  ", "https://example.com/x"),
        ("ftp://example.com/a", None),
        ("/home/me/song.mp3", None),
        ("file:///etc/passwd", None),
        ("https://example.com:99999/a", None),
        ("https:///no-host", None),
    ],
)
def test_canonical_url(url: str, canonical: str | None) -> None:
    assert canonical_url(url) == canonical


def test_the_extractor_id_comes_first_then_the_page_then_the_media_url() -> None:
    page = "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
    keyed = Track("t", "https://rr1.googlevideo.com/x?sig=1", page, key="Youtube:dQw4w9WgXcQ")
    assert track_key(keyed) == "Youtube:dQw4w9WgXcQ"
    # The same video behind a newly signed media URL is the same song.
    assert track_key(Track("t", "https://rr1.googlevideo.com/x?sig=1", page)) == page
    assert track_key(Track("t", "https://rr9.googlevideo.com/x?sig=2", page)) == page
    assert track_key(Track("t", "HTTPS://Example.com/a.mp3", key="")) == (
        "https://example.com/a.mp3"
    )
    assert track_key(Track("t", "/local/file.mp3")) is None
