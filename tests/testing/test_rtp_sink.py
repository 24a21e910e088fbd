"""The RTP sink: a voice receiver in another process, for load benchmarks."""

from __future__ import annotations

from pathlib import Path

import trio

from musicbot.testing.harness import open_loopback_bot, reply_to
from musicbot.testing.rtp_sink import FRAME_NS, Window, open_rtp_sink

SSRC = 1234


def test_lateness_missing_frames_and_lost_packets_are_told_apart() -> None:
    window = Window()
    start = 10**12
    # 0..4 on time; 5 arrives 3 ms late; 6 never arrives (lost on the way); then the sender
    # fell two frames behind (7 is due at 7 x 20 ms, sent at 9 x 20 ms) and kept that pace.
    for sequence, frame_time in [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (7, 9), (8, 10)]:
        window.add_rtp(SSRC, sequence, start + frame_time * FRAME_NS)
    window.add_rtp(SSRC, 5, start + 5 * FRAME_NS + 3_000_000)
    report = window.report()
    assert report["streams"] == 1 and report["packets"] == 8
    assert report["lost"] == 1
    assert report["expected"] == 11  # 0 ms to 200 ms: eleven 20 ms frames
    assert report["missing"] == 3  # the lost one and the two the sender never sent
    assert report["lateness_ms"]["max"] == 40.0  # 7 and 8: two frames behind schedule


def test_sequence_numbers_wrap_around() -> None:
    window = Window()
    for index, sequence in enumerate([65534, 65535, 0, 1]):
        window.add_rtp(SSRC, sequence, index * FRAME_NS)
    report = window.report()
    assert (report["packets"], report["lost"], report["missing"]) == (4, 0, 0)
    assert report["lateness_ms"]["max"] == 0.0


async def test_a_bot_pointed_at_the_sink_is_heard_there_and_not_by_the_fake(
    media_cache: Path,
) -> None:
    async with (
        open_rtp_sink() as sink,
        open_loopback_bot(guilds=1, voice_udp=sink.address, media_cache=media_cache) as loopback,
    ):
        member = loopback.discord.member(guild=1, name="dj")
        await member.join_voice("Music")
        answer = await reply_to(await member.slash("play", query=loopback.media.tone_url(440, 5)))
        assert not answer.ephemeral
        connected = await sink.report()
        assert connected["discoveries"] == 1  # the bot found its address through the sink
        await sink.mark()
        await trio.sleep(0.5)
        report = await sink.report()
        assert report["streams"] == 1 and report["packets"] >= 5
        assert report["lost"] == 0 and report["other_datagrams"] == 0
        assert not loopback.discord.rtp_packets(1)
