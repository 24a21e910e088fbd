"""UrlPolicy: which links the bot may fetch. No DNS leaves this machine: hosts are IP literals,
`localhost` (the hosts file), or answered by a test resolver installed in Trio."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
import trio

from musicbot.core.ports import ResolveError
from musicbot.sources.safety import (
    FFMPEG_PROTOCOL_WHITELIST,
    PRIVATE,
    UrlPolicy,
    is_public,
)

LOCAL = [
    "http://127.0.0.1/",
    "http://127.0.0.1:8080/song.mp3",
    "http://127.255.255.254/",
    "http://2130706433/",  # decimal
    "http://0x7f.1/",  # hex and short form
    "http://0x7f000001/",
    "http://0177.0.0.1/",  # octal
    "http://017700000001/",
    "http://127.1/",
    "http://127.0.0.1./",  # trailing dot
    "HTTP://LOCALHOST/",
    "http://localhost:1/x",
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped IPv6
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[::127.0.0.1]/",  # IPv4-compatible (deprecated)
    "http://[64:ff9b::10.0.0.1]/",  # NAT64 of a private address
    "http://[2002:7f00:1::]/",  # 6to4 of loopback
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://100.64.0.1/",  # shared address space (CGNAT)
    "http://[fd00::1]/",  # unique local
    "http://[fe80::1]/",  # link-local
    "http://[fe80::1%25eth0]/",  # with a zone
    "http://[fec0::1]/",  # site-local
    "http://224.0.0.1/",  # multicast
    "http://[ff02::1]/",
    "http://240.0.0.1/",  # reserved
    "http://255.255.255.255/",
    "http://198.18.0.1/",  # benchmarking
    "http://192.0.2.1/",  # documentation
    "http://[2001:db8::1]/",
]


@pytest.mark.parametrize("url", LOCAL)
async def test_local_and_special_addresses_are_refused(url: str) -> None:
    with pytest.raises(ResolveError) as caught:
        await UrlPolicy().check(url)
    assert str(caught.value) == PRIVATE


@pytest.mark.parametrize("url", LOCAL)
def test_the_blocking_check_agrees(url: str) -> None:
    with pytest.raises(ResolveError, match="private or local address"):
        UrlPolicy().check_blocking(url)


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("http://1.1.1.1/", "http://1.1.1.1/"),
        ("https://8.8.8.8:8443/a?b=c", "https://8.8.8.8:8443/a?b=c"),
        ("http://[2606:4700:4700::1111]/x", "http://[2606:4700:4700::1111]/x"),
        ("HTTPS://1.1.1.1", "https://1.1.1.1/"),
        ("http://16843009/", "http://1.1.1.1/"),  # a decimal spelling is made plain
        ("http://1.1.1.1/song.mp3#__youtubedl_smuggle=x", "http://1.1.1.1/song.mp3"),
        ("http://[::FFFF:1.1.1.1]/", f"http://[{ipaddress.ip_address('::ffff:1.1.1.1')}]/"),
    ],
)
async def test_public_addresses_pass_normalized(url: str, normalized: str) -> None:
    assert await UrlPolicy().check(url) == normalized
    assert UrlPolicy().check_blocking(url) == normalized


@pytest.mark.parametrize(
    ("allow", "url"),
    [
        (("127.0.0.1",), "http://127.0.0.1:8000/x.mp3"),
        (("127.0.0.1",), "http://0x7f.1:8000/x.mp3"),
        (("127.0.0.1",), "http://[::ffff:127.0.0.1]/"),  # a mapped address is its IPv4
        (("127.0.0.1", "::1"), "http://localhost/"),  # whichever the hosts file says
        (("127.0.0.0/8",), "http://127.8.9.10/"),
        (("::1",), "http://[::1]:9/"),
        (("10.0.0.0/8", "192.168.0.0/16"), "http://192.168.1.20/"),
        (("media.lan",), "http://Media.LAN./x"),  # a name: no lookup at all
    ],
)
async def test_the_allow_list_lets_chosen_hosts_through(allow: tuple[str, ...], url: str) -> None:
    policy = UrlPolicy(allow=allow)
    assert await policy.check(url)
    assert policy.check_blocking(url)


@pytest.mark.parametrize(
    ("allow", "url"),
    [
        (("127.0.0.1",), "http://127.0.0.2/"),
        (("127.0.0.0/8",), "http://10.0.0.1/"),
        (("127.0.0.0/8",), "http://[::1]/"),
        (("media.lan",), "http://127.0.0.1/"),
    ],
)
async def test_the_allow_list_lets_nothing_else_through(allow: tuple[str, ...], url: str) -> None:
    with pytest.raises(ResolveError, match="private or local address"):
        await UrlPolicy(allow=allow).check(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "I can only play http and https links, not “file:” links"),
        ("FILE:///etc/passwd", "not “file:” links"),
        ("ftp://1.1.1.1/a.mp3", "not “ftp:” links"),
        ("javascript:alert(1)", "not “javascript:” links"),
        ("data:audio/mpeg;base64,AAAA", "not “data:” links"),
        ("gopher://1.1.1.1/", "not “gopher:” links"),
        ("concat:http://1.1.1.1/a|file:/etc/passwd", "not “concat:” links"),
        ("ws://1.1.1.1/", "not “ws:” links"),
        ("//1.1.1.1/song.mp3", "I can only play http and https links"),
        ("1.1.1.1/song.mp3", "I can only play http and https links"),
        ("http://user:pass@1.1.1.1/", "user name or password"),
        ("http://user@1.1.1.1/", "user name or password"),
        ("http://1.1.1.1\\@127.0.0.1/", "user name or password"),
        ("http://1.1.1.1/" + "a" * 5000, "too long (over 4096 characters)"),
        ("http:///nohost", "not look like a valid web address"),
        ("http://1.1.1.1:99999/", "not look like a valid web address"),
        ("http://[::1/", "not look like a valid web address"),
        ("http://%31%32%37.0.0.1/", "not look like a valid web address"),
        ("http://exa mple.com/", "cannot contain spaces"),
        ("http://1.1.1.1/\u202e", "invisible characters"),
        ("http://1.1.1.1/\x00", "invisible characters"),
        ("http://a_b..c/", "not look like a valid web address"),
    ],
)
def test_malformed_and_foreign_links_are_refused_plainly(url: str, message: str) -> None:
    with pytest.raises(ResolveError) as caught:
        UrlPolicy().parse(url)
    assert message in str(caught.value)


def test_the_length_limit_is_a_setting() -> None:
    UrlPolicy(max_length=30).parse("http://1.1.1.1/" + "a" * 15)
    with pytest.raises(ResolveError, match="over 30 characters"):
        UrlPolicy(max_length=30).parse("http://1.1.1.1/" + "a" * 16)


class FakeDns(trio.abc.HostnameResolver):
    """Answers getaddrinfo from a table, so DNS answers can be anything without a network."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def getaddrinfo(
        self, host: bytes | None, port: Any, family: int = 0, type: int = 0, *args: Any
    ) -> Any:
        name = (host or b"").decode()
        self.asked.append(name)
        if name not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answers = []
        for text in self.table[name]:
            address = ipaddress.ip_address(text)
            if address.version == 4:
                answers.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (text, 80)))
            else:
                answers.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (text, 80, 0, 0)))
        return answers

    async def getnameinfo(self, sockaddr: Any, flags: int) -> Any:
        raise NotImplementedError


@pytest.fixture
async def dns() -> FakeDns:
    resolver = FakeDns(
        {
            "music.example": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
            "sneaky.example": ["93.184.215.14", "10.0.0.7"],  # one bad answer among good
            "sneaky6.example": ["93.184.215.14", "::ffff:169.254.169.254"],
            "rebind.example": ["127.0.0.1"],
        }
    )
    trio.socket.set_custom_hostname_resolver(resolver)
    return resolver


async def test_a_host_passes_when_all_its_addresses_are_public(dns: FakeDns) -> None:
    assert await UrlPolicy().check("https://Music.Example/track") == "https://music.example/track"
    assert dns.asked == ["music.example"]


@pytest.mark.parametrize("host", ["sneaky.example", "sneaky6.example", "rebind.example"])
async def test_one_private_address_among_many_is_enough_to_refuse(dns: FakeDns, host: str) -> None:
    with pytest.raises(ResolveError) as caught:
        await UrlPolicy().check(f"http://{host}/song.mp3")
    assert str(caught.value) == PRIVATE


async def test_an_unknown_host_is_said_plainly(dns: FakeDns) -> None:
    with pytest.raises(ResolveError) as caught:
        await UrlPolicy().check("http://nowhere.example/")
    assert str(caught.value) == "I could not find the site “nowhere.example”"


async def test_a_host_name_on_the_allow_list_needs_no_lookup(dns: FakeDns) -> None:
    assert await UrlPolicy(allow=("rebind.example",)).check("http://rebind.example/")
    assert dns.asked == []


def test_judging_needs_at_least_one_address() -> None:
    policy = UrlPolicy()
    target = policy.parse("http://music.example/")
    with pytest.raises(ResolveError, match="could not find the site"):
        policy.judge(target, [])
    policy.judge(target, [ipaddress.ip_address("1.1.1.1")])


@pytest.mark.parametrize("entry", ["", "10.0.0.0/33", "not a host", "a/b", "exa mple", "::1::"])
def test_a_bad_allow_list_entry_is_refused_at_startup(entry: str) -> None:
    with pytest.raises(ValueError, match=r"allow-list|neither"):
        UrlPolicy(allow=(entry,))


def test_allow_list_entries_are_normalized() -> None:
    assert UrlPolicy(allow=(" Media.LAN. ", "127.0.0.1")).allow == ("media.lan", "127.0.0.1")


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("1.1.1.1", True),
        ("2606:4700::1111", True),
        ("::ffff:1.1.1.1", True),
        ("64:ff9b::1.1.1.1", True),  # NAT64 of a public address (DNS64 networks)
        ("2002:101:101::", True),  # 6to4 of a public address
        ("64:ff9b::127.0.0.1", False),
        ("2001::1", False),  # Teredo
        ("::", False),
        ("0.0.0.0", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_the_ffmpeg_whitelist_is_web_only() -> None:
    protocols = set(FFMPEG_PROTOCOL_WHITELIST.split(","))
    assert protocols == {"http", "https", "tcp", "tls", "crypto"}
