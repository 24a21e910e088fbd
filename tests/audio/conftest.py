from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from musicbot.testing.media import MediaServer, open_media_server


@pytest.fixture(scope="session")
def tone_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tone cache for the whole run: each tone is generated once."""
    return tmp_path_factory.mktemp("tones")


@pytest.fixture
async def media(tone_cache: Path) -> AsyncIterator[MediaServer]:
    async with open_media_server(cache_dir=tone_cache) as server:
        yield server
