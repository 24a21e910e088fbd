"""A track's stable identity: what the store files a processed song under.

In order of preference:
1. `track.key`, the resolver's stable identity (yt-dlp's `extractor_key:id`, e.g.
   `Youtube:dQw4w9WgXcQ`), when it set one: the same video reached by any URL is one song.
2. The canonical page URL (`track.page_url`), then the canonical media URL (`track.url`):
   scheme and host lower-cased, default port and fragment dropped, an empty path made `/`.
   The page URL comes first because media URLs often carry expiring signatures.
Only http and https URLs make keys; anything else (a local file) gives None.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from musicbot.core.messages import Track

_DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_url(url: str) -> str | None:
    """`url` in canonical form, or None if it is not an http(s) URL with a host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # a malformed IPv6 host or port
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname  # lower-cased, brackets removed
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:
        netloc = f"{userinfo}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def track_key(track: Track) -> str | None:
    """The identity of `track`'s audio, or None when it has none worth filing under."""
    if track.key:
        return track.key
    for url in (track.page_url, track.url):
        if url and (canonical := canonical_url(url)) is not None:
            return canonical
    return None
