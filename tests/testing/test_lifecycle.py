"""Leaving `open_fake_discord()` closes every server and leaves no task behind."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
import trio
import trio_asyncio

from musicbot.testing.loopback import open_fake_discord


def asyncio_tasks() -> set[asyncio.Task[object]]:
    loop = trio_asyncio.current_loop.get()
    return set(asyncio.all_tasks(loop))


def port_of(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


async def test_exit_closes_servers_websockets_and_tasks(asyncio_loop: None) -> None:
    before = asyncio_tasks()
    closed: list[int | None] = []

    async def hold_gateway(url: str) -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            hello = await ws.receive_json()
            assert hello["op"] == 10
            message = await ws.receive()  # blocks until the fake goes away
            closed.append(message.data if message.type is aiohttp.WSMsgType.CLOSE else None)

    async with trio.open_nursery() as clients, open_fake_discord(guilds=3) as fake:
        ports = (port_of(fake.gateway_url), port_of("x:" + fake.voice_endpoint))
        ca_path = fake.ca_pem_path
        assert ca_path.read_text().startswith("-----BEGIN CERTIFICATE-----")
        clients.start_soon(trio_asyncio.aio_as_trio(hold_gateway), fake.gateway_url)
        await fake.wait_for(lambda: fake.statistics().gateway_connections == 1)
    assert closed == [1001]
    assert asyncio_tasks() == before
    assert not ca_path.exists()
    for port in ports:
        with pytest.raises(OSError, match="connect"):
            await trio.open_tcp_stream("127.0.0.1", port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", fake.udp_port))  # the UDP port is free again


async def test_needs_an_asyncio_loop() -> None:
    with pytest.raises(RuntimeError, match=r"trio_asyncio\.open_loop"):
        async with open_fake_discord():
            pass  # pragma: no cover


async def test_ids_are_snowflakes_spread_over_shards(asyncio_loop: None) -> None:
    async with open_fake_discord(guilds=4) as fake:
        ids = [g.id for g in fake.guilds]
        assert all(i > 10**17 for i in ids) and ids == sorted(ids)
        assert sorted((i >> 22) % 2 for i in ids) == [0, 0, 1, 1]
        assert sorted((i >> 22) % 4 for i in ids) == [0, 1, 2, 3]
        assert fake.application_id == fake.bot_user_id
