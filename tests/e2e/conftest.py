from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from musicbot.testing.harness import LoopbackBot, open_loopback_bot


@pytest.fixture
async def loopback(media_cache: Path) -> AsyncIterator[LoopbackBot]:
    async with open_loopback_bot(guilds=2, media_cache=media_cache) as env:
        yield env
