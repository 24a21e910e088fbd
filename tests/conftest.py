"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from musicbot.testing.media import MediaServer, open_media_server


@pytest.fixture(scope="session")
def media_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tone cache for the whole run: each tone is generated once, not once per test."""
    return tmp_path_factory.mktemp("tones")


@pytest.fixture
async def media(media_cache: Path) -> AsyncIterator[MediaServer]:
    async with open_media_server(cache_dir=media_cache) as server:
        yield server
