"""`open_loopback_bot`: the real bot, logged into the loopback Discord, with the media server.

One call gives a test (or the demo) everything end to end: real discord.py, real ffmpeg, real
UDP, all on 127.0.0.1. Needs the `loopback` extra.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio_asyncio

from musicbot.app import App, open_app, resolver_for
from musicbot.config import Settings
from musicbot.testing.loopback import FakeDiscord, Interaction, Message, open_fake_discord
from musicbot.testing.media import MediaServer, open_media_server
from musicbot.testing.search import SEARCH_PREFIX, with_loopback_search


@attrs.frozen
class LoopbackBot:
    discord: FakeDiscord
    media: MediaServer
    app: App

    @property
    def settings(self) -> Settings:
        return self.app.settings


def loopback_settings(discord: FakeDiscord, *, cache_dir: Path, **overrides: Any) -> Settings:
    """Settings that aim the bot at `discord`, keeping its songs in `cache_dir`; everything else
    as an operator would set it."""
    values: dict[str, Any] = {
        "cache_dir": str(cache_dir),
        "token": discord.token,
        "api_base_url": discord.api_base,
        "gateway_url": discord.gateway_url,
        "ca_file": str(discord.ca_pem_path),
        "guild_ready_timeout": 0.05,
        # The media server is on loopback; an operator's bot would refuse it.
        "allow_hosts": ("127.0.0.1",),
        "search_prefix": SEARCH_PREFIX,
    }
    values.update(overrides)
    return Settings(**values)


def process_environment(
    discord: FakeDiscord | None, *, cache_dir: Path | str, **extra: str
) -> dict[str, str]:
    """The environment for a `musicbot run` process aimed at `discord` (None: at nothing),
    keeping its songs in `cache_dir`: this process's environment without any MUSICBOT_ or
    DISCORD_ variable of the user's, plus the loopback's, plus `extra` (MUSICBOT_... = value)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MUSICBOT_", "DISCORD_"))}
    env.update(
        MUSICBOT_CACHE_DIR=str(cache_dir),
        MUSICBOT_GUILD_READY_TIMEOUT="0.05",
        MUSICBOT_ALLOW_HOSTS="127.0.0.1",
        MUSICBOT_LOG_LEVEL="WARNING",
    )
    if discord is not None:
        env.update(
            DISCORD_TOKEN=discord.token,
            MUSICBOT_API_BASE_URL=discord.api_base,
            MUSICBOT_GATEWAY_URL=discord.gateway_url,
            MUSICBOT_CA_FILE=str(discord.ca_pem_path),
        )
    env.update(extra)
    return env


@asynccontextmanager
async def open_loopback_bot(
    *,
    guilds: int = 2,
    media_cache: Path | None = None,
    shards: int = 1,
    identify_concurrency: int = 1,
    voice_udp: tuple[str, int] | None = None,
    **settings: Any,
) -> AsyncIterator[LoopbackBot]:
    """Open a trio-asyncio loop, the media server, the loopback Discord and the bot in it.

    `settings` override the bot's Settings (for example `idle_timeout=5`). `media_cache` keeps
    generated tones between calls (tests pass one per session). `voice_udp` sends the bot's
    RTP to a receiver of the caller's; `shards` and `identify_concurrency` are what the fake
    Discord recommends and allows (see `open_fake_discord`).
    """
    async with (
        trio_asyncio.open_loop(),
        open_media_server(cache_dir=media_cache) as media,
        open_fake_discord(
            guilds=guilds,
            shards=shards,
            identify_concurrency=identify_concurrency,
            voice_udp=voice_udp,
        ) as discord,
    ):
        # A song store of its own unless given one, gone afterwards: never the user's cache.
        with tempfile.TemporaryDirectory(prefix="musicbot-store-") as scratch:
            settings.setdefault("cache_dir", Path(scratch))
            bot_settings = loopback_settings(discord, **settings)
            resolver = resolver_for(bot_settings, make_ytdl=with_loopback_search(media))
            with contextlib.closing(resolver):
                async with open_app(bot_settings, resolver=resolver) as app:
                    yield LoopbackBot(discord, media, app)


async def reply_to(interaction: Interaction) -> Message:
    """The message a user ends up seeing for a slash command: the immediate answer, or for a
    deferred ("thinking") one, the follow-up that replaced it (or the private one that followed
    the deleted placeholder)."""
    await interaction.wait_for_answer()
    if interaction.deferred:
        return await interaction.wait_for_followup()
    message = interaction.message
    assert message is not None, f"{interaction.name!r} was answered without a message"
    return message
