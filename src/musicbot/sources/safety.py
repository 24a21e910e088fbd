"""UrlPolicy: which links the bot may fetch, so strangers cannot aim it at the operator's network.

A link is accepted when it is http or https, carries no user name or password, is not absurdly
long, and every address its host resolves to is public. Loopback, private, link-local, shared
(CGNAT), unspecified, multicast and reserved addresses are refused, in IPv4 and IPv6, including
IPv4 addresses wrapped in IPv6 (mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4
`2002::/16`) and the numeric spellings the C resolver accepts (`2130706433`, `0x7f.1`,
`0177.0.0.1`, `127.1`). An explicit allow-list of host names or networks lifts the address rule
for them; tests and the demo allow `127.0.0.1`.

Parsing and judging are pure; only DNS resolution waits: `check()` resolves with
`trio.socket.getaddrinfo`, `check_blocking()` with `socket.getaddrinfo` for code that already runs
in a worker thread (yt-dlp's own requests, see `musicbot.sources.ytdl`).

What this cannot see, and why the network should still be fenced off (a firewall or an egress
proxy for the bot's user): the host may resolve differently a moment later when the request is
made (DNS rebinding), HTTP redirects are followed inside ffmpeg (yt-dlp's are checked before
they are followed, see musicbot.sources.ytdl), and ffmpeg reads HLS segments named in a playlist
without asking anyone.

ffmpeg's matching input option is `-protocol_whitelist http,https,tcp,tls,crypto`
(`FFMPEG_PROTOCOL_WHITELIST`): http and https with the tcp and tls they run on, and crypto for
AES-128 HLS segments. HLS needs nothing more (the hls demuxer opens its playlist and segments
through these protocols). It must not list file, data, concat, subfile, pipe or any other: an HLS
playlist or a redirect naming `file:/etc/passwd` is then refused by ffmpeg itself. Verified with
the bundled ffmpeg 9.0.2.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import SplitResult, urlsplit, urlunsplit

import attrs
import trio

from musicbot.core.ports import ResolveError

FFMPEG_PROTOCOL_WHITELIST = "http,https,tcp,tls,crypto"
"""The `-protocol_whitelist` ffmpeg must get for URLs this policy accepted."""

SCHEMES = frozenset({"http", "https"})
DEFAULT_MAX_LENGTH = 4096
"""Long enough for signed CDN stream URLs (YouTube's run to about 2,000 characters)."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_HOST_NAME = re.compile(r"(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*"
                        r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")  # fmt: skip
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

NOT_A_LINK = "that does not look like a valid web address"
PRIVATE = "that link points at a private or local address, which I am not allowed to visit"


@attrs.frozen
class Target:
    """A link that passed the checks that need no DNS: what is left is the host's addresses."""

    url: str
    """The normalized link: lower-case scheme and host, IDNA host, canonical IP, no fragment."""
    host: str
    """Lower-case ASCII host name, or the canonical IP address (IPv6 without brackets)."""
    port: int
    address: IPAddress | None
    """The host when it is an IP address (in any spelling), so no DNS is needed."""


def parse_allow(entries: Iterable[str]) -> tuple[str, ...]:
    """The allow-list normalized (lower case, no trailing dot); ValueError for a bad entry."""
    checked = []
    for raw in entries:
        entry = raw.strip().lower().rstrip(".")
        if not entry:
            raise ValueError("an empty entry in the allow-list")
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if "/" in entry or ":" in entry or not _HOST_NAME.fullmatch(entry):
                raise ValueError(f"{raw!r} is neither a host name nor an IP network") from None
        checked.append(entry)
    return tuple(checked)


@attrs.frozen
class UrlPolicy:
    """Decides whether a link may be fetched: `await policy.check(url)` -> the normalized link.

    Raises ResolveError, worded for the person who typed the link, when it may not.
    """

    allow: tuple[str, ...] = attrs.field(default=(), converter=parse_allow)
    """Host names and IP networks exempt from the address rule, e.g. ("127.0.0.1",),
    ("127.0.0.0/8",) or ("media.lan",). A name matches the link's host exactly, not what it
    resolves to; a network matches the resolved addresses."""
    max_length: int = DEFAULT_MAX_LENGTH
    """Longest link accepted, in characters."""

    _networks: tuple[IPNetwork, ...] = attrs.field(
        init=False, repr=False, eq=False,
        default=attrs.Factory(lambda self: _networks_of(self.allow), takes_self=True),
    )  # fmt: skip
    _names: frozenset[str] = attrs.field(
        init=False, repr=False, eq=False,
        default=attrs.Factory(lambda self: _names_of(self.allow), takes_self=True),
    )  # fmt: skip

    async def check(self, url: str) -> str:
        """The normalized link when every address of its host may be fetched."""
        target = self.parse(url)
        resolved: list[IPAddress] = []
        if self._needs_dns(target):
            try:
                infos = await trio.socket.getaddrinfo(
                    target.host, target.port, type=trio.socket.SOCK_STREAM
                )
            except (OSError, UnicodeError):
                raise ResolveError(_unknown_host(target.host)) from None
            resolved = _addresses(str(info[4][0]) for info in infos)
        self.judge(target, resolved)
        return target.url

    def check_blocking(self, url: str) -> str:
        """`check()` for code already in a worker thread: resolves with socket.getaddrinfo."""
        target = self.parse(url)
        resolved: list[IPAddress] = []
        if self._needs_dns(target):
            try:
                infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                raise ResolveError(_unknown_host(target.host)) from None
            resolved = _addresses(str(info[4][0]) for info in infos)
        self.judge(target, resolved)
        return target.url

    def parse(self, url: str) -> Target:
        """Everything that needs no DNS: scheme, credentials, length, a well-formed host."""
        if len(url) > self.max_length:
            raise ResolveError(f"that link is too long (over {self.max_length} characters)")
        if not url.isprintable() or any(c.isspace() for c in url):
            raise ResolveError("a link cannot contain spaces or invisible characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ResolveError(NOT_A_LINK) from None
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            shown = f"“{scheme}:” links" if scheme and len(scheme) <= 20 else "other links"
            raise ResolveError(f"I can only play http and https links, not {shown}")
        if "@" in parts.netloc:
            raise ResolveError("links with a user name or password in them are not accepted")
        host, address = _host(parts)
        port = port if port is not None else (443 if scheme == "https" else 80)
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        normalized = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
        return Target(url=normalized, host=host, port=port, address=address)

    def _needs_dns(self, target: Target) -> bool:
        return target.address is None and target.host not in self._names

    def judge(self, target: Target, resolved: Iterable[IPAddress]) -> None:
        """Raises ResolveError unless every address of the target may be fetched.

        `resolved` are the host's addresses from DNS; an IP-address host needs none, and a host
        name on the allow-list is never judged by its addresses. No address at all is refused.
        """
        if target.host in self._names:
            return
        addresses = (target.address,) if target.address is not None else resolved
        seen = False
        for address in addresses:
            seen = True
            if not self.is_allowed(address):
                raise ResolveError(PRIVATE)
        if not seen:
            raise ResolveError(_unknown_host(target.host))

    def is_allowed(self, address: IPAddress) -> bool:
        """A public address, or one inside an allowed network."""
        candidates = (address, _unwrap(address))
        for network in self._networks:
            if any(c.version == network.version and c in network for c in candidates):
                return True
        return is_public(address)


def is_public(address: IPAddress) -> bool:
    """True for an address on the public internet; False for anything local or special.

    An IPv4 address wrapped in IPv6 (mapped, NAT64, 6to4) is judged by the IPv4 inside.
    """
    inner = _unwrap(address)
    if inner is not address:
        if address.version == 6 and address in ipaddress.IPv6Network("2002::/16"):
            return is_public(inner) and _is_plainly_public(address)
        return is_public(inner)
    return _is_plainly_public(address)


def _is_plainly_public(address: IPAddress) -> bool:
    return not (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


def _unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4), else the address."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    return address


def _host(parts: SplitResult) -> tuple[str, IPAddress | None]:
    """The canonical host of a split URL, and its address when it is an IP address."""
    raw = parts.hostname  # lower-cased, IPv6 brackets removed
    if not raw:
        raise ResolveError(NOT_A_LINK)
    if parts.netloc.startswith("["):
        try:
            literal = ipaddress.IPv6Address(raw)
        except ValueError:
            raise ResolveError(NOT_A_LINK) from None
        return str(literal), literal
    host = raw[:-1] if raw.endswith(".") else raw
    if _NUMERIC_HOST.fullmatch(host):
        # The C resolver reads 2130706433, 0x7f.1, 0177.0.0.1 and 127.1 as 127.0.0.1.
        try:
            literal4 = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            pass  # a name made of hex letters and digits, like "abc1.de"
        else:
            return str(literal4), literal4
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ResolveError(NOT_A_LINK) from None
    if not _HOST_NAME.fullmatch(ascii_host) or ascii_host.rpartition(".")[2].isdigit():
        # A numeric last label is no name (no top-level domain is numeric) and, since
        # inet_aton refused it, no address either: refused here, not after a DNS query.
        raise ResolveError(NOT_A_LINK)
    return ascii_host, None


def _addresses(raw: Iterable[str]) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(text) for text in raw]
    except ValueError:  # getaddrinfo gave something odd: fail closed
        raise ResolveError(PRIVATE) from None


def _networks_of(allow: Iterable[str]) -> tuple[IPNetwork, ...]:
    networks = []
    for entry in allow:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue  # a host name
    return tuple(networks)


def _names_of(allow: Iterable[str]) -> frozenset[str]:
    names = set()
    for entry in allow:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            names.add(entry)
    return frozenset(names)


def _unknown_host(host: str) -> str:
    shown = host if len(host) <= 60 else host[:57] + "..."
    return f"I could not find the site “{shown}”"
