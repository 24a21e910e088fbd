"""YtdlResolver against a loopback media server: real yt-dlp, nothing leaves 127.0.0.1."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
import trio
import trio.testing
import yt_dlp
from yt_dlp.extractor import gen_extractor_classes
from yt_dlp.extractor.common import SearchInfoExtractor

from musicbot.core.messages import Resolved, Track
from musicbot.core.ports import ResolveError
from musicbot.sources.safety import PRIVATE, UrlPolicy
from musicbot.sources.settings import SourceSettings
from musicbot.sources.ytdl import GuardedYoutubeDL, MakeYtdl, YtdlLog, YtdlResolver

if TYPE_CHECKING:
    from conftest import MediaServer

LOOPBACK = ("127.0.0.1",)


def resolver(**settings: Any) -> YtdlResolver:
    settings.setdefault("allow_hosts", LOOPBACK)
    return YtdlResolver(SourceSettings(**settings))


def assert_plain(message: str) -> None:
    """What a Discord user may be shown: one short line, nothing of yt-dlp's insides."""
    assert message and "\n" not in message and len(message) < 250
    for insider in ("Traceback", "ERROR:", "yt-dlp -", "--", "github.com", "Error("):
        assert insider not in message


# --- links -----------------------------------------------------------------------------------


async def test_direct_link_resolves_to_one_track(media: MediaServer) -> None:
    url = media.url("/tone.mp3")
    result = await resolver().resolve(url)
    assert result == Resolved(
        (Track(title="tone", url=url, page_url=url, key=f"url:{url}"),), left_out=0
    )


async def test_page_with_an_audio_tag_resolves_to_its_source(media: MediaServer) -> None:
    result = await resolver().resolve(media.url("/one.html"))
    (track,) = result.tracks
    assert track.url == media.url("/tone.mp3")
    assert track.page_url == media.url("/one.html")
    assert track.title.startswith("One Song")
    assert track.requester == ""


async def test_two_audio_tags_are_a_playlist_of_two(media: MediaServer) -> None:
    result = await resolver().resolve(media.url("/two.html"))
    assert [t.url for t in result.tracks] == [media.url("/tone.mp3"), media.url("/second.mp3")]
    assert result.left_out == 0


async def test_playlist_cap_leaves_the_rest_out_and_says_how_many(media: MediaServer) -> None:
    result = await resolver(playlist_cap=1).resolve(media.url("/two.html"))
    assert [t.url for t in result.tracks] == [media.url("/tone.mp3")]
    assert result.left_out == 1


async def test_a_link_is_cleaned_like_any_query(media: MediaServer) -> None:
    result = await resolver().resolve(f"  <{media.url('/tone.mp3')}#frag>\u200b ")
    assert [t.url for t in result.tracks] == [media.url("/tone.mp3")]


async def test_missing_file_is_a_plain_404_message(media: MediaServer) -> None:
    with pytest.raises(ResolveError) as caught:
        await resolver().resolve(media.url("/missing.mp3"))
    assert str(caught.value) == "there is nothing at that link (HTTP 404: not found)"


async def test_closed_port_is_could_not_reach(closed_port: int) -> None:
    with pytest.raises(ResolveError) as caught:
        await resolver().resolve(f"http://127.0.0.1:{closed_port}/song.mp3")
    assert str(caught.value) == f"I could not reach 127.0.0.1:{closed_port}"


async def test_page_without_audio_is_unsupported(media: MediaServer) -> None:
    with pytest.raises(ResolveError, match="cannot play anything from that link") as caught:
        await resolver().resolve(media.url("/plain.html"))
    assert_plain(str(caught.value))


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (403, "refused to let me in (HTTP 403)"),
        (410, "nothing at that link (HTTP 410"),
        (429, "try again later (HTTP 429)"),
        (503, "having trouble (HTTP 503)"),
    ],
)
async def test_http_errors_are_explained(media: MediaServer, status: int, expected: str) -> None:
    media.serve("/status", b"no", content_type="text/plain", status=status)
    with pytest.raises(ResolveError) as caught:
        await resolver().resolve(media.url("/status"))
    assert expected in str(caught.value)
    assert_plain(str(caught.value))


# --- the policy, before and after yt-dlp ----------------------------------------------------


async def test_loopback_is_refused_unless_allowed(media: MediaServer) -> None:
    with pytest.raises(ResolveError, match="private or local address"):
        await resolver(allow_hosts=()).resolve(media.url("/tone.mp3"))
    assert media.requests == []  # refused before yt-dlp made any request


@pytest.mark.parametrize(
    "query",
    ["file:///etc/passwd", "ftp://127.0.0.1/x.mp3", "javascript:alert(1)", "data:audio/mp3,xx"],
)
async def test_other_schemes_are_refused(query: str) -> None:
    with pytest.raises(ResolveError, match="only play http and https links"):
        await resolver().resolve(query)


async def test_a_stream_at_a_private_address_is_refused(media: MediaServer) -> None:
    media.page("/lure.html", '<title>Lure</title><audio src="http://10.1.2.3/x.mp3"></audio>')
    with pytest.raises(ResolveError) as caught:
        await resolver().resolve(media.url("/lure.html"))
    assert str(caught.value) == PRIVATE


async def test_a_playlist_entry_at_a_private_address_is_skipped(media: MediaServer) -> None:
    media.page(
        "/mixed.html",
        '<title>Mixed</title><audio src="/tone.mp3"></audio>'
        '<audio src="http://169.254.169.254/latest/meta-data"></audio>',
    )
    result = await resolver().resolve(media.url("/mixed.html"))
    assert [t.url for t in result.tracks] == [media.url("/tone.mp3")]
    assert result.left_out == 1


async def test_a_redirect_into_a_refused_address_is_not_read(media: MediaServer) -> None:
    # Only the name "localhost" is allowed. A page there redirects to 127.0.0.1 (refused),
    # where the page's audio points back at localhost: only the redirect itself is wrong.
    inside = media.page(
        "/inside.html",
        f'<title>Inside</title><audio src="{media.url("/tone.mp3", "localhost")}"></audio>',
    )
    media.serve("/moved", status=302, headers=(("Location", inside),))
    start = media.url("/moved", host="localhost")
    with pytest.raises(ResolveError) as caught:
        await resolver(allow_hosts=("localhost",)).resolve(start)
    assert str(caught.value) == PRIVATE
    assert media.requests == ["/moved"]  # the redirect's target was refused, never asked for
    # With both allowed the same redirect is followed: the refusal above was the policy's.
    result = await resolver(allow_hosts=("localhost", "127.0.0.1")).resolve(start)
    assert [t.url for t in result.tracks] == [media.url("/tone.mp3", "localhost")]


def test_guarded_youtubedl_asks_before_any_request() -> None:
    with (
        GuardedYoutubeDL({"quiet": True}, UrlPolicy(), auto_init=False) as ytdl,
        pytest.raises(ResolveError, match="private or local address"),
    ):
        ytdl.urlopen("http://127.0.0.1:9/")  # nothing listens: a request would fail otherwise


async def test_guarded_youtubedl_checks_a_redirect_before_following_it(media: MediaServer) -> None:
    media.serve("/moved", status=302, headers=(("Location", media.url("/tone.mp3")),))

    def fetch() -> None:
        params = {"quiet": True, "logger": YtdlLog()}
        with GuardedYoutubeDL(params, UrlPolicy(allow=("localhost",)), auto_init=False) as ytdl:
            ytdl.urlopen(media.url("/moved", host="localhost"))

    with pytest.raises(ResolveError) as caught:
        await trio.to_thread.run_sync(fetch)
    assert str(caught.value) == PRIVATE
    assert media.requests == ["/moved"]  # refused before it was followed


# --- searches, through a search extractor registered for the test ---------------------------


class CatalogSearchIE(SearchInfoExtractor):  # type: ignore[misc]
    """`catalogsearchN:words`: answers from a dict of words -> result entries."""

    IE_NAME = "catalogsearch"
    _SEARCH_KEY = "catalogsearch"

    def __init__(self, catalog: Mapping[str, Iterable[dict[str, Any]]], asked: list[str]) -> None:
        super().__init__()
        self.catalog = catalog
        self.asked = asked

    def _search_results(self, query: str) -> Iterator[dict[str, Any]]:
        self.asked.append(query)
        yield from self.catalog.get(query, [])


def with_catalog(catalog: Mapping[str, Iterable[dict[str, Any]]], asked: list[str]) -> MakeYtdl:
    """The resolver's YoutubeDL, with the catalog search ahead of yt-dlp's own extractors."""

    def make(params: dict[str, Any], policy: UrlPolicy) -> GuardedYoutubeDL:
        ytdl = GuardedYoutubeDL(params, policy, auto_init=False)
        ytdl.add_info_extractor(CatalogSearchIE(catalog, asked))
        ytdl.add_default_info_extractors()
        return ytdl

    return make


def link(url: str, **fields: Any) -> dict[str, Any]:
    return {"_type": "url", "url": url, **fields}


def video(url: str, title: str, **fields: Any) -> dict[str, Any]:
    return {"id": title.lower(), "title": title, "url": url, "ext": "mp3", **fields}


def searcher(
    catalog: Mapping[str, Iterable[dict[str, Any]]],
    asked: list[str],
    *,
    count: int = 1,
    **settings: Any,
) -> YtdlResolver:
    settings.setdefault("allow_hosts", LOOPBACK)
    return YtdlResolver(
        SourceSettings(search_prefix=f"catalogsearch{count}:", **settings),
        make_ytdl=with_catalog(catalog, asked),
    )


async def test_words_are_searched_with_the_prefix(media: MediaServer) -> None:
    asked: list[str] = []
    catalog = {"a tone": [link(media.url("/tone.mp3"))]}
    result = await searcher(catalog, asked).resolve("  a\u200b  tone ")
    assert asked == ["a tone"]
    assert [t.url for t in result.tracks] == [media.url("/tone.mp3")]
    assert result.left_out == 0
    assert media.requests == ["/tone.mp3"]  # the entry was resolved by yt-dlp's generic extractor


async def test_an_empty_search_says_nothing_was_found() -> None:
    asked: list[str] = []
    with pytest.raises(ResolveError) as caught:
        await searcher({}, asked).resolve("no such song")
    assert str(caught.value) == "nothing found for “no such song”"
    assert asked == ["no such song"]


async def test_words_cannot_name_another_extractor() -> None:
    asked: list[str] = []
    with pytest.raises(ResolveError, match="nothing found"):
        await searcher({}, asked).resolve("catalogsearchall:everything")
    assert asked == ["catalogsearchall:everything"]  # searched for as plain words


async def test_a_failing_search_entry_is_skipped_and_counted(media: MediaServer) -> None:
    asked: list[str] = []
    catalog = {"mix": [link(media.url("/gone.mp3")), link(media.url("/tone.mp3"))]}
    result = await searcher(catalog, asked, count=2).resolve("mix")
    assert [t.url for t in result.tracks] == [media.url("/tone.mp3")]
    assert result.left_out == 1


async def test_the_only_result_failing_says_why(media: MediaServer) -> None:
    catalog = {"gone": [link(media.url("/gone.mp3"))]}
    with pytest.raises(ResolveError) as caught:
        await searcher(catalog, []).resolve("gone")
    assert str(caught.value) == "there is nothing at that link (HTTP 404: not found)"


async def test_a_track_longer_than_the_limit_is_refused(media: MediaServer) -> None:
    catalog = {"long": [video(media.url("/tone.mp3"), "Long", duration=4 * 3600)]}
    with pytest.raises(ResolveError) as caught:
        await searcher(catalog, []).resolve("long")
    assert str(caught.value) == "“Long” is 4:00:00 long; the longest I play is 3:00:00"
    result = await searcher(catalog, [], max_track_duration=5 * 3600).resolve("long")
    assert result.tracks[0].duration == 4 * 3600


async def test_a_listed_entry_known_to_be_too_long_is_not_even_fetched(
    media: MediaServer,
) -> None:
    catalog = {"two": [link(media.url("/long.mp3"), duration=99_999), link(media.url("/tone.mp3"))]}
    result = await searcher(catalog, [], count=2).resolve("two")
    assert [t.url for t in result.tracks] == [media.url("/tone.mp3")]
    assert result.left_out == 1
    assert "/long.mp3" not in media.requests


async def test_live_streams_only_when_allowed(media: MediaServer) -> None:
    catalog = {"radio": [video(media.url("/tone.mp3"), "Radio", is_live=True, duration=10)]}
    with pytest.raises(ResolveError, match="“Radio” is a live stream"):
        await searcher(catalog, [], allow_live=False).resolve("radio")
    result = await searcher(catalog, [], allow_live=True).resolve("radio")
    assert result.tracks[0].duration is None
    assert result.tracks[0].live


async def test_metadata_reaches_the_track(media: MediaServer) -> None:
    entry = video(
        media.url("/tone.mp3"),
        "Tone \u202eevil",
        duration=61.5,
        thumbnail="https://img.example/t.jpg",
        webpage_url="https://video.example/watch?v=tone",
    )
    result = await searcher({"tone": [entry]}, []).resolve("tone")
    assert result.tracks == (
        Track(
            title="Tone evil",  # the bidi override is gone
            url=media.url("/tone.mp3"),
            page_url="https://video.example/watch?v=tone",
            duration=61.5,
            thumbnail="https://img.example/t.jpg",
            key="CatalogSearch:tone \u202eevil",  # the site's own id, as the site gave it
        ),
    )


def test_the_default_prefix_selects_youtube_search() -> None:
    """No request is made: only which extractor would take "ytsearch1:words"."""
    target = YtdlResolver().rules.parse("never gonna give you up").target
    assert target == "ytsearch1:never gonna give you up"
    first = next(ie for ie in gen_extractor_classes() if ie.suitable(target))
    assert first.ie_key() == "YoutubeSearch"


# --- time: the deadline, cancellation -------------------------------------------------------


async def test_a_hanging_server_times_out_within_the_timeout(media: MediaServer) -> None:
    start = trio.current_time()
    with pytest.raises(ResolveError) as caught:
        await resolver(resolve_timeout=0.5).resolve(media.url("/stall.mp3"))
    elapsed = trio.current_time() - start
    assert media.stalled.is_set()  # yt-dlp was waiting on the server, not on itself
    assert 0.5 <= elapsed < 0.9
    assert str(caught.value) == (
        "looking up that link took too long (over 0.5 seconds); try again later"
    )


async def test_the_default_timeout_is_twenty_seconds(
    media: MediaServer, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0.3  # waiting on a thread counts as idle: jump after 0.3 s
    start = trio.current_time()
    with pytest.raises(ResolveError, match=r"took too long \(over 20 seconds\)"):
        await YtdlResolver(SourceSettings(allow_hosts=LOOPBACK)).resolve(media.url("/stall"))
    assert trio.current_time() - start == 20.0


async def test_a_playlist_keeps_what_resolved_before_the_deadline(media: MediaServer) -> None:
    catalog = {"mixed": [link(media.url("/tone.mp3")), link(media.url("/stall.mp3"))]}
    start = trio.current_time()
    result = await searcher(catalog, [], count=2, resolve_timeout=1.0).resolve("mixed")
    assert trio.current_time() - start < 1.4
    assert [t.url for t in result.tracks] == [media.url("/tone.mp3")]
    assert result.left_out == 1


async def test_cancelling_a_resolution_returns_at_once(media: MediaServer) -> None:
    subject = resolver()
    cancelled_at = None
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_when_stalled() -> None:
                nonlocal cancelled_at
                await media.stalled.wait()
                cancelled_at = trio.current_time()
                scope.cancel()

            nursery.start_soon(cancel_when_stalled)
            await subject.resolve(media.url("/stall.mp3"))
    assert scope.cancelled_caught and cancelled_at is not None
    assert trio.current_time() - cancelled_at < 0.1
    # The abandoned thread is still stuck on the server, and keeps its token until it ends.
    assert subject.statistics().borrowed_tokens == 1


def test_settings_are_checked() -> None:
    for bad in ({"playlist_cap": 0}, {"concurrency": 0}, {"resolve_timeout": 0},
                {"max_track_duration": -1}, {"max_query_length": 0}):  # fmt: skip
        with pytest.raises(ValueError, match=next(iter(bad))):
            SourceSettings(**bad)
    with pytest.raises(ValueError, match="search_prefix"):
        SourceSettings(search_prefix="yt search")
    with pytest.raises(ValueError, match="neither a host name nor an IP network"):
        SourceSettings(allow_hosts=("10.0.0.0/40",))
    assert SourceSettings(allow_hosts=["LocalHost."]).allow_hosts == ("localhost",)


# --- output and failures --------------------------------------------------------------------


async def test_yt_dlp_prints_nothing(
    media: MediaServer, closed_port: int, capfd: pytest.CaptureFixture[str], caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG, logger="musicbot.sources.ytdl")
    subject = resolver()
    await subject.resolve(media.url("/one.html"))
    for query in [
        media.url("/missing.mp3"),
        media.url("/plain.html"),
        f"http://127.0.0.1:{closed_port}/",
    ]:
        with pytest.raises(ResolveError):
            await subject.resolve(query)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert any("HTTP Error 404" in r.getMessage() for r in caplog.records)  # it went to logging


async def test_yt_dlp_alone_would_print_to_stderr(
    closed_port: int, capfd: pytest.CaptureFixture[str]
) -> None:
    """The test above would notice: without a logger, yt-dlp writes ERROR lines to stderr."""
    url = f"http://127.0.0.1:{closed_port}/song.mp3"

    def extract() -> None:
        with yt_dlp.YoutubeDL({"quiet": True, "no_warnings": True}) as ytdl:
            ytdl.extract_info(url, download=False)

    with pytest.raises(yt_dlp.utils.DownloadError):
        await trio.to_thread.run_sync(extract)
    assert "ERROR:" in capfd.readouterr().err


class Exploding:
    """A YoutubeDL stand-in that fails the way a bug would."""

    def __init__(self, params: dict[str, Any], policy: UrlPolicy) -> None:
        self.params = params

    def __enter__(self) -> Exploding:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def extract_info(self, url: str, download: bool) -> Any:
        raise KeyError("formats")


async def test_an_unexpected_exception_is_logged_and_made_plain(caplog: Any) -> None:
    subject = YtdlResolver(SourceSettings(), make_ytdl=Exploding)
    with pytest.raises(ResolveError) as caught:
        await subject.resolve("anything at all")
    assert_plain(str(caught.value))
    assert "could not get anything playable" in str(caught.value)
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None and record.exc_info[0] is KeyError


class Recording(Exploding):
    """Answers every query with an empty playlist, and notes what it was asked and how."""

    seen: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def extract_info(self, url: str, download: bool) -> Any:
        assert download is False
        self.seen.append((url, self.params))
        return {"_type": "playlist", "entries": []}


async def test_yt_dlp_options() -> None:
    Recording.seen.clear()
    subject = YtdlResolver(SourceSettings(playlist_cap=7, resolve_timeout=9), make_ytdl=Recording)
    with pytest.raises(ResolveError, match="nothing found for “lofi”"):
        await subject.resolve("lofi")
    ((url, params),) = Recording.seen
    assert url == "ytsearch1:lofi"
    expected = {
        "quiet": True,
        "no_warnings": True,
        "noplaylist": False,
        "extract_flat": "in_playlist",
        "playlistend": 8,
        "format": "bestaudio/best",
        "socket_timeout": 9,
        "default_search": "error",
        "ignoreerrors": False,
    }
    assert {key: params[key] for key in expected} == expected
    assert params["logger"] is not None


async def test_a_long_playlist_reports_its_full_size(media: MediaServer) -> None:
    resolved: list[str] = []

    class Huge(Recording):
        def extract_info(self, url: str, download: bool) -> Any:
            first = [link(media.url(f"/{i}.mp3")) for i in range(self.params["playlistend"])]
            return {"_type": "playlist", "entries": first, "playlist_count": 5000}

        def process_ie_result(self, entry: dict[str, Any], download: bool) -> Any:
            resolved.append(entry["url"])
            return video(media.url("/tone.mp3"), entry["url"].rsplit("/", 1)[1])

    subject = YtdlResolver(SourceSettings(allow_hosts=LOOPBACK, playlist_cap=3), make_ytdl=Huge)
    result = await subject.resolve("huge")
    assert [t.title for t in result.tracks] == ["0.mp3", "1.mp3", "2.mp3"]
    assert sorted(resolved) == [media.url(f"/{i}.mp3") for i in range(3)]
    assert result.left_out == 4997


async def test_a_lazy_playlist_is_listed_only_one_past_the_cap(media: MediaServer) -> None:
    pulled: list[int] = []

    def endless() -> Iterator[dict[str, Any]]:
        for number in range(5000):
            pulled.append(number)
            yield link(media.url("/tone.mp3"), title=f"Tone {number}")

    result = await searcher({"all": endless()}, [], count=5000, playlist_cap=2).resolve("all")
    assert [t.url for t in result.tracks] == [media.url("/tone.mp3")] * 2
    assert pulled == [0, 1, 2]  # the cap, and one more to learn that some were left out
    assert media.requests.count("/tone.mp3") == 2
    assert result.left_out == 1  # at least one: the site did not say how many there are
