"""End to end: a simulated member runs slash commands, the real bot joins voice and is heard."""

from __future__ import annotations

import itertools
from pathlib import Path

import psutil
import pytest
import trio
import trio_asyncio

from musicbot.app import open_app
from musicbot.testing.harness import LoopbackBot, loopback_settings, reply_to
from musicbot.testing.loopback import open_fake_discord
from musicbot.testing.media import open_media_server


def ffmpeg_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "ffmpeg" in p.name()]


async def test_login_ready_and_command_sync(loopback: LoopbackBot) -> None:
    assert {"join", "play", "leave"} <= set(loopback.discord.commands)
    play = loopback.discord.commands["play"]
    assert [option.name for option in play.options] == ["query"]
    assert loopback.app.bot.is_ready()


async def test_play_a_tone_is_heard_at_its_frequency_in_paced_packets(
    loopback: LoopbackBot,
) -> None:
    discord, media = loopback.discord, loopback.media
    alice = discord.member(guild=1, name="alice")
    await alice.join_voice("Music")
    reply = await alice.slash("play", query=media.tone_url(440, 3))
    await reply.wait_for_followup()
    assert not reply.ephemeral
    assert reply.embeds[0].title == "Now playing"
    assert "440" in (reply.embeds[0].description or "")
    await discord.wait_bot_voice(guild=1, channel="Music")
    await discord.wait_for(lambda: len(discord.rtp_packets(1)) >= 150, what="3 s of audio")
    heard = discord.audio(guild=1)
    assert heard.seconds >= 2.5
    assert heard.dominant_hz == pytest.approx(440, abs=5)
    assert heard.decode_failures == 0  # no OpusHead/OpusTags reached the voice
    assert heard.sequence_gaps == 0
    assert heard.spacing_p50_ms == pytest.approx(20, abs=1)
    packets = discord.rtp_packets(1)
    sequences = [p.sequence for p in packets]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
    timestamps = [p.timestamp for p in packets]
    assert {b - a for a, b in itertools.pairwise(timestamps)} == {960}


async def test_two_guilds_play_different_tones_at_once(loopback: LoopbackBot) -> None:
    discord, media = loopback.discord, loopback.media
    for guild, freq in ((1, 440), (2, 880)):
        member = discord.member(guild=guild, name=f"user{guild}")
        await member.join_voice("Music")
        reply = await member.slash("play", query=media.tone_url(freq, 2))
        await reply.wait_for_followup()
    for guild in (1, 2):
        await discord.wait_for(
            lambda g=guild: len(discord.rtp_packets(g)) >= 90, what=f"audio in guild {guild}"
        )
    assert discord.audio(guild=1).dominant_hz == pytest.approx(440, abs=5)
    assert discord.audio(guild=2).dominant_hz == pytest.approx(880, abs=5)
    assert loopback.app.supervisor.statistics().active == 2


async def test_join_then_leave(loopback: LoopbackBot) -> None:
    discord = loopback.discord
    alice = discord.member(guild=1, name="alice")
    await alice.join_voice("Lounge")
    joined = await alice.slash("join")
    await joined.wait_for_followup()
    assert "Joined" in joined.content
    await discord.wait_bot_voice(guild=1, channel="Lounge")
    left = await alice.slash("leave")
    await left.wait_for_followup()
    assert "Left" in left.content
    await discord.wait_bot_voice(guild=1, channel=None)
    status = discord.voice(guild=1)
    assert not status.websocket_open
    assert loopback.app.supervisor.statistics().active == 0


async def test_leave_while_playing_stops_the_audio_and_ffmpeg(loopback: LoopbackBot) -> None:
    discord = loopback.discord
    alice = discord.member(guild=1, name="alice")
    await alice.join_voice("Music")
    reply = await alice.slash("play", query=loopback.media.tone_url(440, 30))
    await reply.wait_for_followup()
    await discord.wait_for(lambda: len(discord.rtp_packets(1)) >= 25, what="audio")
    assert ffmpeg_children()
    left = await alice.slash("leave")
    await left.wait_for_followup()
    await discord.wait_bot_voice(guild=1, channel=None)
    heard = len(discord.rtp_packets(1))
    await trio.sleep(0.3)
    assert len(discord.rtp_packets(1)) == heard
    assert ffmpeg_children() == []


async def test_play_without_being_in_voice_gets_a_private_answer(loopback: LoopbackBot) -> None:
    bob = loopback.discord.member(guild=1, name="bob")
    answer = await reply_to(await bob.slash("play", query=loopback.media.tone_url(440, 1)))
    assert answer.ephemeral
    assert answer.content == "Join a voice channel first, then ask again."
    assert loopback.discord.bot_voice_channel(1) is None


async def test_a_link_that_is_not_http_gets_a_private_answer_and_nothing_joins(
    loopback: LoopbackBot,
) -> None:
    bob = loopback.discord.member(guild=1, name="bob")
    await bob.join_voice("Music")
    answer = await reply_to(await bob.slash("play", query="file:///etc/passwd"))
    assert answer.ephemeral
    assert "I can only play http and https links" in answer.content
    assert loopback.app.supervisor.statistics().active == 0


async def test_a_member_in_another_channel_cannot_steer_the_bot(loopback: LoopbackBot) -> None:
    discord = loopback.discord
    alice = discord.member(guild=1, name="alice")
    carol = discord.member(guild=1, name="carol")
    await alice.join_voice("Music")
    await carol.join_voice("Lounge")
    reply = await alice.slash("play", query=loopback.media.tone_url(440, 10))
    await reply.wait_for_followup()
    await discord.wait_bot_voice(guild=1, channel="Music")
    for command, options in (("play", {"query": loopback.media.tone_url(880, 1)}), ("leave", {})):
        refused = await reply_to(await carol.slash(command, **options))
        assert refused.ephemeral
        assert "join it" in refused.content
    assert discord.bot_voice_channel(1) == "Music"


async def test_leaving_the_app_leaves_no_voice_connection_and_no_ffmpeg(
    media_cache: Path, tmp_path: Path
) -> None:
    async with (
        trio_asyncio.open_loop(),
        open_media_server(cache_dir=media_cache) as media,
        open_fake_discord(guilds=3) as discord,
    ):
        async with open_app(loopback_settings(discord, cache_dir=tmp_path)):
            for guild in (1, 2, 3):
                member = discord.member(guild=guild, name="dj")
                await member.join_voice("Music")
                reply = await member.slash("play", query=media.tone_url(300 + 100 * guild, 30))
                await reply.wait_for_followup()
            for guild in (1, 2, 3):
                await discord.wait_for(
                    lambda g=guild: len(discord.rtp_packets(g)) >= 10, what=f"audio in {guild}"
                )
            assert len(ffmpeg_children()) == 3
        # The app's nursery is closed: what it started must be gone, while Discord lives on.
        assert ffmpeg_children() == []
        for guild in (1, 2, 3):
            assert discord.bot_voice_channel(guild) is None
            assert not discord.voice(guild).websocket_open
        stats = discord.statistics()
        assert (stats.gateway_connections, stats.voice_websockets) == (0, 0)


async def test_a_bot_disconnected_by_a_moderator_stops_says_so_and_can_be_called_back(
    loopback: LoopbackBot,
) -> None:
    discord = loopback.discord
    alice = discord.member(guild=1, name="alice")
    await alice.join_voice("Music")
    reply = await alice.slash("play", query=loopback.media.tone_url(440, 30))
    await reply.wait_for_followup()
    await discord.wait_for(lambda: len(discord.rtp_packets(1)) >= 10, what="audio")
    await discord.faults.kick_from_voice(guild=1)
    await discord.wait_for(
        lambda: any(
            "disconnected from the voice" in (m.content or "") for m in discord.channel_messages(1)
        ),
        what="the departure announced",
    )
    assert loopback.app.supervisor.statistics().active == 0
    assert ffmpeg_children() == []
    again = await reply_to(await alice.slash("play", query=loopback.media.tone_url(660, 2)))
    assert not again.ephemeral
    await discord.wait_bot_voice(guild=1, channel="Music")
