"""Fixtures that run real discord.py against the loopback Discord.

`fake_discord` opens an asyncio loop (trio-asyncio), the fake with two guilds, and points
discord.py's class attributes at it (restored afterwards). `run_client` starts a minimal
discord.Client with an app_commands.CommandTree that the test fills in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import av
import discord
import discord.gateway
import discord.http
import numpy as np
import pytest
import trio
import trio_asyncio
import yarl
from discord import app_commands

from musicbot.testing.loopback import FakeDiscord, open_fake_discord

CLIENT_TIMEOUT = 10.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "rejections_expected: the test makes the fake refuse requests on purpose"
    )
    config.addinivalue_line(
        "markers", "fake_options(**options): keyword arguments for open_fake_discord()"
    )


@pytest.fixture
async def asyncio_loop() -> AsyncIterator[None]:
    async with trio_asyncio.open_loop():
        yield


@pytest.fixture
async def fake_discord(
    asyncio_loop: None, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[FakeDiscord]:
    marker = request.node.get_closest_marker("fake_options")
    options = {"guilds": 2, **(marker.kwargs if marker else {})}
    async with open_fake_discord(**options) as fake:
        monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
        monkeypatch.setattr(
            discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url)
        )
        yield fake
        if request.node.get_closest_marker("rejections_expected") is None:
            assert fake.errors == ()


class LoopbackClient(discord.Client):
    def __init__(self, *, sync: bool, **options: Any) -> None:
        super().__init__(**options)
        self.tree = app_commands.CommandTree(self)
        self._sync = sync

    async def setup_hook(self) -> None:
        if self._sync:
            await self.tree.sync()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py waits 5 s before every IDENTIFY but the first (Discord's identify rate
        limit); a loopback Discord has none, and tests should stay fast."""


ClientFactory = Callable[..., Any]


@pytest.fixture
def run_client(fake_discord: FakeDiscord) -> ClientFactory:
    """`async with run_client(setup) as client:` where `setup(tree)` adds commands."""

    @asynccontextmanager
    async def run(
        setup: Callable[[app_commands.CommandTree[LoopbackClient]], None] | None = None,
        *,
        intents: discord.Intents | None = None,
        sync: bool = True,
        **options: Any,
    ) -> AsyncIterator[LoopbackClient]:
        async def make() -> LoopbackClient:
            connector = aiohttp.TCPConnector(ssl=fake_discord.client_ssl_context())
            return LoopbackClient(
                sync=sync,
                intents=intents or discord.Intents.default(),
                connector=connector,
                guild_ready_timeout=0.05,
                **options,
            )

        client = await trio_asyncio.aio_as_trio(make)()
        if setup is not None:
            setup(client.tree)
        async with trio.open_nursery() as client_tasks:
            try:
                with trio.fail_after(CLIENT_TIMEOUT):
                    await trio_asyncio.aio_as_trio(client.login)(fake_discord.token)
                client_tasks.start_soon(trio_asyncio.aio_as_trio(client.connect))
                with trio.fail_after(CLIENT_TIMEOUT):
                    await trio_asyncio.aio_as_trio(client.wait_until_ready)()
                yield client
            finally:
                with trio.move_on_after(CLIENT_TIMEOUT, shield=True):
                    await trio_asyncio.aio_as_trio(client.close)()

    return run


@pytest.fixture
def opus_tone() -> Callable[..., list[bytes]]:
    return make_opus_tone


def make_opus_tone(hz: float, frames: int, *, amplitude: float = 0.5) -> list[bytes]:
    """`frames` 20 ms Opus packets of a sine, encoded by PyAV's libopus (48 kHz stereo)."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = 48_000
    encoder.layout = "stereo"
    encoder.format = "s16"
    encoder.bit_rate = 96_000
    encoder.open()
    samples = np.arange(960 * (frames + 4)) / 48_000
    wave = (amplitude * np.sin(2 * np.pi * hz * samples) * 32767).astype(np.int16)
    stereo = np.repeat(wave[:, None], 2, axis=1).reshape(1, -1)
    packets: list[bytes] = []
    for index in range(frames + 4):
        chunk = np.ascontiguousarray(stereo[:, index * 1920 : (index + 1) * 1920])
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate = 48_000
        frame.pts = index * 960
        packets.extend(bytes(p) for p in encoder.encode(frame))
    return packets[:frames]
