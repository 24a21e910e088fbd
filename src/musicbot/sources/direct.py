"""DirectResolver: a direct http(s) link to an audio file becomes one track, no lookup needed."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote, urlsplit

from musicbot.core.messages import Resolved, Track
from musicbot.core.ports import ResolveError


class DirectResolver:
    """Accepts http and https links only; the title is the file name without its extension."""

    async def resolve(self, query: str) -> Resolved:
        url = query.strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ResolveError("give me an http or https link to an audio file")
        name = posixpath.basename(unquote(parts.path)) or parts.hostname
        title = posixpath.splitext(name)[0] or name
        return Resolved((Track(title=title, url=url, page_url=url),))
