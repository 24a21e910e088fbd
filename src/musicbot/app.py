"""The composition root: trio.run > trio-asyncio loop > supervisor > bot, nested by lifetime.

The supervisor is entered before the bot connects and left after it disconnects, so no player
(voice connection, ffmpeg process) can outlive the bot, and none can start before it.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio_asyncio

from musicbot.audio.command import FfmpegSettings
from musicbot.audio.ffmpeg import FfmpegSource
from musicbot.config import Settings
from musicbot.core.cache import LRUCache
from musicbot.core.player import PlayerLimits
from musicbot.core.ports import Resolver
from musicbot.core.supervisor import ResourceSupervisor, open_supervisor
from musicbot.dpy.announcer import Announcer
from musicbot.dpy.bot import MusicBot, open_bot
from musicbot.dpy.voice import DiscordVoices
from musicbot.sources.settings import SourceSettings
from musicbot.sources.ytdl import YtdlResolver

log = logging.getLogger(__name__)


@attrs.frozen
class App:
    settings: Settings
    supervisor: ResourceSupervisor
    bot: MusicBot


@asynccontextmanager
async def open_app(settings: Settings, *, resolver: Resolver | None = None) -> AsyncIterator[App]:
    """The running bot and its supervisor. Needs a running trio-asyncio loop.

    `resolver` replaces the yt-dlp resolver built from the settings (to embed musicbot with a
    catalogue of your own, or to search the loopback media server).
    """
    voices = DiscordVoices()
    announcer = Announcer()
    async with (
        open_supervisor(
            make_voice=voices,
            frame_source=frame_source_for(settings),
            resolver=resolver or resolver_for(settings),
            cache=LRUCache(
                max_size=settings.track_cache_size,
                ttl=settings.track_cache_ttl,
                clock=trio.current_time,
            ),
            max_connections=settings.max_connections,
            idle_timeout=settings.idle_timeout,
            cleanup_interval=settings.cleanup_interval,
            on_event=announcer.on_event,
            player_limits=PlayerLimits(
                max_queue_length=settings.max_queue_length,
                open_timeout=settings.track_start_timeout,
                stall_timeout=settings.track_stall_timeout,
            ),
        ) as supervisor,
        open_bot(settings, supervisor, announcer) as bot,
    ):
        voices.client = bot
        yield App(settings, supervisor, bot)


def frame_source_for(settings: Settings) -> FfmpegSource:
    return FfmpegSource(
        FfmpegSettings(
            executable=settings.ffmpeg_path,
            bitrate_kbps=settings.opus_bitrate,
            rw_timeout=settings.ffmpeg_read_timeout,
        )
    )


def resolver_for(settings: Settings, **options: Any) -> YtdlResolver:
    """The yt-dlp resolver as the settings describe it; `options` go to YtdlResolver."""
    return YtdlResolver(
        SourceSettings(
            search_prefix=settings.search_prefix,
            playlist_cap=settings.playlist_cap,
            max_track_duration=settings.max_track_duration,
            resolve_timeout=settings.resolve_timeout,
            allow_hosts=settings.allow_hosts,
            concurrency=settings.resolve_concurrency,
            allow_live=settings.allow_live,
            max_query_length=settings.max_query_length,
        ),
        **options,
    )


async def serve(settings: Settings) -> None:
    """Run the bot until SIGINT or SIGTERM; then shut down cleanly."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio_asyncio.open_loop(), open_app(settings):
            async for signum in signals:
                log.info("%s received: shutting down", signal.Signals(signum).name)
                break
