"""YtdlResolver: the Resolver port over yt-dlp, in worker threads, bounded in time and number.

One query, start to finish, under one deadline (`resolve_timeout`):
1. QueryRules cleans and classifies it. A link must pass the UrlPolicy before yt-dlp sees it;
   words become `{search_prefix}{words}`.
2. yt-dlp lists it in a worker thread with `extract_flat="in_playlist"` and
   `playlistend=playlist_cap + 1`. A single track comes back resolved. A playlist's entries come
   back unresolved where the site allows (YouTube, SoundCloud, searches...), so a 5,000-entry
   playlist costs one listing, and the one entry past the cap tells whether any were left out
   when the site does not say the playlist's size.
3. The first `playlist_cap` entries are settled in parallel tasks. An unresolved entry is
   resolved in its own thread, so one that fails is skipped and counted in `left_out`; the live
   and duration rules apply (before resolving, when the listing already tells); every stream
   URL passes the UrlPolicy again (a page on an allowed host may point at a private address).
4. At the deadline, what is settled is kept and the rest is counted as left out; if nothing
   was settled, the query took too long.

Inside yt-dlp, GuardedYoutubeDL asks the UrlPolicy before each request it makes and checks where
redirects ended, so a page cannot steer yt-dlp itself into the private network either.

Threads: each yt-dlp call runs in `trio.to_thread.run_sync(..., abandon_on_cancel=True)` under
one CapacityLimiter shared by the whole bot. A cancelled or timed-out call returns at once; its
thread runs on until yt-dlp's socket timeout ends it, still holding its limiter token, so stuck
threads can never exceed `concurrency`. One query resolves at most half the threads' worth of
entries at a time, so a long playlist does not starve other guilds' queries.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import trio
import yt_dlp

from musicbot.core.messages import Resolved, Track
from musicbot.core.ports import ResolveError
from musicbot.sources.failures import GENERIC, explain
from musicbot.sources.info import (
    Candidate,
    Item,
    Listing,
    Pending,
    read_entry,
    read_listing,
    refusal,
)
from musicbot.sources.query import Query, QueryKind, QueryRules
from musicbot.sources.safety import UrlPolicy
from musicbot.sources.settings import SourceSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

MakeYtdl = Callable[[dict[str, Any], UrlPolicy], Any]
"""Builds the YoutubeDL for one call from its params and the UrlPolicy its requests obey.
The default is GuardedYoutubeDL; tests may add extractors (the object must be a context manager
with YoutubeDL's `extract_info` and `process_ie_result`)."""


class YtdlLog:
    """yt-dlp's `logger=`: its messages go to Python logging, and nothing to stdout or stderr.

    yt-dlp's errors are logged at INFO: each becomes a ResolveError that the user sees, and a
    typo or a dead link is not the operator's problem. Its warnings ("Falling back on generic
    information extractor" for every direct link) are INFO too.
    """

    def __init__(self, logger: logging.Logger = log) -> None:
        self._logger = logger

    def debug(self, message: str) -> None:
        self._logger.debug("%s", message)

    def info(self, message: str) -> None:
        self._logger.info("%s", message)

    def warning(self, message: str) -> None:
        self._logger.info("yt-dlp warning: %s", message)

    def error(self, message: str) -> None:
        self._logger.info("yt-dlp error: %s", message)


class GuardedYoutubeDL(yt_dlp.YoutubeDL):  # type: ignore[misc]  # yt-dlp ships no types
    """A YoutubeDL whose every HTTP request is checked by the UrlPolicy first, and whose
    responses are checked again where redirects ended (the request was made, but nothing of a
    private page's content comes back). A refusal raises ResolveError through yt-dlp.

    Closing it closes every response it opened, error responses included: yt-dlp's generic
    extractor leaves the response to a direct audio link open, and an HTTPError keeps its
    response; their sockets would otherwise wait for the garbage collector.
    """

    def __init__(
        self, params: dict[str, Any], policy: UrlPolicy, *, auto_init: bool = True
    ) -> None:
        super().__init__(params, auto_init=auto_init)
        self._musicbot_policy = policy
        self._musicbot_allowed: set[tuple[str, str]] = set()
        self._musicbot_responses: list[Any] = []

    def urlopen(self, req: Any) -> Any:
        self._musicbot_check(req if isinstance(req, str) else getattr(req, "url", ""))
        try:
            response = super().urlopen(req)
        except yt_dlp.networking.exceptions.HTTPError as exc:
            self._musicbot_responses.append(exc.response)  # extractors may still read it
            raise
        self._musicbot_responses.append(response)
        final = getattr(response, "url", None)
        if isinstance(final, str) and final:
            try:
                self._musicbot_check(final)
            except ResolveError:
                response.close()
                raise
        return response

    def close(self) -> None:
        responses, self._musicbot_responses = self._musicbot_responses, []
        for response in responses:
            with contextlib.suppress(Exception):
                response.close()
        super().close()

    def _musicbot_check(self, url: str) -> None:
        parts = urlsplit(url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
        key = (scheme, parts.netloc.lower())
        if key in self._musicbot_allowed:
            return
        self._musicbot_policy.check_blocking(parts._replace(scheme=scheme).geturl())
        self._musicbot_allowed.add(key)


def ytdl_params(settings: SourceSettings, logger: YtdlLog) -> dict[str, Any]:
    """The YoutubeDL options for every call (see the module docstring for the flow)."""
    return {
        "logger": logger,  # all output to logging: nothing on stdout or stderr
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "noplaylist": False,  # a playlist link means the playlist...
        "extract_flat": "in_playlist",  # ...listed, not resolved entry by entry in one thread
        "playlistend": settings.playlist_cap + 1,  # one past the cap: were any left out?
        "ignoreerrors": False,  # failures raise, typed; entries are resolved one by one instead
        "format": "bestaudio/best",  # audio only when the site offers it, else the best stream
        "socket_timeout": settings.resolve_timeout,  # ends a thread abandoned at the deadline
        "default_search": "error",  # words never turn into a search by yt-dlp's guessing
        "enable_file_urls": False,
    }


class YtdlResolver:
    """The Resolver port over yt-dlp: `await resolver.resolve("what the user typed")`.

    Build one per bot from SourceSettings; it is safe to share between guilds. Requester is left
    empty in the tracks: the caller knows who asked.
    """

    def __init__(
        self,
        settings: SourceSettings | None = None,
        *,
        make_ytdl: MakeYtdl = GuardedYoutubeDL,
        logger: YtdlLog | None = None,
    ) -> None:
        self.settings = settings = settings or SourceSettings()
        self.rules = QueryRules(
            search_prefix=settings.search_prefix, max_length=settings.max_query_length
        )
        self.policy = UrlPolicy(allow=settings.allow_hosts)
        self._make_ytdl = make_ytdl
        self._params = ytdl_params(settings, logger or YtdlLog())
        self._threads = trio.CapacityLimiter(settings.concurrency)
        self._fan_out = max(1, settings.concurrency // 2)

    def statistics(self) -> trio.CapacityLimiterStatistics:
        """The yt-dlp threads: borrowed (running or abandoned but still running) and waiting."""
        return self._threads.statistics()

    async def resolve(self, query: str) -> Resolved:
        """Raises ResolveError with a message for the user when nothing playable is found."""
        parsed = self.rules.parse(query)
        deadline = trio.current_time() + self.settings.resolve_timeout
        try:
            with trio.fail_at(deadline):
                target = parsed.target
                if parsed.kind is QueryKind.LINK:
                    target = await self.policy.check(parsed.text)
                listing = await self._in_thread(
                    functools.partial(self._list, parsed, target), where=_where(parsed, target)
                )
        except trio.TooSlowError:
            raise ResolveError(self._too_slow(parsed)) from None
        return await self._finish(parsed, listing, deadline)

    async def _finish(self, query: Query, listing: Listing, deadline: float) -> Resolved:
        """The listing's first playlist_cap items, each resolved and checked in its own task as
        far as the deadline allows: what is not done by then is left out (if that is
        everything, the query was too slow)."""
        items = listing.items[: self.settings.playlist_cap]
        beyond = max(listing.total or 0, len(listing.items)) - len(items)
        outcomes: list[Track | str | None] = [None] * len(items)  # None: not done in time
        lanes = trio.CapacityLimiter(self._fan_out)
        hosts: dict[tuple[str, int], _HostCheck] = {}

        async def settle(index: int, item: Item | None) -> None:
            outcomes[index] = await self._settle(item, lanes, hosts)

        with trio.move_on_at(deadline):
            async with trio.open_nursery() as workers:
                for index, item in enumerate(items):
                    workers.start_soon(settle, index, item)
        tracks = tuple(outcome for outcome in outcomes if isinstance(outcome, Track))
        problems = [outcome for outcome in outcomes if isinstance(outcome, str)]
        late = outcomes.count(None)
        if tracks:
            return Resolved(tracks, left_out=beyond + len(problems) + late)
        if late:
            raise ResolveError(self._too_slow(query))
        raise ResolveError(_nothing(query, problems))

    async def _settle(
        self,
        item: Item | None,
        lanes: trio.CapacityLimiter,
        hosts: dict[tuple[str, int], _HostCheck],
    ) -> Track | str:
        """One item as a Track, or the reason it is not played."""
        if item is None:
            return "I could not read this entry"
        if problem := self._refusal(item):  # a listed entry may already say it is too long
            return problem
        if isinstance(item, Pending):
            async with lanes:  # one query does not take every thread
                try:
                    item = await self._in_thread(
                        functools.partial(self._resolve_entry, item), where=_host_of(item.url)
                    )
                except ResolveError as exc:
                    return str(exc)
            if problem := self._refusal(item):
                return problem
        return await self._stream_problem(item.url, hosts) or item.to_track()

    async def _stream_problem(
        self, url: str, hosts: dict[tuple[str, int], _HostCheck]
    ) -> str | None:
        """The UrlPolicy's objection to a stream URL, if any. One DNS check per host and query:
        tasks after the first wait for its answer."""
        try:
            target = self.policy.parse(url)
        except ResolveError as exc:
            return str(exc)
        key = (target.host, target.port)
        check = hosts.get(key)
        if check is not None:
            await check.done.wait()
            return check.problem
        check = hosts[key] = _HostCheck()
        try:
            await self.policy.check(url)
            check.problem = None
        except ResolveError as exc:
            check.problem = str(exc)
        finally:
            check.done.set()
        return check.problem

    def _refusal(self, item: Item) -> str | None:
        return refusal(
            item,
            max_duration=self.settings.max_track_duration,
            allow_live=self.settings.allow_live,
        )

    def _too_slow(self, query: Query) -> str:
        what = "that link" if query.kind is QueryKind.LINK else f"“{_short(query.text)}”"
        seconds = f"{self.settings.resolve_timeout:g}"
        return f"looking up {what} took too long (over {seconds} seconds); try again later"

    async def _in_thread(self, work: Callable[[], T], *, where: str) -> T:
        return await trio.to_thread.run_sync(
            _plainly, work, where, abandon_on_cancel=True, limiter=self._threads
        )

    # --- in worker threads ------------------------------------------------------------------

    def _list(self, query: Query, target: str) -> Listing:
        page_url = target if query.kind is QueryKind.LINK else ""
        with self._make_ytdl(dict(self._params), self.policy) as ytdl:
            info = ytdl.extract_info(target, download=False)
        return read_listing(info if isinstance(info, Mapping) else None, page_url=page_url)

    def _resolve_entry(self, item: Pending) -> Candidate:
        if _is_web(item.url):
            self.policy.check_blocking(item.url)
        with self._make_ytdl(dict(self._params), self.policy) as ytdl:
            info = ytdl.process_ie_result(dict(item.entry), download=False)
        entry = read_entry(info, page_url=item.url)
        if isinstance(entry, Candidate):
            return entry
        raise ResolveError(f"I found nothing playable in “{item.title}”")


@attrs.define
class _HostCheck:
    """One host's UrlPolicy check, shared by a query's tasks. Fails closed until it is done."""

    problem: str | None = "I could not check where that audio is in time"
    done: trio.Event = attrs.Factory(trio.Event)


def _plainly(work: Callable[[], T], where: str) -> T:
    """Runs yt-dlp work in a worker thread; whatever goes wrong comes out as a ResolveError."""
    try:
        return work()
    except ResolveError:
        raise
    except yt_dlp.utils.YoutubeDLError as exc:
        raise ResolveError(explain(exc, where=where)) from exc
    except Exception as exc:
        log.exception("unexpected failure inside yt-dlp")
        raise ResolveError(GENERIC) from exc


def _where(query: Query, target: str) -> str:
    return _host_of(target) if query.kind is QueryKind.LINK else "the search site"


def _host_of(url: str) -> str:
    """The host (and port) of a URL for messages, like 127.0.0.1:8080; else "that site"."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        netloc = ""
    return _short(netloc.rpartition("@")[2], 60) or "that site"


def _is_web(url: str) -> bool:
    return urlsplit(url).scheme.lower() in ("http", "https")


def _nothing(query: Query, problems: list[str]) -> str:
    if not problems:
        if query.kind is QueryKind.SEARCH:
            return f"nothing found for “{_short(query.text)}”"
        return "there is nothing I can play at that link"
    if len(problems) == 1:
        return problems[0]
    return f"none of the {len(problems)} tracks there can be played: {problems[0]}"


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
