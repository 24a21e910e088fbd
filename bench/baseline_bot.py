"""The baseline for the ttfa benchmark: a music bot written the way the common discord.py
tutorials (and discord.py's own examples/basic_voice.py) write one.

`/play` defers, runs `YoutubeDL.extract_info(query, download=False)` in the loop's default
executor, joins the invoker's voice channel if not there yet, and hands the stream URL to
`discord.FFmpegPCMAudio`: ffmpeg decodes to PCM and discord.py's AudioPlayer thread encodes
each 20 ms with libopus. `/leave` disconnects. No cache of any kind: every play resolves and
transcodes anew.

`open_baseline_bot(discord_)` runs it against the loopback Discord on the trio-asyncio loop,
aimed the way musicbot aims itself (`pointed_at`, `ssl_context`): configuration only.
"""

from __future__ import annotations

import asyncio
import glob
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import av
import discord
import imageio_ffmpeg
import trio
import trio_asyncio
import yt_dlp
from discord import app_commands

from musicbot.dpy.bot import pointed_at, ssl_context
from musicbot.testing.harness import loopback_settings
from musicbot.testing.loopback import FakeDiscord

YTDL_OPTIONS: dict[str, Any] = {
    "format": "bestaudio/best",
    "noplaylist": True,
    "quiet": True,
    "no_warnings": True,
    "default_search": "auto",
    "source_address": "0.0.0.0",  # IPv4: the loopback media server listens on 127.0.0.1
}
"""As the tutorials have them. Nothing more is needed for 127.0.0.1 links offline: yt-dlp's
generic extractor takes a direct link to an audio file."""

FFMPEG_BEFORE_OPTIONS = "-reconnect 1 -reconnect_streamed 1 -reconnect_delay_max 5"
FFMPEG_OPTIONS = "-vn"

START_TIMEOUT = 15.0

ClientT = TypeVar("ClientT", bound=discord.Client)


class TutorialBot(discord.Client):
    def __init__(self, **options: Any) -> None:
        super().__init__(intents=discord.Intents.default(), guild_ready_timeout=0.05, **options)
        self.tree = app_commands.CommandTree(self)
        self.ytdl = yt_dlp.YoutubeDL(YTDL_OPTIONS)
        self.ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
        add_commands(self)

    async def setup_hook(self) -> None:
        await self.tree.sync()


def add_commands(bot: TutorialBot) -> None:
    @bot.tree.command(description="Play a song from a link or a search.")
    async def play(interaction: discord.Interaction, query: str) -> None:
        member = interaction.user
        if not isinstance(member, discord.Member) or member.voice is None:
            await interaction.response.send_message("Join a voice channel first.")
            return
        await interaction.response.defer()
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(
            None, lambda: bot.ytdl.extract_info(query, download=False)
        )
        if "entries" in info:
            info = info["entries"][0]
        voice = interaction.guild.voice_client if interaction.guild else None
        if not isinstance(voice, discord.VoiceClient):
            channel = member.voice.channel
            assert channel is not None
            voice = await channel.connect()
        source = discord.FFmpegPCMAudio(
            info["url"],
            executable=bot.ffmpeg,
            before_options=FFMPEG_BEFORE_OPTIONS,
            options=FFMPEG_OPTIONS,
        )
        voice.play(source)
        await interaction.followup.send(f"Now playing: {info.get('title', query)}")

    @bot.tree.command(description="Leave the voice channel.")
    async def leave(interaction: discord.Interaction) -> None:
        voice = interaction.guild.voice_client if interaction.guild else None
        if voice is None:
            await interaction.response.send_message("I am not in a voice channel.")
            return
        await voice.disconnect(force=False)
        await interaction.response.send_message("Bye!")


def load_opus() -> None:
    """FFmpegPCMAudio needs libopus in discord.py; PyAV's wheel bundles one."""
    if discord.opus.is_loaded():
        return
    libs = Path(av.__file__).parent.parent / "av.libs"
    found = sorted(glob.glob(os.path.join(libs, "libopus*.so*")))
    if not found:
        raise RuntimeError(f"no libopus next to PyAV in {libs}")
    discord.opus.load_opus(found[0])


@asynccontextmanager
async def open_baseline_bot(discord_: FakeDiscord) -> AsyncIterator[TutorialBot]:
    """The tutorial bot logged into `discord_` and READY, its commands synced; closed on exit.
    Needs a running trio-asyncio loop."""
    load_opus()
    async with open_client(discord_, lambda connector: TutorialBot(connector=connector)) as bot:
        with trio.fail_after(START_TIMEOUT):
            await discord_.wait_for(lambda: "play" in discord_.commands, what="sync")
        yield bot


@asynccontextmanager
async def open_client(
    discord_: FakeDiscord, make: Callable[[aiohttp.BaseConnector], ClientT]
) -> AsyncIterator[ClientT]:
    """A discord.py client made by `make(connector)`, logged into `discord_` and READY; closed
    on exit. The connector is discord.py's default one (no pool limit) trusting the loopback
    CA. Needs a running trio-asyncio loop."""
    with tempfile.TemporaryDirectory(prefix="musicbot-baseline-") as scratch:
        settings = loopback_settings(discord_, cache_dir=Path(scratch))

        async def create() -> ClientT:
            return make(aiohttp.TCPConnector(ssl=ssl_context(settings), limit=0))

        client = await trio_asyncio.aio_as_trio(create)()
        with pointed_at(settings):
            async with trio.open_nursery() as client_tasks:
                try:
                    with trio.fail_after(START_TIMEOUT):
                        await trio_asyncio.aio_as_trio(client.login)(discord_.token)
                        client_tasks.start_soon(trio_asyncio.aio_as_trio(client.connect))
                        await trio_asyncio.aio_as_trio(client.wait_until_ready)()
                    yield client
                finally:
                    with trio.move_on_after(START_TIMEOUT, shield=True):
                        await trio_asyncio.aio_as_trio(client.close)()
                    client_tasks.cancel_scope.cancel()
