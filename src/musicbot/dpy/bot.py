"""MusicBot (discord.py) and `open_bot`, which runs it inside Trio for the body of a block."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import aiohttp
import discord
import trio
import yarl
from discord import app_commands
from discord.ext import commands

from musicbot.audio.store import ProcessedSongStore
from musicbot.audio.stored import StoreBackedSource
from musicbot.config import Settings, StartupError
from musicbot.core.messages import EndReason
from musicbot.core.supervisor import ResourceSupervisor
from musicbot.dpy.announcer import Announcer
from musicbot.dpy.answers import answer_privately, explain
from musicbot.dpy.bridge import (
    asyncio_errors_logged,
    call_asyncio_from_trio,
    call_trio_from_asyncio,
    cancelled_timers_purged,
)
from musicbot.dpy.voice import DiscordVoices

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0


class MusicTree(app_commands.CommandTree["MusicBot"]):
    """Every interaction gets exactly one answer, errors included."""

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        command = interaction.command.name if interaction.command else "?"
        await answer_privately(interaction, explain(error, f"/{command}"))


IDENTIFY_INTERVAL = 5.0
"""Seconds between IDENTIFYs in one concurrency bucket (Discord's rule for shards)."""


class MusicBot(commands.AutoShardedBot):
    """The discord.py side of musicbot. Always sharded (one shard for a small bot): the gateway
    limits voice joins per shard connection, so a bot in many voice channels needs shards."""

    def __init__(
        self,
        settings: Settings,
        supervisor: ResourceSupervisor,
        announcer: Announcer,
        *,
        connector: aiohttp.BaseConnector,
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        intents.voice_states = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            connector=connector,
            help_command=None,
            # Messages quote titles and searches that strangers wrote ("@everyone"): no
            # message of the bot may ping anyone.
            allowed_mentions=discord.AllowedMentions.none(),
            tree_cls=MusicTree,
            guild_ready_timeout=settings.guild_ready_timeout,
            shard_count=settings.shard_count,
            # None (all shards) is discord.py's own default; its annotation leaves it out.
            shard_ids=list(settings.shard_ids) or None,  # type: ignore[arg-type]
        )
        self._identify_concurrency = 1  # Discord's max_concurrency, read at setup
        self.settings = settings
        self.supervisor = supervisor
        self.announcer = announcer
        self.store: ProcessedSongStore | None = None
        self.source: StoreBackedSource | None = None
        self.ready = trio.Event()

    async def setup_hook(self) -> None:
        _, _, limit = await self.http.get_bot_gateway()
        self._identify_concurrency = max(1, int(limit.get("max_concurrency", 1)))
        from musicbot.dpy.cogs.admin import Admin
        from musicbot.dpy.cogs.music import Music
        from musicbot.dpy.controls import PlayerButton, QueuePageButton, RetiredButton

        self.add_dynamic_items(PlayerButton, QueuePageButton, RetiredButton)
        await self.add_cog(Music(self))
        await self.add_cog(Admin(self))
        if self.settings.command_guilds:
            for guild_id in self.settings.command_guilds:
                guild = discord.Object(guild_id)
                self.tree.copy_global_to(guild=guild)
                await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py waits 5 s before every IDENTIFY but the first. Discord allows
        `max_concurrency` at once (shard_id % max_concurrency is the bucket), so shards start
        a round of that many at a time: a large bot starts in seconds, not minutes."""
        if initial:
            return
        if shard_id is None or shard_id % self._identify_concurrency == 0 or self.is_ready():
            await asyncio.sleep(IDENTIFY_INTERVAL)

    async def on_voice_state_update(
        self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        """Keep each player told whether anyone is still listening (the alone policy), and end
        it if Discord took the bot out of voice."""
        guild = member.guild
        if self.user is not None and member.id == self.user.id and after.channel is None:
            await call_trio_from_asyncio(self.supervisor.end, guild.id, EndReason.DISCONNECTED)
            return
        voice = guild.voice_client
        if voice is None or not isinstance(voice.channel, discord.VoiceChannel):
            return
        listeners = [m for m in voice.channel.members if not m.bot]
        await call_trio_from_asyncio(self._note_alone, guild.id, not listeners)

    async def _note_alone(self, guild_id: int, alone: bool) -> None:
        self.supervisor.set_alone(guild_id, alone)

    async def on_ready(self) -> None:
        log.info("logged in as %s in %d guilds", self.user, len(self.guilds))
        self.ready.set()


@contextmanager
def pointed_at(settings: Settings) -> Iterator[None]:
    """Aim discord.py at the configured Discord (real by default, or the loopback one).

    discord.py keeps these as class attributes; they are restored on the way out so that one
    process can run bots one after another (the test suite does).
    """
    websocket = discord.gateway.DiscordWebSocket
    saved = discord.http.Route.BASE, websocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = settings.api_base_url
    websocket.DEFAULT_GATEWAY = yarl.URL(settings.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE, websocket.DEFAULT_GATEWAY = saved


def ssl_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.ca_file:
        context.load_verify_locations(cafile=settings.ca_file)
    return context


@asynccontextmanager
async def open_bot(
    settings: Settings,
    supervisor: ResourceSupervisor,
    announcer: Announcer,
    *,
    store: ProcessedSongStore | None = None,
    source: StoreBackedSource | None = None,
    voices: DiscordVoices | None = None,
) -> AsyncIterator[MusicBot]:
    """Log in, connect and wait until ready; on leaving, close the gateway (bounded)."""
    if not settings.token:
        raise ValueError("open_bot needs settings.token")

    async def make() -> MusicBot:
        # aiohttp's connector must be made while the asyncio loop runs. Every gateway shard and
        # every voice connection holds one of its connections for as long as it lives, so no
        # pool limit (aiohttp's default of 100 would hang the 99th voice join): discord.py's
        # own default connector is unlimited too.
        connector = aiohttp.TCPConnector(ssl=ssl_context(settings), limit=0)
        bot = MusicBot(settings, supervisor, announcer, connector=connector)
        bot.store, bot.source = store, source
        return bot

    bot = await call_asyncio_from_trio(make)
    if voices is not None:
        # Before login: an interaction can arrive before READY (one queued while we were away).
        voices.client = bot
    with pointed_at(settings), asyncio_errors_logged(), cancelled_timers_purged():
        async with _running(bot, settings.token, announcer):
            yield bot


async def _run_client(bot: MusicBot, token: str) -> None:
    """discord.py's client until it closes; a refused token or an unreachable Discord is a
    StartupError with one clear line."""
    try:
        await call_asyncio_from_trio(bot.start, token)
    except discord.LoginFailure:
        raise StartupError(
            "Discord refused the bot token; check DISCORD_TOKEN (Developer Portal > Bot > Token)"
        ) from None
    except (aiohttp.ClientConnectorError, OSError) as exc:
        raise StartupError(f"cannot reach Discord at {discord.http.Route.BASE}: {exc}") from None


@asynccontextmanager
async def _running(bot: MusicBot, token: str, announcer: Announcer) -> AsyncIterator[None]:
    async with trio.open_nursery() as services:
        services.start_soon(_run_client, bot, token)
        services.start_soon(announcer.run, bot)
        try:
            await bot.ready.wait()
            yield
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await call_asyncio_from_trio(bot.close)
            services.cancel_scope.cancel()
