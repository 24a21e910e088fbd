"""What a user typed, cleaned and classified: a link, or words to search for.

Cleaning removes what nobody can see but software acts on: control characters, zero-width
characters and bidirectional overrides (which make a title read backwards in an embed).
Everything visible stays as typed: any script, emoji, combining marks. The zero-width joiner and
non-joiner stay where they join something (emoji sequences, Persian and Indic words), and tag
characters stay inside a flag sequence; elsewhere they are removed.

Every search is sent as `{search_prefix}{words}`. A search extractor takes everything after its
prefix as plain words, so what a user types can never name another extractor or a yt-dlp
pseudo-URL (`ytsearchall:`, `generic:`...), however it is spelled.
"""

from __future__ import annotations

import enum
import re
import unicodedata

import attrs

from musicbot.core.ports import ResolveError

DEFAULT_SEARCH_PREFIX = "ytsearch1:"
DEFAULT_MAX_LENGTH = 500

_ZWNJ, _ZWJ = "\u200c", "\u200d"
_BLACK_FLAG = "\U0001f3f4"
_TAGS = range(0xE0020, 0xE0080)
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")  # Hangul fillers, drawn as nothing
_SCRIPT_FORMAT = (  # format characters that are part of how a script is written: kept
    (0x0600, 0x0605),  # Arabic number signs
    (0x06DD, 0x06DD),  # Arabic end of ayah
    (0x070F, 0x070F),  # Syriac abbreviation mark
    (0x0890, 0x0891),  # Arabic pound and piastre marks above
    (0x08E2, 0x08E2),  # Arabic disputed end of ayah
    (0x110BD, 0x110BD),  # Kaithi number sign
    (0x110CD, 0x110CD),  # Kaithi number sign above
    (0x13430, 0x1345F),  # Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol format controls
)

# Schemes that make text a link even without "//" (so `javascript:...` is refused as a link
# rather than searched for). Everything written `scheme://...` is a link anyway.
_BARE_SCHEMES = frozenset(
    {
        "about", "blob", "chrome", "concat", "concatf", "crypto", "data", "dict", "fd", "file",
        "ftp", "ftps", "gopher", "gophers", "http", "https", "intent", "jar", "javascript",
        "ldap", "ldaps", "mailto", "mms", "mmsh", "mmst", "netdoc", "pipe", "rtmp", "rtmps",
        "rtp", "rtsp", "sftp", "smb", "srt", "subfile", "tcp", "tel", "telnet", "tls", "udp",
        "unix", "vbscript", "view-source", "ws", "wss",
    }
)  # fmt: skip
_LINK = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*):(//)?")


class QueryKind(enum.Enum):
    LINK = "link"
    SEARCH = "search"


@attrs.frozen
class Query:
    """A cleaned query: a link (to be checked by the UrlPolicy) or the words of a search."""

    kind: QueryKind
    text: str
    """The link, or the words searched for (what messages quote back to the user)."""
    target: str
    """What yt-dlp is given: the link itself, or the search prefix and the words."""


def check_search_prefix(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    """attrs validator: a yt-dlp search key and count with its colon, like "ytsearch1:"."""
    if not re.fullmatch(r"[a-z][a-z0-9]*:", value):
        raise ValueError(f"search_prefix must look like 'ytsearch1:', not {value!r}")


def _check_length(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"max_length must be at least 1, not {value!r}")


@attrs.frozen
class QueryRules:
    """How queries are cleaned and classified: `rules.parse(text)` -> Query or ResolveError."""

    search_prefix: str = attrs.field(default=DEFAULT_SEARCH_PREFIX, validator=check_search_prefix)
    """yt-dlp search key with the number of results, e.g. "ytsearch1:" or "scsearch1:"."""
    max_length: int = attrs.field(default=DEFAULT_MAX_LENGTH, validator=_check_length)
    """Longest search, in characters after cleaning. Links are limited by UrlPolicy.max_length."""

    def parse(self, raw: str) -> Query:
        if len(raw) > 20 * self.max_length + 8192:
            raise ResolveError(f"that is far too long; searches are limited to {self.max_length}")
        text = clean(raw)
        if text.startswith("<") and text.endswith(">"):  # Discord's way to hide a link preview
            text = text[1:-1].strip()
        if not text:
            raise ResolveError("tell me what to play: a link, or some words to search for")
        if is_link(text):
            return Query(QueryKind.LINK, text, text)
        if len(text) > self.max_length:
            raise ResolveError(
                f"that search is too long: {len(text)} characters, the limit is {self.max_length}"
            )
        return Query(QueryKind.SEARCH, text, self.search_prefix + text)


def is_link(text: str) -> bool:
    """Whether text is meant as a link: `scheme://...`, or `scheme:...` for a known scheme."""
    match = _LINK.match(text)
    if match is None:
        return False
    return match[2] is not None or match[1].lower() in _BARE_SCHEMES


def clean(raw: str) -> str:
    """The text without invisible characters, with any run of whitespace made one space.

    Removed: control characters, lone surrogates, and format characters (zero-width spaces,
    direction marks, bidi embeddings, overrides and isolates, the byte order mark...) except
    those scripts are written with. Joiners and flag tags stay only where they join something.
    """
    kept: list[str] = []
    for index, char in enumerate(raw):
        if char.isspace():
            kept.append(" ")
        elif char in (_ZWJ, _ZWNJ):
            if _joins(raw, index):
                kept.append(char)
        elif ord(char) in _TAGS:
            if _in_flag(kept):
                kept.append(char)
        elif _is_visible(char):
            kept.append(char)
    return " ".join("".join(kept).split())


def _is_visible(char: str) -> bool:
    category = unicodedata.category(char)
    if category in ("Cc", "Cs") or char in _INVISIBLE_LETTERS:
        return False
    if category == "Cf":
        code = ord(char)
        return any(first <= code <= last for first, last in _SCRIPT_FORMAT)
    return True


def _joins(raw: str, index: int) -> bool:
    """A joiner between two visible non-ASCII characters joins something; elsewhere it hides."""
    if index == 0 or index + 1 >= len(raw):
        return False
    return all(
        ord(c) > 0x7F
        and not c.isspace()
        and unicodedata.category(c)[0] in "LMNS"
        and c not in _INVISIBLE_LETTERS
        for c in (raw[index - 1], raw[index + 1])
    )


def _in_flag(kept: list[str]) -> bool:
    """Tag characters belong to a subdivision flag: black flag, then tags."""
    for char in reversed(kept):
        if char == _BLACK_FLAG:
            return True
        if ord(char) not in _TAGS:
            return False
    return False
