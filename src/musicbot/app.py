"""The composition root: trio.run > trio-asyncio loop > supervisor > bot, nested by lifetime.

The supervisor is entered before the bot connects and left after it disconnects, so no player
(voice connection, ffmpeg process) can outlive the bot, and none can start before it.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import trio_asyncio

from musicbot.audio.command import FfmpegSettings
from musicbot.audio.ffmpeg import FfmpegSource
from musicbot.audio.store import IndexVersionError, ProcessedSongStore, StoreLocked, open_store
from musicbot.audio.stored import StoreBackedSource, open_store_backed_source
from musicbot.config import Settings, StartupError
from musicbot.core.cache import LRUCache
from musicbot.core.player import PlayerLimits
from musicbot.core.ports import Resolver
from musicbot.core.supervisor import ResourceSupervisor, open_supervisor
from musicbot.dpy.announcer import Announcer
from musicbot.dpy.bot import MusicBot, open_bot
from musicbot.dpy.resources import shard_placement
from musicbot.dpy.voice import DiscordVoices
from musicbot.memory import HeapKeeper
from musicbot.metrics import ShardPlacement, open_metrics_server
from musicbot.sources.persisted import PersistedResolver
from musicbot.sources.settings import SourceSettings
from musicbot.sources.ytdl import YtdlResolver

log = logging.getLogger(__name__)

EXIT_AT_ONCE = 130


DRAIN_TIMEOUT = 4.0
"""Seconds shutdown gives players to leave voice before the gateway closes (5 s in all)."""


@attrs.frozen
class App:
    settings: Settings
    supervisor: ResourceSupervisor
    bot: MusicBot
    store: ProcessedSongStore
    source: StoreBackedSource
    metrics_url: str | None = None


@asynccontextmanager
async def open_app(settings: Settings, *, resolver: Resolver | None = None) -> AsyncIterator[App]:
    """The running bot and its supervisor. Needs a running trio-asyncio loop.

    `resolver` replaces the yt-dlp resolver built from the settings (to embed musicbot with a
    catalogue of your own, or to search the loopback media server).
    """
    check_cache_dir(settings.cache_dir)
    voices = DiscordVoices()
    announcer = Announcer()
    heap = HeapKeeper()
    built: YtdlResolver | None = None  # ours to close; a resolver given to us is not
    if resolver is None:
        resolver = built = resolver_for(settings)
    try:
        async with (
            open_song_store(settings) as store,
            open_store_backed_source(
                frame_source_for(settings), store, warm_concurrency=settings.warm_concurrency
            ) as source,
            open_supervisor(
                make_voice=voices,
                frame_source=source,
                warmer=source,
                resolver=PersistedResolver(resolver, store, max_age=settings.track_cache_ttl),
                cache=LRUCache(
                    max_size=settings.track_cache_size,
                    ttl=settings.track_cache_ttl,
                    clock=trio.current_time,
                ),
                max_connections=settings.max_connections,
                idle_timeout=settings.idle_timeout,
                alone_timeout=settings.alone_timeout,
                paused_timeout=settings.paused_timeout,
                cleanup_interval=settings.cleanup_interval,
                on_event=announcer.on_event,
                heap=heap,
                player_limits=PlayerLimits(
                    max_queue_length=settings.max_queue_length,
                    open_timeout=settings.track_start_timeout,
                    stall_timeout=settings.track_stall_timeout,
                    warm_ahead=settings.warm_ahead,
                ),
            ) as supervisor,
            # The bot is made later, inside open_bot: the metrics read its shards when scraped.
            open_metrics(
                settings, supervisor, shards=lambda: shard_placement(voices.client)
            ) as metrics_url,
            open_bot(
                settings, supervisor, announcer, store=store, source=source, voices=voices
            ) as bot,
        ):
            try:
                with heap.kept():
                    yield App(settings, supervisor, bot, store, source, metrics_url)
            finally:
                # Voice first, while the gateway can still carry the "left voice" updates.
                with trio.move_on_after(DRAIN_TIMEOUT, shield=True):
                    await supervisor.drain()
    finally:
        if built is not None:
            built.close()


@asynccontextmanager
async def open_metrics(
    settings: Settings,
    supervisor: ResourceSupervisor,
    *,
    shards: Callable[[], ShardPlacement | None] | None = None,
) -> AsyncIterator[str | None]:
    """The Prometheus endpoint, when `metrics_port` is set; yields its URL."""
    if settings.metrics_port is None:
        yield None
        return
    server = open_metrics_server(
        supervisor, host=settings.metrics_host, port=settings.metrics_port, shards=shards
    )
    async with AsyncExitStack() as stack:
        try:  # only binding: an OSError from the body is not the metrics' fault
            running = await stack.enter_async_context(server)
        except OSError as exc:
            where = f"{settings.metrics_host}:{settings.metrics_port}"
            raise StartupError(f"cannot serve metrics on {where}: {exc.strerror or exc}") from None
        log.info("metrics at %s", running.url)
        yield running.url


@asynccontextmanager
async def open_song_store(settings: Settings) -> AsyncIterator[ProcessedSongStore]:
    """The processed-song store in `cache_dir`, reconciled with its files. A damaged index is
    rebuilt from the song files (the store does it); what cannot be opened is one line."""
    store = open_store(
        settings.cache_dir,
        max_bytes=settings.store_max_bytes,
        max_track_seconds=settings.store_max_track_duration,
    )
    async with AsyncExitStack() as stack:
        try:  # only opening: nothing the body raises is about the lock
            opened = await stack.enter_async_context(store)
        except StoreLocked as exc:  # shared by bots: only `cache clear` has it to itself
            raise StartupError(str(exc)) from None
        except IndexVersionError as exc:
            raise StartupError(
                f"{exc}: run that musicbot, or give this one another cache_dir"
            ) from None
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(
                f"cannot open the song store in {settings.cache_dir}: {exc}"
            ) from None
        if settings.store_verify_on_start:
            await verify_most_played(opened, settings.store_verify_on_start)
        stats = opened.statistics()
        log.info(
            "song store %s: %d songs, %.1f MiB",
            settings.cache_dir,
            stats.entries,
            stats.bytes / 2**20,
        )
        yield opened


async def verify_most_played(store: ProcessedSongStore, count: int) -> int:
    """Checksum the `count` most played songs; returns how many were damaged (and dropped)."""
    songs = sorted(await store.songs(), key=lambda song: -song.play_count)[:count]
    damaged = 0
    for song in songs:
        if not await store.verify(song.key):
            damaged += 1
    log.info("song store: checked the %d most played songs, %d damaged", len(songs), damaged)
    return damaged


def check_cache_dir(path: str) -> None:
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StartupError(f"the cache directory {directory} is not writable: {reason}") from None


def frame_source_for(settings: Settings) -> FfmpegSource:
    try:
        return FfmpegSource(
            FfmpegSettings(
                executable=settings.ffmpeg_path,
                bitrate_kbps=settings.opus_bitrate,
                rw_timeout=settings.ffmpeg_read_timeout,
            )
        )
    except ValueError as exc:
        hint = "set ffmpeg_path to one, or leave it unset for the bundled one"
        raise StartupError(f"{exc}: {hint}") from None


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
    """Run the bot until SIGINT or SIGTERM, then shut down in order (voice, child processes,
    gateway) within about 5 s. A second signal exits at once."""
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as watchers:
            watchers.start_soon(_watch_signals, signals, stop)
            async with trio_asyncio.open_loop(), open_app(settings):
                log.info("running; SIGINT or SIGTERM stops")
                await stop.wait()
            watchers.cancel_scope.cancel()
    log.info("stopped cleanly")


async def _watch_signals(signals: AsyncIterator[int], stop: trio.Event) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if not stop.is_set():
            log.warning("%s: shutting down (send it again to exit at once)", name)
            stop.set()
        else:
            log.warning("%s again: exiting at once", name)
            os._exit(EXIT_AT_ONCE)
