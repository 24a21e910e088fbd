"""The fixes MusicVoiceClient carries over discord.py 2.7's voice connection."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import discord
import trio

from musicbot.dpy.voice import _VoiceConnectionState
from musicbot.testing.harness import open_loopback_bot, reply_to


def test_a_quick_leave_confirmation_is_not_lost() -> None:
    state = _VoiceConnectionState.__new__(_VoiceConnectionState)

    async def leave() -> None:
        state._state = discord.voice_state.ConnectionFlowState.connected
        state._state_event = asyncio.Event()
        state._state_watchers = set()
        state._connected = asyncio.Event()
        state._disconnected = asyncio.Event()
        state._expecting_disconnect = False

        async def change_voice_state(*, channel: object) -> None:
            # Discord answers before the send returns: discord.py would see it now.
            if state._expecting_disconnect:
                state._disconnected.set()

        guild = SimpleNamespace(change_voice_state=change_voice_state)
        state.voice_client = SimpleNamespace(channel=SimpleNamespace(guild=guild))  # type: ignore[assignment]
        await state._voice_disconnect()

    asyncio.run(leave())
    assert state._disconnected.is_set()
    assert state.state is discord.voice_state.ConnectionFlowState.disconnected


def test_a_quick_answer_to_a_join_is_not_dropped() -> None:
    state = _VoiceConnectionState.__new__(_VoiceConnectionState)
    flow = discord.voice_state.ConnectionFlowState
    channel_id = 42

    async def join() -> None:
        state._state = flow.disconnected
        state._state_event = asyncio.Event()
        state._state_watchers = set()
        state._connected = asyncio.Event()

        async def change_voice_state(**_: object) -> None:
            # Discord's VOICE_STATE_UPDATE arrives before the send returns.
            await state.voice_state_update(
                {"channel_id": str(channel_id), "session_id": "s"}  # type: ignore[typeddict-item]
            )

        guild = SimpleNamespace(change_voice_state=change_voice_state)
        channel = SimpleNamespace(id=channel_id, guild=guild)
        state.voice_client = SimpleNamespace(channel=channel)  # type: ignore[assignment]
        await state._voice_connect(self_deaf=True)

    asyncio.run(join())
    assert state.state is flow.got_voice_state_update


def _readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("voice-socket-reader")]


async def test_leaving_ends_the_voice_reader_thread_at_once(media_cache: Path) -> None:
    async with open_loopback_bot(guilds=1, media_cache=media_cache) as loopback:
        discord_ = loopback.discord
        member = discord_.member(guild=1, name="dj")
        await member.join_voice("Music")
        await reply_to(await member.slash("play", query=loopback.media.tone_url(440, 5)))
        await discord_.wait_for(lambda: discord_.rtp_packets(1), what="audio")
        assert _readers()
        await reply_to(await member.slash("leave"))
        await discord_.wait_bot_voice(1, channel=None)
        # discord.py's reader waits in select() for up to 30 s unless woken.
        with trio.fail_after(5):
            while _readers():  # noqa: ASYNC110 (a thread's end wakes no Trio event)
                await trio.sleep(0.05)


async def test_voice_works_with_descriptors_numbered_past_select_s_limit(
    media_cache: Path,
) -> None:
    # A busy bot's sockets are numbered past 1024, where select() gives up.
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        async with open_loopback_bot(guilds=1, media_cache=media_cache) as loopback:
            discord_ = loopback.discord
            member = discord_.member(guild=1, name="dj")
            await member.join_voice("Music")
            answer = await reply_to(
                await member.slash("play", query=loopback.media.tone_url(440, 3))
            )
            assert not answer.ephemeral, answer.content
            await discord_.wait_for(lambda: len(discord_.rtp_packets(1)) >= 10, what="audio")
    finally:
        for descriptor in fillers:
            os.close(descriptor)
