"""Bad input gets a clear private answer within seconds, and loses nothing: the guild's queue,
the other guilds and the process carry on. Also: pages, searches and playlists play."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from musicbot.testing.harness import LoopbackBot, open_loopback_bot, reply_to
from musicbot.testing.loopback import FakeMember, Message
from musicbot.testing.media import unreachable_url

SHORT = {
    "track_start_timeout": 3.0,
    "ffmpeg_read_timeout": 1.0,
    "resolve_timeout": 4.0,
    "max_queue_length": 4,
    "playlist_cap": 2,
    "max_track_duration": 3600.0,
}


@pytest.fixture
async def bot(media_cache: Path) -> AsyncIterator[LoopbackBot]:
    async with open_loopback_bot(guilds=2, media_cache=media_cache, **SHORT) as env:
        yield env


async def in_voice(env: LoopbackBot, guild: int, name: str) -> FakeMember:
    member = env.discord.member(guild=guild, name=name)
    await member.join_voice("Music")
    return member


async def play(member: FakeMember, query: str) -> Message:
    return await reply_to(await member.slash("play", query=query))


async def packets_grow(env: LoopbackBot, guild: int, by: int) -> None:
    mark = len(env.discord.rtp_packets(guild))
    await env.discord.wait_for(
        lambda: len(env.discord.rtp_packets(guild)) >= mark + by, what=f"audio in guild {guild}"
    )


async def test_a_search_resolves_through_yt_dlps_search_path(bot: LoopbackBot) -> None:
    alice = await in_voice(bot, 1, "alice")
    answer = await play(alice, "a 523 hz tone for 2 s")
    assert not answer.ephemeral
    assert (answer.embeds[0].description or "").startswith("[Tone 523 Hz]")
    fields = {f.name: f.value for f in answer.embeds[0].fields}
    assert fields["Duration"] == "0:02"
    await packets_grow(bot, 1, 60)
    assert bot.discord.audio(guild=1).dominant_hz == pytest.approx(523, abs=5)


async def test_a_page_with_an_audio_tag_plays(bot: LoopbackBot) -> None:
    alice = await in_voice(bot, 1, "alice")
    answer = await play(alice, bot.media.page_url(330, 2, title="A page with a song"))
    assert (answer.embeds[0].description or "").startswith("[A page with a song")
    await packets_grow(bot, 1, 60)
    assert bot.discord.audio(guild=1).dominant_hz == pytest.approx(330, abs=5)


async def test_a_repeated_query_comes_from_the_cache(bot: LoopbackBot) -> None:
    alice = await in_voice(bot, 1, "alice")
    url = bot.media.page_url(440, 1)
    await play(alice, url)
    await play(alice, url)
    assert bot.media.request_count(url) == 1  # yt-dlp read the page once
    cache = bot.app.supervisor.statistics().cache
    assert (cache.hits, cache.misses) == (1, 1)


async def test_a_playlist_past_its_cap_plays_the_first_and_says_how_many_were_left_out(
    bot: LoopbackBot,
) -> None:
    alice = await in_voice(bot, 1, "alice")
    answer = await play(alice, bot.media.playlist_url((300, 1), (400, 1), (500, 1)))
    embed = answer.embeds[0]
    assert {f.name: f.value for f in embed.fields}["Tracks added"] == "2"
    assert embed.footer == "1 more tracks were left out (playlist limit)"
    await packets_grow(bot, 1, 95)
    assert bot.discord.audio(guild=1, packets=slice(5, 45)).dominant_hz == pytest.approx(300, abs=5)
    assert bot.discord.audio(guild=1, packets=slice(55, 95)).dominant_hz == pytest.approx(
        400, abs=5
    )


def queries(env: LoopbackBot) -> dict[str, tuple[str, str]]:
    """Each bad query, and the start of the answer it must get."""
    media = env.media
    return {
        "unreachable": (unreachable_url(), "I could not play that: I could not reach"),
        "404": (media.not_found_url(), "I could not play that: "),
        "web page": (media.not_audio_url("page"), "I could not play that: "),
        "empty search": ("no such song anywhere", "I could not play that: nothing found"),
        "too long": ("a 440 hz tone of 4 h", "I could not play that: "),
        "file link": ("file:///etc/passwd", "I could not play that: I can only play http"),
        "private address": ("http://127.0.0.2/song.mp3", "I could not play that: "),
        "far too long": ("x" * 600, "I could not play that: that search is too long: 600"),
        "only controls": ("\x00\x07\u200b\u202e", "I could not play that: tell me what to play"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unreachable",
        "404",
        "web page",
        "empty search",
        "too long",
        "file link",
        "private address",
        "far too long",
        "only controls",
    ],
)
async def test_bad_input_gets_a_private_answer_and_loses_nothing(
    bot: LoopbackBot, case: str
) -> None:
    query, expected = queries(bot)[case]
    alice = await in_voice(bot, 1, "alice")
    bob = await in_voice(bot, 2, "bob")
    await play(alice, bot.media.tone_url(440, 20))
    await play(alice, bot.media.tone_url(550, 1))  # queued: must still be there afterwards
    await play(bob, bot.media.tone_url(660, 20))
    await packets_grow(bot, 1, 10)
    started = trio.current_time()
    answer = await play(alice, query)
    took = trio.current_time() - started
    assert answer.ephemeral
    assert (answer.content or "").startswith(expected), answer.content
    assert "Traceback" not in (answer.content or "")
    assert took < 6, f"{case} took {took:.1f} s to answer"
    # Nothing lost: both guilds still play, guild 1's queue is as it was.
    await packets_grow(bot, 1, 25)
    await packets_grow(bot, 2, 25)
    queue = await reply_to(await alice.slash("queue"))
    assert bot.media.tone_url(550, 1) in (queue.embeds[0].description or "")
    assert bot.app.supervisor.statistics().crashes == 0


@pytest.mark.parametrize("case", ["stalled", "noise"])
async def test_a_link_that_fails_to_play_gets_a_private_answer_when_it_would_start_now(
    bot: LoopbackBot, case: str
) -> None:
    url = bot.media.stalled_url(440, 3, after=2000) if case == "stalled" else None
    url = url or bot.media.not_audio_url("noise")
    alice = await in_voice(bot, 1, "alice")
    started = trio.current_time()
    answer = await play(alice, url)
    assert trio.current_time() - started < SHORT["track_start_timeout"] + 2
    assert answer.ephemeral
    assert (answer.content or "").startswith("I could not play that: "), answer.content
    assert "ffmpeg" not in (answer.content or "")
    # Nothing is left half-done: the next /play starts at once.
    again = await play(alice, bot.media.tone_url(440, 1))
    assert again.embeds[0].title == "Now playing"


async def test_a_queued_link_that_fails_is_announced_and_the_queue_moves_on(
    bot: LoopbackBot,
) -> None:
    alice = await in_voice(bot, 1, "alice")
    await play(alice, bot.media.tone_url(440, 1))
    await play(alice, bot.media.stalled_url(440, 3, after=2000))
    await play(alice, bot.media.tone_url(880, 1))
    await bot.discord.wait_for(
        lambda: any(
            "Could not play" in (m.content or "") for m in bot.discord.channel_messages(guild=1)
        ),
        what="the failure announced in the channel",
    )
    failure = next(
        m for m in bot.discord.channel_messages(guild=1) if "Could not play" in (m.content or "")
    )
    assert failure.content is not None
    assert failure.content.endswith("Moving on.")
    await bot.discord.wait_for(
        lambda: (bot.discord.audio(guild=1, packets=slice(-25, None)).dominant_hz or 0) > 850,
        what="the track after the failed one",
    )


async def test_a_truncated_file_plays_what_there_is_then_goes_on(bot: LoopbackBot) -> None:
    alice = await in_voice(bot, 1, "alice")
    await play(alice, bot.media.truncated_url(300, 4, keep=0.5))
    await play(alice, bot.media.tone_url(700, 1))
    await bot.discord.wait_for(
        lambda: (bot.discord.audio(guild=1, packets=slice(-30, None)).dominant_hz or 0) > 650,
        what="the next track",
    )
    heard = bot.discord.rtp_packets(1)
    assert bot.discord.audio(guild=1, packets=slice(5, 60)).dominant_hz == pytest.approx(300, abs=5)
    assert 80 <= len(heard) <= 170  # about half of 4 s, then the next one started


async def test_the_queue_limit_is_a_clear_answer(bot: LoopbackBot) -> None:
    alice = await in_voice(bot, 1, "alice")
    await play(alice, bot.media.tone_url(440, 20))
    for i in range(4):
        queued = await play(alice, bot.media.tone_url(500 + i, 1))
        assert not queued.ephemeral
    full = await play(alice, bot.media.tone_url(600, 1))
    assert full.ephemeral
    assert full.content == ("The queue is full (4 tracks); wait for some to play, or /remove some.")


async def test_other_scripts_and_odd_characters_are_searched_as_words(bot: LoopbackBot) -> None:
    alice = await in_voice(bot, 1, "alice")
    answer = await play(alice, "音楽 \u200b440 hz\x07 ♪")
    assert not answer.ephemeral, answer.content
    assert (answer.embeds[0].description or "").startswith("[Tone 440 Hz]")
    nothing = await play(alice, "موسيقى بلا تردد")
    assert nothing.ephemeral
    assert nothing.content == "I could not play that: nothing found for “موسيقى بلا تردد”."
