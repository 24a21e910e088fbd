from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from musicbot.testing.harness import LoopbackBot, open_loopback_bot


@pytest.fixture(scope="session")
def media_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tones are generated once per test session, not once per test."""
    return tmp_path_factory.mktemp("tones")


@pytest.fixture
async def loopback(media_cache: Path) -> AsyncIterator[LoopbackBot]:
    async with open_loopback_bot(guilds=2, media_cache=media_cache) as env:
        yield env
