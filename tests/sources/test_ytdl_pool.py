"""YtdlResolver reuses its yt-dlp instances: one call at a time each, clean for every call."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pytest
import trio

from musicbot.core.ports import ResolveError
from musicbot.sources.safety import PRIVATE, UrlPolicy
from musicbot.sources.settings import SourceSettings
from musicbot.sources.ytdl import (
    GuardedYoutubeDL,
    YtdlPool,
    YtdlPoolStatistics,
    YtdlResolver,
)

if TYPE_CHECKING:
    from conftest import MediaServer

LOOPBACK = ("127.0.0.1",)


class Tracked(GuardedYoutubeDL):
    """The real thing, noting the responses it opened and whether it was closed."""

    def __init__(self, params: dict[str, Any], policy: UrlPolicy) -> None:
        super().__init__(params, policy)
        self.opened: list[Any] = []
        self.calls = 0
        self.closed = False

    def extract_info(self, url: str, download: bool) -> Any:
        self.calls += 1
        return super().extract_info(url, download=download)

    def urlopen(self, req: Any) -> Any:
        response = super().urlopen(req)
        self.opened.append(response)
        return response

    def close(self) -> None:
        self.closed = True
        super().close()


def tracked(**settings: Any) -> tuple[YtdlResolver, list[Tracked]]:
    """A resolver over the loopback server, and every yt-dlp instance it made, in order."""
    made: list[Tracked] = []

    def make(params: dict[str, Any], policy: UrlPolicy) -> Tracked:
        made.append(Tracked(params, policy))
        return made[-1]

    settings.setdefault("allow_hosts", LOOPBACK)
    return YtdlResolver(SourceSettings(**settings), make_ytdl=make), made


# --- reuse, through the resolver ------------------------------------------------------------


async def test_sequential_resolves_reuse_one_instance(media: MediaServer) -> None:
    subject, made = tracked()
    for path in ["/tone.mp3", "/one.html", "/tone.mp3", "/two.html"]:
        assert (await subject.resolve(media.url(path))).tracks
    (ytdl,) = made
    assert ytdl.calls == 4 and not ytdl.closed
    assert subject.ytdl_statistics() == YtdlPoolStatistics(idle=1, made=1, closed=0)


async def test_a_call_leaves_no_response_open(media: MediaServer) -> None:
    subject, made = tracked()
    await subject.resolve(media.url("/tone.mp3"))  # the generic extractor leaves this one open
    (ytdl,) = made
    assert ytdl.opened and all(response.closed for response in ytdl.opened)
    assert not ytdl.closed  # released, not closed: it waits for the next call


async def test_a_failing_call_throws_its_instance_away(media: MediaServer) -> None:
    subject, made = tracked()
    await subject.resolve(media.url("/tone.mp3"))
    with pytest.raises(ResolveError, match="HTTP 404"):
        await subject.resolve(media.url("/missing.mp3"))
    (failed,) = made
    assert failed.closed
    await subject.resolve(media.url("/tone.mp3"))
    assert len(made) == 2 and made[1] is not failed and not made[1].closed
    assert subject.ytdl_statistics() == YtdlPoolStatistics(idle=1, made=2, closed=1)


async def test_a_refusal_inside_yt_dlp_throws_its_instance_away(media: MediaServer) -> None:
    # Only "localhost" is allowed; the redirect to 127.0.0.1 is refused inside yt-dlp.
    media.serve("/moved", status=302, headers=(("Location", media.url("/tone.mp3")),))
    subject, made = tracked(allow_hosts=("localhost",))
    with pytest.raises(ResolveError):
        await subject.resolve(media.url("/moved", host="localhost"))
    (refused,) = made
    assert refused.closed
    assert subject.ytdl_statistics().idle == 0


async def test_every_call_asks_the_policy_again(
    media: MediaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the policy allowed for one query is not remembered for the next, even when the
    same yt-dlp instance serves both."""
    check_blocking = UrlPolicy.check_blocking
    checked: list[str] = []
    refuse = False

    def changing_its_mind(policy: UrlPolicy, url: str) -> str:
        checked.append(url)
        if refuse:
            raise ResolveError(PRIVATE)
        return check_blocking(policy, url)

    monkeypatch.setattr(UrlPolicy, "check_blocking", changing_its_mind)
    subject, made = tracked()
    url = media.url("/tone.mp3")
    await subject.resolve(url)
    await subject.resolve(url)
    assert checked == [url, url]  # once a call: the first call's answer was forgotten
    refuse = True
    with pytest.raises(ResolveError) as caught:
        await subject.resolve(url)
    assert str(caught.value) == PRIVATE
    assert media.requests == ["/tone.mp3", "/tone.mp3"]  # the third call made no request
    assert made[0].calls == 3  # all three on the one instance


class Exclusive:
    """A YoutubeDL stand-in that notices two threads using it at once.

    Every call waits at `barrier` until as many calls as the barrier's parties are inside
    `extract_info` together, so each round of calls runs concurrently for certain.
    """

    def __init__(self, barrier: threading.Barrier, overlaps: list[int]) -> None:
        self.barrier = barrier
        self.overlaps = overlaps
        self.in_use = threading.Lock()
        self.calls = 0

    def __enter__(self) -> Exclusive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def release(self) -> None:
        pass

    def extract_info(self, url: str, download: bool) -> Any:
        if not self.in_use.acquire(blocking=False):
            self.overlaps.append(id(self))
            raise AssertionError("two threads share one yt-dlp instance")
        try:
            self.calls += 1
            self.barrier.wait(timeout=30)  # a guard against hanging, not a timing assumption
            return {"id": url, "title": url, "url": "http://127.0.0.1:9/x.mp3", "ext": "mp3"}
        finally:
            self.in_use.release()


async def test_concurrent_calls_never_share_an_instance() -> None:
    concurrency = 3
    barrier = threading.Barrier(concurrency)
    overlaps: list[int] = []
    made: list[Exclusive] = []

    def make(params: dict[str, Any], policy: UrlPolicy) -> Exclusive:
        made.append(Exclusive(barrier, overlaps))
        return made[-1]

    subject = YtdlResolver(
        SourceSettings(allow_hosts=LOOPBACK, concurrency=concurrency), make_ytdl=make
    )
    titles: list[str] = []

    async def resolve(words: str) -> None:
        titles.extend(track.title for track in (await subject.resolve(words)).tracks)

    async with trio.open_nursery() as callers:
        for number in range(3 * concurrency):  # three rounds of `concurrency` calls at once
            callers.start_soon(resolve, f"song {number}")
    assert overlaps == []
    assert len(titles) == 3 * concurrency
    assert len(made) == concurrency  # each round reused the instances of the one before
    assert sorted(ytdl.calls for ytdl in made) == [3] * concurrency
    assert subject.ytdl_statistics() == YtdlPoolStatistics(
        idle=concurrency, made=concurrency, closed=0
    )


class SingleUse:
    """A YoutubeDL stand-in without `release()`: it cannot be made clean, so it is not reused."""

    exited = 0

    def __init__(self, params: dict[str, Any], policy: UrlPolicy) -> None:
        pass

    def __enter__(self) -> SingleUse:
        return self

    def __exit__(self, *exc_info: object) -> None:
        SingleUse.exited += 1

    def extract_info(self, url: str, download: bool) -> Any:
        return {"_type": "playlist", "entries": []}


async def test_an_instance_without_release_serves_one_call() -> None:
    SingleUse.exited = 0
    subject = YtdlResolver(SourceSettings(), make_ytdl=SingleUse)
    for _ in range(2):
        with pytest.raises(ResolveError, match="nothing found"):
            await subject.resolve("anything")
    assert SingleUse.exited == 2
    assert subject.ytdl_statistics() == YtdlPoolStatistics(idle=0, made=2, closed=2)


async def test_closing_the_resolver_closes_its_idle_instances(media: MediaServer) -> None:
    subject, made = tracked()
    await subject.resolve(media.url("/tone.mp3"))
    subject.close()
    assert made[0].closed
    # It still works, with a fresh instance for each call, closed after it.
    await subject.resolve(media.url("/tone.mp3"))
    assert len(made) == 2 and made[1].closed
    assert subject.ytdl_statistics() == YtdlPoolStatistics(idle=0, made=2, closed=2)


# --- the pool itself ------------------------------------------------------------------------


class Fake:
    def __init__(self) -> None:
        self.entered = 0
        self.exited = 0
        self.released = 0

    def __enter__(self) -> Fake:
        self.entered += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.exited += 1

    def release(self) -> None:
        self.released += 1


def fakes() -> tuple[YtdlPool, list[Fake]]:
    made: list[Fake] = []

    def make() -> Fake:
        made.append(Fake())
        return made[-1]

    return YtdlPool(make, max_idle=2), made


def test_the_idle_pool_is_capped() -> None:
    pool, made = fakes()
    with pool.borrow() as a, pool.borrow() as b, pool.borrow() as c, pool.borrow() as d:
        assert len({id(a), id(b), id(c), id(d)}) == 4
    assert pool.statistics() == YtdlPoolStatistics(idle=2, made=4, closed=2)
    # Given back d, c, b, a: the first two wait, the others are closed.
    assert [(f.entered, f.released, f.exited) for f in made] == [
        (1, 1, 1),
        (1, 1, 1),
        (1, 1, 0),
        (1, 1, 0),
    ]
    with pool.borrow() as again:
        assert again is c  # the most recently given back
    pool.close()
    assert [f.exited for f in made] == [1, 1, 1, 1]
    assert pool.statistics() == YtdlPoolStatistics(idle=0, made=4, closed=4)


def test_an_instance_whose_call_raised_is_closed_not_kept() -> None:
    pool, made = fakes()
    with pytest.raises(KeyError), pool.borrow():
        raise KeyError("formats")
    (failed,) = made
    assert (failed.released, failed.exited) == (0, 1)
    with pool.borrow() as fresh:
        assert fresh is not failed
    assert pool.statistics() == YtdlPoolStatistics(idle=1, made=2, closed=1)


def test_an_instance_whose_release_raised_is_closed_not_kept() -> None:
    pool, made = fakes()

    def broken() -> None:
        raise OSError("stuck")

    with pytest.raises(OSError, match="stuck"), pool.borrow() as ytdl:
        ytdl.release = broken
    assert made[0].exited == 1
    assert pool.statistics() == YtdlPoolStatistics(idle=0, made=1, closed=1)


def test_an_instance_given_back_after_close_is_closed() -> None:
    """A thread abandoned at the deadline may finish after the resolver was closed."""
    pool, made = fakes()
    with pool.borrow():
        pool.close()
    assert made[0].exited == 1
    assert pool.statistics() == YtdlPoolStatistics(idle=0, made=1, closed=1)
