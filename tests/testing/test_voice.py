"""Voice through real discord.py: member voice states, the bot's voice handshake, RTP decrypted
and analysed by the fake, speaking and disconnect records."""

from __future__ import annotations

from collections.abc import Callable

import discord
import pytest
import trio
import trio_asyncio

from musicbot.testing.loopback import FakeDiscord


async def send_paced(voice_client: discord.VoiceClient, frames: list[bytes]) -> None:
    start = trio.current_time()
    for index, frame in enumerate(frames):
        await trio.sleep_until(start + index * 0.020)
        voice_client.send_audio_packet(frame, encode=False)


async def test_member_voice_state_reaches_the_client(fake_discord: FakeDiscord, run_client) -> None:
    async with run_client(sync=False) as client:
        alice = fake_discord.member(guild=1, name="alice")
        guild = client.get_guild(fake_discord.guild(1).id)
        assert guild is not None

        joined = client.wait_for(
            "voice_state_update", check=lambda m, b, a: m.id == alice.id, timeout=5
        )
        await alice.join_voice("Music")
        member, before, after = await trio_asyncio.run_aio_coroutine(joined)
        assert (
            before.channel is None and after.channel is not None and after.channel.name == "Music"
        )
        assert member.voice is not None and member.voice.channel is not None
        assert [m.name for m in after.channel.members] == ["alice"]

        moved = client.wait_for(
            "voice_state_update", check=lambda m, b, a: m.id == alice.id, timeout=5
        )
        await alice.join_voice("Lounge")
        _, before, after = await trio_asyncio.run_aio_coroutine(moved)
        assert before.channel is not None and before.channel.name == "Music"
        assert after.channel is not None and after.channel.name == "Lounge"

        left = client.wait_for(
            "voice_state_update", check=lambda m, b, a: m.id == alice.id, timeout=5
        )
        await alice.leave_voice()
        _, _, after = await trio_asyncio.run_aio_coroutine(left)
        assert after.channel is None and alice.voice_channel is None


async def test_bot_voice_audio_and_disconnect(
    fake_discord: FakeDiscord, run_client, opus_tone: Callable[..., list[bytes]]
) -> None:
    low, high = opus_tone(440, 50), opus_tone(880, 25)
    async with run_client(sync=False) as client:
        music = client.get_channel(fake_discord.guild(1).channel_id("Music"))
        assert isinstance(music, discord.VoiceChannel)

        voice_client = await trio_asyncio.aio_as_trio(music.connect)(timeout=10)
        status = await fake_discord.wait_bot_voice(guild=1, channel="Music")
        assert status.connected and status.mode == "aead_xchacha20_poly1305_rtpsize"
        assert fake_discord.bot_voice_channel(guild=2) is None

        await trio_asyncio.aio_as_trio(voice_client.ws.speak)(discord.SpeakingState.voice)
        await send_paced(voice_client, low)
        await fake_discord.wait_for(lambda: len(fake_discord.rtp_packets(guild=1)) >= 50)
        second_track_at = trio.current_time()
        await send_paced(voice_client, high)
        await fake_discord.wait_for(lambda: len(fake_discord.rtp_packets(guild=1)) >= 75)

        first = fake_discord.audio(guild=1, packets=slice(0, 50))
        assert first.packets == 50 and first.seconds == 1.0
        assert first.dominant_hz is not None and abs(first.dominant_hz - 440) <= 5
        assert first.decode_failures == 0 and first.sequence_gaps == 0
        assert -12 < first.rms_dbfs < -6  # a 0.5-amplitude sine reads about -9 dBFS
        assert first.spacing_p50_ms == pytest.approx(20, abs=3) and first.lateness_p50_ms < 10
        second = fake_discord.audio(guild=1, since=second_track_at)
        assert second.packets == 25
        assert second.dominant_hz is not None and abs(second.dominant_hz - 880) <= 5

        speaking = [event.speaking for event in fake_discord.voice(guild=1).speaking]
        assert speaking == [0, 1]  # "not speaking" on connect, then ours

        await trio_asyncio.aio_as_trio(voice_client.disconnect)()
        status = await fake_discord.wait_bot_voice(guild=1, channel=None)
        assert (status.sessions_opened, status.sessions_closed) == (1, 1)
        (close,) = status.closes
        assert (close.by, close.code) == ("client", 1000)

        fake_discord.clear_audio(guild=1)
        assert fake_discord.audio(guild=1).packets == 0
