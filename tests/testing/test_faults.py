"""Fault hooks: what discord.py does when Discord's side misbehaves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import discord
import pytest
import trio
import trio_asyncio

from musicbot.testing.loopback import FakeDiscord


async def connect(
    fake_discord: FakeDiscord, client: discord.Client, *, give_up_after: float = 10
) -> discord.VoiceClient:
    music = client.get_channel(fake_discord.guild(1).channel_id("Music"))
    assert isinstance(music, discord.VoiceChannel)
    voice_client: discord.VoiceClient = await trio_asyncio.aio_as_trio(music.connect)(
        timeout=give_up_after
    )
    return voice_client


async def test_dropped_gateway_is_resumed_with_missed_events(
    fake_discord: FakeDiscord, run_client
) -> None:
    async with run_client(sync=False) as client:
        alice = fake_discord.member(guild=1, name="alice")
        joined = client.wait_for(
            "voice_state_update", check=lambda m, b, a: m.id == alice.id, timeout=5
        )
        await fake_discord.faults.drop_gateway(code=4000)
        await alice.join_voice("Music")  # while the bot is away: replayed on RESUME
        await fake_discord.wait_for(lambda: fake_discord.statistics().resumes == 1)
        _, _, after = await trio_asyncio.run_aio_coroutine(joined)
        assert after.channel is not None and after.channel.name == "Music"
        stats = fake_discord.statistics()
        assert (stats.identifies, stats.gateway_connections) == (1, 1)
        reply = await alice.slash("ping") if "ping" in fake_discord.commands else None
        assert reply is None  # no commands synced in this test; the session works on:
        await fake_discord.wait_ready()


async def test_unresumable_drop_makes_the_client_identify_again(
    fake_discord: FakeDiscord, run_client
) -> None:
    async with run_client(sync=False):
        await fake_discord.faults.drop_gateway(code=4000, resumable=False)
        await fake_discord.wait_for(lambda: fake_discord.statistics().identifies == 2)
        await fake_discord.wait_ready()
        assert fake_discord.statistics().resumes == 0


async def test_kick_from_voice(fake_discord: FakeDiscord, run_client) -> None:
    async with run_client(sync=False) as client:
        voice_client = await connect(fake_discord, client)
        await fake_discord.wait_bot_voice(guild=1, channel="Music")
        await fake_discord.faults.kick_from_voice(guild=1)
        status = await fake_discord.wait_bot_voice(guild=1, channel=None)
        assert status.sessions_closed == 1
        assert status.closes[0].code in (1000, 4014)
        await fake_discord.wait_for(lambda: not voice_client.is_connected())


async def test_stalled_voice_connect_times_out(fake_discord: FakeDiscord, run_client) -> None:
    fake_discord.faults.stall_voice_connect(guild=1)
    async with run_client(sync=False) as client:
        with pytest.raises(asyncio.TimeoutError):
            await connect(fake_discord, client, give_up_after=0.5)
        status = await fake_discord.wait_bot_voice(guild=1, channel=None)
        assert status.sessions_opened == 0


async def test_voice_websocket_closed_by_the_server(fake_discord: FakeDiscord, run_client) -> None:
    async with run_client(sync=False) as client:
        voice_client = await connect(fake_discord, client)
        await fake_discord.faults.close_voice(guild=1, code=4014)
        status = fake_discord.voice(guild=1)
        assert status.closes[0].by == "server" and status.closes[0].code == 4014
        assert not status.websocket_open
        await trio_asyncio.aio_as_trio(voice_client.disconnect)(force=True)
        await fake_discord.wait_bot_voice(guild=1, channel=None)


async def test_dropped_udp(
    fake_discord: FakeDiscord, run_client, opus_tone: Callable[..., list[bytes]]
) -> None:
    frames = opus_tone(440, 10)
    async with run_client(sync=False) as client:
        voice_client = await connect(fake_discord, client)
        fake_discord.faults.drop_udp(guild=1, seconds=60)
        for frame in frames:
            voice_client.send_audio_packet(frame, encode=False)
        await fake_discord.wait_for(lambda: fake_discord.voice(guild=1).udp_dropped == 10)
        fake_discord.faults.drop_udp(guild=1, seconds=0)
        for frame in frames:
            voice_client.send_audio_packet(frame, encode=False)
        await fake_discord.wait_for(lambda: fake_discord.voice(guild=1).packets == 10)
        report = fake_discord.audio(guild=1)
        assert report.sequence_gaps == 0  # the lost ones came before the first heard
        await trio_asyncio.aio_as_trio(voice_client.disconnect)()
        await trio.lowlevel.checkpoint()
