from pathlib import Path

import pytest

from musicbot.audio.store import open_store
from musicbot.core.messages import Resolved, Track
from musicbot.sources.persisted import PersistedResolver, from_json, to_json
from musicbot.testing import FakeResolver

ANSWER = Resolved(
    (Track("a", "http://x/a.mp3", page_url="http://x/a", duration=3.0, key="url:http://x/a.mp3"),),
    left_out=4,
)


def test_json_round_trip() -> None:
    assert from_json(to_json(ANSWER)) == ANSWER
    assert from_json({"tracks": [{"title": "a"}], "left_out": 0}) is None  # damaged: resolve again
    assert from_json("nonsense") is None


async def test_a_fresh_answer_survives_a_restart_and_an_old_one_is_resolved_again(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    resolver = FakeResolver({"a song": ANSWER})
    async with open_store(tmp_path, clock=lambda: now[0]) as store:
        first = PersistedResolver(resolver, store, max_age=1800)
        assert await first.resolve("a song") == ANSWER
    async with open_store(tmp_path, clock=lambda: now[0]) as store:  # a restart
        second = PersistedResolver(resolver, store, max_age=1800)
        now[0] += 1799
        assert await second.resolve("a song") == ANSWER
        assert resolver.calls == ["a song"]
        assert second.reused == 1
        now[0] += 2  # past max_age: stream links may have expired
        assert await second.resolve("a song") == ANSWER
        assert resolver.calls == ["a song", "a song"]


async def test_failures_are_not_kept(tmp_path: Path) -> None:
    from musicbot.core.ports import ResolveError

    resolver = FakeResolver({})
    async with open_store(tmp_path) as store:
        persisted = PersistedResolver(resolver, store, max_age=1800)
        for _ in range(2):
            with pytest.raises(ResolveError):
                await persisted.resolve("nothing")
    assert resolver.calls == ["nothing", "nothing"]
