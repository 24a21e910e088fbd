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

Inside yt-dlp, GuardedYoutubeDL asks the UrlPolicy before each request it makes and before each
redirect it would follow, so a page cannot steer yt-dlp itself into the private network either.

Threads: each yt-dlp call runs in `trio.to_thread.run_sync(..., abandon_on_cancel=True)` under
one CapacityLimiter shared by the whole bot. A cancelled or timed-out call returns at once; its
thread runs on until yt-dlp's socket timeout ends it, still holding its limiter token, so stuck
threads can never exceed `concurrency`. The links to one site (host and port) may hold all
but one of the threads, abandoned ones included, so a site that never answers cannot make every
other guild's lookup wait for it and time out (searches go to the search site the operator
chose, and are not held back so). One query resolves at most half the threads' worth of entries
at a time, so a long playlist does not starve other guilds' queries.

Instances: building a YoutubeDL costs tens of milliseconds and its first request as much again,
so a YtdlPool keeps up to `concurrency` idle ones. A worker thread borrows one for one call and
gives it back when the call succeeded, after `release()` closed the call's responses and forgot
which hosts the UrlPolicy allowed (each call checks them again); an instance whose call raised is
closed and thrown away. A thread abandoned at the deadline keeps its instance until it ends.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import urljoin, urlsplit

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
"""Builds a YoutubeDL from its params and the UrlPolicy its requests obey. The default is
GuardedYoutubeDL; tests may add extractors. The object must be a context manager with YoutubeDL's
`extract_info` and `process_ie_result`: it is entered when made and exited when thrown away. It is
reused for further calls only if it has GuardedYoutubeDL's `release()`; else it serves one call."""


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


class RedirectRefused(yt_dlp.networking.exceptions.RequestError):  # type: ignore[misc]
    """A redirect the UrlPolicy refused, raised inside a yt-dlp HTTP handler. As a RequestError
    it ends the request (yt-dlp would try its next handler after any other exception);
    GuardedYoutubeDL.urlopen turns it back into the refusal."""

    def __init__(self, refusal: ResolveError) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal


class GuardedYoutubeDL(yt_dlp.YoutubeDL):  # type: ignore[misc]  # yt-dlp ships no types
    """A YoutubeDL whose every HTTP request is checked by the UrlPolicy first, redirects
    included (before they are followed), and whose responses are checked again where they
    ended. A refusal raises ResolveError through yt-dlp.

    `release()` ends one call, so that the instance can serve another: it closes every response
    the call opened, error responses included (yt-dlp's generic extractor leaves the response to
    a direct audio link open, and an HTTPError keeps its response; their sockets would otherwise
    wait for the garbage collector). `close()` releases it and closes it for good.
    """

    def __init__(
        self, params: dict[str, Any], policy: UrlPolicy, *, auto_init: bool = True
    ) -> None:
        super().__init__(params, auto_init=auto_init)
        self._musicbot_policy = policy
        self._musicbot_allowed: set[tuple[str, str]] = set()
        self._musicbot_responses: list[Any] = []
        self._musicbot_guard_redirects()

    def _musicbot_guard_redirects(self) -> None:
        """Check each redirect's target before it is followed. yt-dlp's HTTP handlers follow
        redirects inside one `urlopen`, so a check only where they ended would let any page send
        the bot's request to a private address (it would be made, and its status told back).
        yt-dlp has no public hook for this: its handlers' sessions (requests) and openers
        (urllib) are wrapped as they are made. A yt-dlp that changed those fails here, loudly."""
        for name in ("Requests", "Urllib"):
            handler = self._request_director.handlers.get(name)
            if handler is not None:
                handler._create_instance = functools.partial(
                    self._musicbot_guarded, handler._create_instance
                )

    def _musicbot_guarded(self, make: Callable[..., Any], **kwargs: Any) -> Any:
        instance = make(**kwargs)
        hooks = getattr(instance, "hooks", None)  # a requests.Session
        if isinstance(hooks, dict):
            hooks["response"].append(self._musicbot_check_redirect)
            return instance
        for handler in instance.handlers:  # a urllib OpenerDirector
            if isinstance(handler, urllib.request.HTTPRedirectHandler):
                handler.redirect_request = functools.partial(  # type: ignore[method-assign]
                    self._musicbot_checked_redirect, handler.redirect_request
                )
                return instance
        raise RuntimeError(f"cannot guard redirects of yt-dlp's {type(instance).__name__}")

    def _musicbot_check_redirect(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        """requests' response hook: runs for every response, before a redirect is followed."""
        if response.is_redirect:
            try:
                self._musicbot_check(urljoin(response.url, response.headers["location"]))
            except ResolveError as refusal:
                response.close()
                raise RedirectRefused(refusal) from None
        return response

    def _musicbot_checked_redirect(
        self, follow: Callable[..., Any], req: Any, fp: Any, code: int, msg: str, headers: Any,
        new: str,
    ) -> Any:  # fmt: skip
        """urllib's HTTPRedirectHandler.redirect_request, after the UrlPolicy agreed."""
        try:
            self._musicbot_check(new)
        except ResolveError as refusal:
            fp.close()  # urllib closes it only when it follows the redirect
            raise RedirectRefused(refusal) from None
        return follow(req, fp, code, msg, headers, new)

    def urlopen(self, req: Any) -> Any:
        self._musicbot_check(req if isinstance(req, str) else getattr(req, "url", ""))
        try:
            response = super().urlopen(req)
        except RedirectRefused as exc:
            raise exc.refusal from None
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

    def release(self) -> None:
        """Forget the call just made: close its responses, and check every host with the
        UrlPolicy again on the next call (a host one user's query reached says nothing about the
        next query; the policy's own answer is what counts). Messages yt-dlp prints only once are
        forgotten too, so that they do not pile up. Extractors stay initialized, and cookies stay
        in the jar: YouTube's consent cookie is set once, when its extractor is initialized.
        """
        responses, self._musicbot_responses = self._musicbot_responses, []
        for response in responses:
            with contextlib.suppress(Exception):
                response.close()
        self._musicbot_allowed.clear()
        printed = getattr(self, "_printed_messages", None)  # yt-dlp's own: it may be renamed
        if isinstance(printed, set):
            printed.clear()

    def close(self) -> None:
        self.release()
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


@attrs.frozen
class YtdlPoolStatistics:
    idle: int
    """Instances waiting to be borrowed."""
    made: int
    """Instances built so far."""
    closed: int
    """Instances closed so far: their call raised, the pool was full or closed."""


@attrs.define(eq=False)
class _Lease:
    """A made instance: the context manager the factory returned, and what entering it gave."""

    manager: Any
    ytdl: Any

    def release(self) -> bool:
        """Makes the instance ready for another call; False when it cannot be."""
        release = getattr(self.ytdl, "release", None)
        if not callable(release):
            return False
        release()
        return True

    def close(self) -> None:
        try:
            self.manager.__exit__(None, None, None)
        except Exception:
            log.exception("could not close a yt-dlp instance")


class YtdlPool:
    """Idle YoutubeDL instances, borrowed by worker threads for one call at a time.

    `with pool.borrow() as ytdl:` runs in the worker thread. It takes an idle instance or makes
    one with `make()`, and gives it back when the block ends without an exception and the
    instance's `release()` readied it for another call. An instance whose call raised, or that
    has no `release()`, is closed instead; so are those given back while `max_idle` wait already,
    and those given back after `close()`. Thread-safe; never blocks (but for `make()`).
    """

    def __init__(self, make: Callable[[], Any], *, max_idle: int) -> None:
        self._make = make
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: list[_Lease] = []
        self._closed = False
        self._made = 0
        self._closed_count = 0

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Any]:
        lease = self._take()
        try:
            yield lease.ytdl
            reusable = lease.release()
        except BaseException:
            self._close(lease)
            raise
        if not reusable or not self._give_back(lease):
            self._close(lease)

    def close(self) -> None:
        """Close the idle instances. Those still borrowed are closed when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for lease in idle:
            self._close(lease)

    def statistics(self) -> YtdlPoolStatistics:
        with self._lock:
            return YtdlPoolStatistics(len(self._idle), self._made, self._closed_count)

    def _take(self) -> _Lease:
        with self._lock:
            if self._idle:
                return self._idle.pop()  # the most recently used: the warmest
        manager = self._make()
        lease = _Lease(manager, manager.__enter__())
        with self._lock:
            self._made += 1
        return lease

    def _give_back(self, lease: _Lease) -> bool:
        with self._lock:
            if self._closed or len(self._idle) >= self._max_idle:
                return False
            self._idle.append(lease)
            return True

    def _close(self, lease: _Lease) -> None:
        lease.close()
        with self._lock:
            self._closed_count += 1


class YtdlResolver:
    """The Resolver port over yt-dlp: `await resolver.resolve("what the user typed")`.

    Build one per bot from SourceSettings; it is safe to share between guilds. Requester is left
    empty in the tracks: the caller knows who asked. `close()` closes the idle yt-dlp instances
    it keeps for reuse.
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
        self._policy = policy = UrlPolicy(allow=settings.allow_hosts)
        params = ytdl_params(settings, logger or YtdlLog())
        self._ytdls = YtdlPool(
            lambda: make_ytdl(dict(params), policy), max_idle=settings.concurrency
        )
        self._threads = trio.CapacityLimiter(settings.concurrency)
        self.per_site = max(1, settings.concurrency - 1)
        """yt-dlp threads the links to one site may hold at once, abandoned ones included."""
        self._sites = _SiteLanes(self.per_site)
        self._fan_out = max(1, settings.concurrency // 2)

    @property
    def policy(self) -> UrlPolicy:
        """What may be fetched. Read-only: pooled yt-dlp instances keep the one they were made
        with."""
        return self._policy

    def statistics(self) -> trio.CapacityLimiterStatistics:
        """The yt-dlp threads: borrowed (running or abandoned but still running), and calls
        waiting for one (calls waiting for their site's turn are not counted)."""
        return self._threads.statistics()

    def busy_sites(self) -> int:
        """Sites with a yt-dlp call running or waiting for a thread (abandoned calls included)."""
        return len(self._sites)

    def ytdl_statistics(self) -> YtdlPoolStatistics:
        """The yt-dlp instances: idle, made and closed so far."""
        return self._ytdls.statistics()

    def close(self) -> None:
        """Close the idle yt-dlp instances. Calls still running close theirs when they end; any
        later call uses a fresh instance and closes it."""
        self._ytdls.close()

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
                    functools.partial(self._list, parsed, target),
                    where=_where(parsed, target),
                    site=_site(target) if parsed.kind is QueryKind.LINK else None,
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
                        functools.partial(self._resolve_entry, item),
                        where=_host_of(item.url),
                        site=_site(item.url),
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

    async def _in_thread(self, work: Callable[[], T], *, where: str, site: str | None) -> T:
        """`work` in a worker thread: one of the bot's threads, and one of its site's turns
        (`site` None: a search, which only needs a thread)."""
        limiter = self._threads
        if site is not None:
            # trio takes any object with CapacityLimiter's two *_on_behalf_of methods.
            limiter = cast(trio.CapacityLimiter, _SiteAndThread(self._sites, site, self._threads))
        return await trio.to_thread.run_sync(
            _plainly, work, where, abandon_on_cancel=True, limiter=limiter
        )

    # --- in worker threads ------------------------------------------------------------------

    def _list(self, query: Query, target: str) -> Listing:
        page_url = target if query.kind is QueryKind.LINK else ""
        with self._ytdls.borrow() as ytdl:
            info = ytdl.extract_info(target, download=False)
        return read_listing(info if isinstance(info, Mapping) else None, page_url=page_url)

    def _resolve_entry(self, item: Pending) -> Candidate:
        if _is_web(item.url):
            self.policy.check_blocking(item.url)
        with self._ytdls.borrow() as ytdl:
            info = ytdl.process_ie_result(dict(item.entry), download=False)
        entry = read_entry(info, page_url=item.url)
        if isinstance(entry, Candidate):
            return entry
        raise ResolveError(f"I found nothing playable in “{item.title}”")


class _SiteLanes:
    """A CapacityLimiter of `per_site` tokens for each site in use; a site's limiter is dropped
    once nobody holds or waits for it, so sites seen once do not pile up over months."""

    def __init__(self, per_site: int) -> None:
        self._per_site = per_site
        self._lanes: dict[str, trio.CapacityLimiter] = {}
        self._users: Counter[str] = Counter()

    async def acquire(self, site: str, borrower: object) -> None:
        lane = self._lanes.get(site)
        if lane is None:
            lane = self._lanes[site] = trio.CapacityLimiter(self._per_site)
        self._users[site] += 1
        try:
            await lane.acquire_on_behalf_of(borrower)
        except BaseException:
            self._forget(site)
            raise

    def release(self, site: str, borrower: object) -> None:
        self._lanes[site].release_on_behalf_of(borrower)
        self._forget(site)

    def _forget(self, site: str) -> None:
        self._users[site] -= 1
        if not self._users[site]:
            del self._users[site], self._lanes[site]

    def __len__(self) -> int:
        return len(self._lanes)


class _SiteAndThread:
    """The limiter of one yt-dlp call: a token of its site, then one of the bot's threads. trio
    releases it when the thread ends, also when the call was abandoned at its deadline, so a
    site that hangs holds at most `per_site` threads until yt-dlp's socket timeout frees them."""

    def __init__(self, sites: _SiteLanes, site: str, threads: trio.CapacityLimiter) -> None:
        self._sites = sites
        self._site = site
        self._threads = threads

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        await self._sites.acquire(self._site, borrower)
        try:
            await self._threads.acquire_on_behalf_of(borrower)
        except BaseException:
            self._sites.release(self._site, borrower)
            raise

    def release_on_behalf_of(self, borrower: object) -> None:
        self._threads.release_on_behalf_of(borrower)
        self._sites.release(self._site, borrower)


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


def _site(url: str) -> str:
    """Which site a URL is on, for the threads one site may hold: its host and port."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        netloc = ""
    return netloc.rpartition("@")[2].lower()


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
