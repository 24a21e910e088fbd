"""End to end: the music commands and buttons, judged by what the loopback Discord hears."""

from __future__ import annotations

import itertools
import re

import pytest
import trio

from musicbot.testing.harness import LoopbackBot, reply_to
from musicbot.testing.loopback import FakeMember, Message

GUILD = 1


async def member_in_music(env: LoopbackBot, name: str = "alice") -> FakeMember:
    member = env.discord.member(guild=GUILD, name=name)
    await member.join_voice("Music")
    return member


async def play(member: FakeMember, url: str) -> Message:
    answer = await reply_to(await member.slash("play", query=url))
    assert not answer.ephemeral, answer.content
    return answer


async def command(member: FakeMember, name: str, **options: object) -> Message:
    return await reply_to(await member.slash(name, **options))


async def heard(env: LoopbackBot, packets: int) -> None:
    await env.discord.wait_for(
        lambda: len(env.discord.rtp_packets(GUILD)) >= packets, what=f"{packets} packets"
    )


def hz(env: LoopbackBot, window: slice) -> float | None:
    return env.discord.audio(guild=GUILD, packets=window).dominant_hz


async def test_a_queue_of_three_tones_plays_in_order(loopback: LoopbackBot) -> None:
    alice = await member_in_music(loopback)
    first = await play(alice, loopback.media.tone_url(300, 1))
    second = await play(alice, loopback.media.tone_url(500, 1))
    third = await play(alice, loopback.media.tone_url(700, 1))
    assert [m.embeds[0].title for m in (first, second, third)] == [
        "Now playing",
        "Queued at position 1",
        "Queued at position 2",
    ]
    await heard(loopback, 150)
    assert hz(loopback, slice(5, 45)) == pytest.approx(300, abs=5)
    assert hz(loopback, slice(55, 95)) == pytest.approx(500, abs=5)
    assert hz(loopback, slice(105, 145)) == pytest.approx(700, abs=5)
    # One stream across the three tracks: no packet lost at the boundaries. (That the 20 ms
    # rhythm carries across them is proved on the virtual clock in tests/core.)
    assert loopback.discord.audio(guild=GUILD).sequence_gaps == 0
    # Each queued track that starts is announced in the channel, with its controls.
    await loopback.discord.wait_for(
        lambda: len(loopback.discord.channel_messages(guild=GUILD)) >= 2, what="announcements"
    )
    announced = loopback.discord.channel_messages(guild=GUILD)
    assert [m.embeds[0].title for m in announced] == ["Now playing", "Now playing"]
    assert {b.custom_id for b in announced[0].buttons} == {
        "musicbot:pause",
        "musicbot:skip",
        "musicbot:stop",
    }


async def test_skip_moves_to_the_next_tone(loopback: LoopbackBot) -> None:
    alice = await member_in_music(loopback)
    await play(alice, loopback.media.tone_url(600, 10))
    await play(alice, loopback.media.tone_url(900, 2))
    await heard(loopback, 20)
    skipped = await command(alice, "skip")
    assert skipped.content.startswith("⏭ Skipped")
    mark = len(loopback.discord.rtp_packets(GUILD))
    await heard(loopback, mark + 40)
    assert hz(loopback, slice(mark + 5, mark + 40)) == pytest.approx(900, abs=5)


async def test_stop_silences_and_empties_the_queue(loopback: LoopbackBot) -> None:
    alice = await member_in_music(loopback)
    await play(alice, loopback.media.tone_url(600, 10))
    await play(alice, loopback.media.tone_url(900, 10))
    await heard(loopback, 10)
    stopped = await command(alice, "stop")
    assert stopped.content == "⏹ Stopped and cleared the queue (2 tracks)."
    await trio.sleep(0.1)
    mark = len(loopback.discord.rtp_packets(GUILD))
    await trio.sleep(0.5)
    assert len(loopback.discord.rtp_packets(GUILD)) == mark
    queue = await command(alice, "queue")
    assert queue.embeds[0].description == "The queue is empty."
    assert loopback.discord.bot_voice_channel(GUILD) == "Music"  # stays connected


async def test_pause_leaves_a_gap_and_resume_continues_where_it_stopped(
    loopback: LoopbackBot,
) -> None:
    alice = await member_in_music(loopback)
    await play(alice, loopback.media.tone_url(440, 2))
    await heard(loopback, 25)
    assert (await command(alice, "pause")).content.startswith("⏸ Paused")
    await trio.sleep(0.1)
    mark = len(loopback.discord.rtp_packets(GUILD))
    await trio.sleep(0.6)
    assert len(loopback.discord.rtp_packets(GUILD)) == mark
    refused = await command(alice, "pause")
    assert refused.ephemeral
    assert (await command(alice, "resume")).content == "▶ Resumed."
    await heard(loopback, 100)
    await trio.sleep(1.2)
    packets = loopback.discord.rtp_packets(GUILD)
    assert 100 <= len(packets) <= 102  # every frame of the 2 s tone (and encoder padding)
    assert loopback.discord.audio(guild=GUILD).sequence_gaps == 0  # none lost
    gaps = [b.at - a.at for a, b in itertools.pairwise(packets)]
    assert max(gaps) >= 0.6
    assert sorted(gaps)[-2] < 0.1  # one pause, no other hole
    assert hz(loopback, slice(0, 100)) == pytest.approx(440, abs=5)


async def test_volume_50_lowers_the_level_by_6_db_without_a_long_gap(
    loopback: LoopbackBot,
) -> None:
    alice = await member_in_music(loopback)
    await play(alice, loopback.media.tone_url(440, 6))
    await heard(loopback, 60)
    assert (await command(alice, "volume", level=50)).content == "🔊 Volume 50 %."
    mark = len(loopback.discord.rtp_packets(GUILD))
    await heard(loopback, mark + 70)
    before = loopback.discord.audio(guild=GUILD, packets=slice(10, 50)).rms_dbfs
    after = loopback.discord.audio(guild=GUILD, packets=slice(mark + 20, mark + 60)).rms_dbfs
    assert after - before == pytest.approx(-6.02, abs=1.5)
    packets = loopback.discord.rtp_packets(GUILD)
    assert max(b.at - a.at for a, b in itertools.pairwise(packets)) < 0.2


async def test_seek_into_a_tone_leaves_the_rest_to_hear(loopback: LoopbackBot) -> None:
    alice = await member_in_music(loopback)
    await play(alice, loopback.media.tone_url(440, 4))
    await heard(loopback, 5)
    assert (await command(alice, "seek", timestamp="0:02")).content == "⏩ Jumped to 0:02."
    await trio.sleep(2.6)
    seconds = loopback.discord.audio(guild=GUILD).seconds
    assert 2.0 <= seconds <= 2.6  # about 2 s after the jump, plus what played before it


async def test_loop_track_repeats_it(loopback: LoopbackBot) -> None:
    alice = await member_in_music(loopback)
    await play(alice, loopback.media.tone_url(440, 1))
    assert (await command(alice, "loop", mode="track")).content == "🔁 Looping this track."
    await heard(loopback, 130)
    assert hz(loopback, slice(60, 120)) == pytest.approx(440, abs=5)
    assert (await command(alice, "loop", mode="off")).content == "🔁 Looping off."


def queued_links(message: Message) -> list[str]:
    description = message.embeds[0].description or ""
    return re.findall(r"`\d+\.` \[[^\]]*\]\(([^)]+)\)", description)


async def test_shuffle_keeps_the_same_songs_and_queue_shows_them(loopback: LoopbackBot) -> None:
    alice = await member_in_music(loopback)
    await play(alice, loopback.media.tone_url(200, 30))
    urls = [loopback.media.tone_url(300 + 10 * i, 1) for i in range(8)]
    for url in urls:
        await play(alice, url)
    listed = await command(alice, "queue")
    assert queued_links(listed) == urls
    assert "Playing:" in (listed.embeds[0].description or "")
    assert (await command(alice, "shuffle")).content == "🔀 Shuffled 8 songs."
    shuffled = queued_links(await command(alice, "queue"))
    assert sorted(shuffled) == sorted(urls)
    removed = await command(alice, "remove", position=1)
    assert removed.content.startswith("🗑 Removed")
    assert queued_links(await command(alice, "queue")) == shuffled[1:]


async def test_nowplaying_shows_the_track_the_requester_and_the_controls(
    loopback: LoopbackBot,
) -> None:
    alice = await member_in_music(loopback)
    url = loopback.media.tone_url(440, 10)
    await play(alice, url)
    await heard(loopback, 50)
    shown = await command(alice, "nowplaying")
    embed = shown.embeds[0]
    assert embed.title == "Now playing"
    assert url in (embed.description or "")
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Requested by"] == "Alice"  # the member's display name
    assert fields["Volume"] == "100 %"
    assert re.match(r"`0:0[1-3]` \(live\)|.*0:0[1-3]", fields["Progress"])
    assert {b.custom_id for b in shown.buttons} == {
        "musicbot:pause",
        "musicbot:skip",
        "musicbot:stop",
    }


async def test_the_now_playing_buttons_pause_resume_skip_and_stop(loopback: LoopbackBot) -> None:
    alice = await member_in_music(loopback)
    answer = await play(alice, loopback.media.tone_url(440, 10))
    await play(alice, loopback.media.tone_url(880, 10))
    await heard(loopback, 10)
    paused = await alice.press(answer, "musicbot:pause")
    await paused.wait_for_answer()
    edited = loopback.discord.message(answer.id)
    assert edited.embeds[0].title == "Now playing (paused)"
    assert "musicbot:resume" in {b.custom_id for b in edited.buttons}
    resumed = await alice.press(edited, "musicbot:resume")
    await resumed.wait_for_answer()
    assert loopback.discord.message(answer.id).embeds[0].title == "Now playing"
    skipped = await alice.press(answer, "musicbot:skip")
    await skipped.wait_for_answer()
    assert skipped.content is not None and "skipped" in skipped.content
    mark = len(loopback.discord.rtp_packets(GUILD))
    await heard(loopback, mark + 30)
    assert hz(loopback, slice(mark + 5, mark + 30)) == pytest.approx(880, abs=5)
    stopped = await alice.press(answer, "musicbot:stop")
    await stopped.wait_for_answer()
    assert stopped.content is not None and "stopped the music" in stopped.content


async def test_queue_pages_turn_with_buttons(loopback: LoopbackBot) -> None:
    alice = await member_in_music(loopback)
    await play(alice, loopback.media.tone_url(200, 30))
    urls = [loopback.media.tone_url(300 + i, 1) for i in range(23)]
    for url in urls:
        await play(alice, url)
    first = await command(alice, "queue")
    assert queued_links(first) == urls[:10]
    assert (first.embeds[0].footer or "").startswith("Page 1/3 · 23 tracks")
    turned = await alice.press(first, "musicbot:queue:2")
    await turned.wait_for_answer()
    second = loopback.discord.message(first.id)
    assert queued_links(second) == urls[10:20]
    assert {b.custom_id: b.disabled for b in second.buttons} == {
        "musicbot:queue:1": False,
        "musicbot:queue:3": False,
    }


async def test_controls_need_the_bot_and_the_member_in_one_channel(
    loopback: LoopbackBot,
) -> None:
    alice = await member_in_music(loopback)
    refused = await command(alice, "skip")
    assert (refused.ephemeral, refused.content) == (True, "I am not in a voice channel here.")
    await play(alice, loopback.media.tone_url(440, 10))
    carol = loopback.discord.member(guild=GUILD, name="carol")
    nowhere = await command(carol, "skip")
    assert (nowhere.ephemeral, nowhere.content) == (
        True,
        "Join a voice channel first, then ask again.",
    )
    await carol.join_voice("Lounge")
    elsewhere = await command(carol, "volume", level=10)
    assert elsewhere.ephemeral
    assert "join it to control the music" in (elsewhere.content or "")


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("seek", {"timestamp": "1:3x"}, "I could not read that time; write it like 1:30"),
        ("seek", {"timestamp": "9:99"}, "I could not read that time"),
        ("remove", {"position": 5}, "The queue is empty."),
        ("shuffle", {}, "There is nothing to shuffle"),
        ("resume", {}, "The music is not paused."),
    ],
)
async def test_impossible_requests_get_a_private_answer_and_playback_goes_on(
    loopback: LoopbackBot, name: str, options: dict[str, object], expected: str
) -> None:
    alice = await member_in_music(loopback)
    await play(alice, loopback.media.tone_url(440, 4))
    await heard(loopback, 10)
    answer = await command(alice, name, **options)
    assert answer.ephemeral
    assert (answer.content or "").startswith(expected)
    mark = len(loopback.discord.rtp_packets(GUILD))
    await heard(loopback, mark + 10)  # still playing


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("volume", {"level": 500}, "The volume goes from 0 to 200 %."),
        ("volume", {"level": -1}, "The volume goes from 0 to 200 %."),
        ("remove", {"position": 0}, "The queue is empty."),
        ("loop", {"mode": "sideways"}, "Loop takes off, track or queue."),
        ("seek", {"timestamp": "x" * 50}, "I could not read that time"),
    ],
)
async def test_option_values_out_of_range_get_a_private_answer(
    loopback: LoopbackBot, name: str, options: dict[str, object], expected: str
) -> None:
    """Discord's client keeps values in the declared ranges; an API client need not."""
    alice = await member_in_music(loopback)
    await play(alice, loopback.media.tone_url(440, 4))
    answer = await reply_to(await alice.slash(name, checked=False, **options))
    assert answer.ephemeral
    assert (answer.content or "").startswith(expected), answer.content
    await heard(loopback, 30)
