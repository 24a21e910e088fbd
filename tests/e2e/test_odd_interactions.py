"""Interactions that Discord sends, but oddly: from a guild the bot has no state for, from a
member who never joined voice, on an old message's buttons after the bot left or was reaped,
from a member in another channel, and on a button this version of the bot does not have.

Each gets exactly one clear private answer, and nothing breaks: the guild that was playing keeps
playing with its queue, nothing is logged as a failure, and nothing is left behind.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import discord
import pytest
import trio
from trio_asyncio import aio_as_trio

from musicbot.testing.harness import LoopbackBot, open_loopback_bot, reply_to
from musicbot.testing.leaks import census, no_leaks_since, rest_port
from musicbot.testing.loopback import AppCommand, CommandOption, FakeMember, Interaction, Message

SETTINGS = {
    "paused_timeout": 1.0,  # so that /cleanup reaps a paused player after a second
    "track_start_timeout": 5.0,
}
LONG = 30.0
"""Seconds of the tone that plays throughout a test: it must outlast the test."""

UNKNOWN_GUILD = (
    "I cannot see this server right now: I may have been removed from it, or Discord has not "
    "sent it to me yet. Try again in a minute, or ask an admin to add me again."
)
JOIN_FIRST = "Join a voice channel first, then ask again."
NOT_IN_VOICE = "I am not in a voice channel here."
NOT_PLAYING = "I am not playing here; start with /play."
ADMINS_ONLY = "Only people who can manage this server (or the bot's owners) can use that."
GONE = "I am not playing here any more; start again with /play."
NO_QUEUE = "I am not playing here any more, so there is no queue."
RETIRED = (
    "That button is from an older message and does nothing now; /nowplaying and /queue show "
    "fresh ones."
)


@pytest.fixture
async def bot(media_cache: Path) -> AsyncIterator[LoopbackBot]:
    async with open_loopback_bot(guilds=2, media_cache=media_cache, **SETTINGS) as env:
        yield env


@pytest.fixture
def complaints(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """What the bot and discord.py log at WARNING or above: must stay empty. An odd interaction
    is an answer, not a failure; `explain()` logs "... failed" only for a bug."""
    caplog.set_level(logging.WARNING)
    found: list[logging.LogRecord] = []
    yield found
    logged = caplog.get_records("call")  # the test's own phase: `records` is teardown's now
    found.extend(r for r in logged if r.name.startswith(("musicbot", "discord", "asyncio")))
    assert not found, "\n".join(f"{r.name}: {r.getMessage()}" for r in found)


# --- helpers ------------------------------------------------------------------------------------


def every_invocation(commands: dict[str, AppCommand]) -> list[tuple[str, dict[str, object]]]:
    """Every slash command the bot registered (each subcommand too), with valid options."""
    found: list[tuple[str, dict[str, object]]] = []

    def walk(path: str, options: Sequence[CommandOption]) -> None:
        subs = [o for o in options if o.type in (1, 2)]
        if subs:
            for sub in subs:
                walk(f"{path} {sub.name}", sub.options)
            return
        found.append((path, {o.name: valid_value(path, o) for o in options if o.required}))

    for command in commands.values():
        if command.type == 1:
            walk(command.name, command.options)
    return sorted(found)


def valid_value(path: str, option: CommandOption) -> object:
    """A value Discord's client would accept for the option."""
    if option.choices:
        return option.choices[0].value
    if option.type == 3:
        return "1:30" if path == "seek" else "a 440 hz tone"
    if option.type in (4, 10):
        return option.min_value if option.min_value is not None else 1
    if option.type == 5:
        return True
    raise AssertionError(f"/{path} {option.name}: add a value for option type {option.type}")


async def one_answer(interaction: Interaction) -> Message:
    """The one answer the user sees: within Discord's 3 s (or a deferral then one follow-up)."""
    message = await reply_to(interaction)
    with trio.move_on_after(0.3):  # a second answer would come right after the first
        await interaction.wait_for_followup(2 if interaction.deferred else 1)
        raise AssertionError(f"{interaction.name!r} was answered twice: {interaction.followups}")
    return message


async def private_answer(interaction: Interaction) -> str:
    message = await one_answer(interaction)
    assert message.ephemeral, f"{interaction.name!r} was answered in public: {message.content}"
    assert message.content, f"{interaction.name!r} was answered with no text"
    return message.content


async def in_voice(env: LoopbackBot, guild: int, name: str, channel: str = "Music") -> FakeMember:
    member = env.discord.member(guild=guild, name=name)
    await member.join_voice(channel)
    return member


async def play(member: FakeMember, query: str) -> Message:
    answer = await one_answer(await member.slash("play", query=query))
    assert not answer.ephemeral, answer.content
    return answer


async def playing_with_a_queue(env: LoopbackBot, member: FakeMember) -> tuple[Message, list[str]]:
    """The member's guild plays a long tone with two songs queued; the now-playing message and
    the queued links."""
    now = await play(member, env.media.tone_url(440, LONG))
    queued = [env.media.tone_url(550, 1), env.media.tone_url(660, 1)]
    for url in queued:
        await play(member, url)
    await packets_grow(env, member.guild, 10)
    return now, queued


async def packets_grow(env: LoopbackBot, guild: int, by: int) -> None:
    mark = len(env.discord.rtp_packets(guild))
    await env.discord.wait_for(
        lambda: len(env.discord.rtp_packets(guild)) >= mark + by, what=f"audio in guild {guild}"
    )


async def assert_queue_kept(member: FakeMember, queued: list[str]) -> None:
    listing = await one_answer(await member.slash("queue"))
    text = listing.embeds[0].description or ""
    assert text.startswith("**Playing:**"), text
    assert all(url in text for url in queued), text


# --- a guild the bot has no state for -----------------------------------------------------------


async def test_commands_from_a_guild_the_bot_has_no_state_for_get_a_private_answer(
    bot: LoopbackBot, complaints: list[logging.LogRecord]
) -> None:
    alice = await in_voice(bot, 1, "alice")
    _, queued = await playing_with_a_queue(bot, alice)
    ports = {rest_port(bot.discord)}
    baseline = census(ignore_ports=ports)
    # The bot is removed from guild 2 while its commands stay installed there; bob then joins
    # voice (an event for a guild discord.py no longer knows) and tries every command.
    await bot.discord.faults.forget_guild(2)
    bob = await in_voice(bot, 2, "bob")
    invocations = every_invocation(dict(bot.discord.commands))
    assert {"play", "skip", "volume", "seek", "remove", "cleanup"} <= {n for n, _ in invocations}
    for name, options in invocations:
        answer = await private_answer(await bob.slash(name, **options))
        assert answer == UNKNOWN_GUILD, f"/{name}: {answer}"
    # Nothing was spawned for guild 2, and guild 1 did not notice.
    assert bot.app.supervisor.find_player(bot.discord.guild(2).id) is None
    assert bot.discord.bot_voice_channel(2) is None
    await packets_grow(bot, 1, 25)
    await assert_queue_kept(alice, queued)
    await no_leaks_since(baseline, ignore_ports=ports)
    # Added back, the bot serves guild 2 as any other (bob's voice state came with the guild).
    await bot.discord.faults.restore_guild(2)
    answer = await play(bob, bot.media.tone_url(330, 2))
    assert answer.embeds[0].title == "Now playing"
    await packets_grow(bot, 2, 25)


# --- a member who never joined voice ------------------------------------------------------------

# What a member with no voice state hears back, where the bot plays and where it does not.
# /queue and /nowplaying need no voice: where the bot plays they answer in public (None).
NO_VOICE_ANSWERS: dict[str, tuple[str | None, str]] = {
    "cleanup": (ADMINS_ONLY, ADMINS_ONLY),
    "join": (JOIN_FIRST, JOIN_FIRST),
    "leave": (JOIN_FIRST, NOT_IN_VOICE),
    "loop": (JOIN_FIRST, NOT_IN_VOICE),
    "nowplaying": (None, NOT_PLAYING),
    "pause": (JOIN_FIRST, NOT_IN_VOICE),
    "play": (JOIN_FIRST, JOIN_FIRST),
    "queue": (None, NOT_PLAYING),
    "remove": (JOIN_FIRST, NOT_IN_VOICE),
    "resources": (ADMINS_ONLY, ADMINS_ONLY),
    "resume": (JOIN_FIRST, NOT_IN_VOICE),
    "seek": (JOIN_FIRST, NOT_IN_VOICE),
    "shuffle": (JOIN_FIRST, NOT_IN_VOICE),
    "skip": (JOIN_FIRST, NOT_IN_VOICE),
    "stop": (JOIN_FIRST, NOT_IN_VOICE),
    "volume": (JOIN_FIRST, NOT_IN_VOICE),
}


async def test_a_member_who_never_joined_voice_gets_a_private_answer_to_every_command(
    bot: LoopbackBot, complaints: list[logging.LogRecord]
) -> None:
    alice = await in_voice(bot, 1, "alice")
    _, queued = await playing_with_a_queue(bot, alice)
    invocations = every_invocation(dict(bot.discord.commands))
    assert sorted(NO_VOICE_ANSWERS) == [name for name, _ in invocations]
    ports = {rest_port(bot.discord)}
    baseline = census(ignore_ports=ports)
    for guild, column in ((1, 0), (2, 1)):
        carol = bot.discord.member(guild=guild, name="carol")  # never in voice
        for name, options in invocations:
            expected = NO_VOICE_ANSWERS[name][column]
            interaction = await carol.slash(name, **options)
            if expected is None:
                assert not (await one_answer(interaction)).ephemeral
            else:
                assert await private_answer(interaction) == expected, f"/{name} in {guild}"
    assert bot.discord.bot_voice_channel(2) is None
    await packets_grow(bot, 1, 25)
    await assert_queue_kept(alice, queued)
    await no_leaks_since(baseline, ignore_ports=ports)


# --- old messages' buttons ----------------------------------------------------------------------


async def test_an_old_messages_buttons_after_the_bot_left_get_a_private_answer(
    bot: LoopbackBot, complaints: list[logging.LogRecord]
) -> None:
    alice = await in_voice(bot, 1, "alice")
    # A playlist of 12: the queue has two pages, so /queue has page buttons.
    now = await play(alice, bot.media.playlist_url(*[(300 + 10 * i, 1) for i in range(12)]))
    pages = await one_answer(await alice.slash("queue"))
    assert [b.custom_id for b in pages.buttons] == ["musicbot:queue:0", "musicbot:queue:2"]
    ports = {rest_port(bot.discord)}
    left = await one_answer(await alice.slash("leave"))
    assert left.content == "Left <#{}>.".format(bot.discord.guild(1).channel_id("Music"))
    await bot.discord.wait_bot_voice(guild=1, channel=None)
    baseline = census(ignore_ports=ports)
    for button in ("pause", "skip", "stop"):
        assert await private_answer(await alice.press(now, f"musicbot:{button}")) == GONE
    assert await private_answer(await alice.press(pages, "musicbot:queue:2")) == NO_QUEUE
    assert bot.discord.bot_voice_channel(1) is None
    await no_leaks_since(baseline, ignore_ports=ports)
    # The same buttons work again once something plays: they act on the guild's player.
    await play(alice, bot.media.tone_url(440, LONG))
    await play(alice, bot.media.tone_url(550, 1))
    skipped = await one_answer(await alice.press(now, "musicbot:skip"))
    assert not skipped.ephemeral and (skipped.content or "").startswith("⏭ Alice skipped **")


async def test_an_old_messages_buttons_after_the_player_was_reaped_get_a_private_answer(
    bot: LoopbackBot, complaints: list[logging.LogRecord]
) -> None:
    alice = await in_voice(bot, 1, "alice")
    admin = bot.discord.member(guild=1, name="root", permissions=["manage_guild"])
    now = await play(alice, bot.media.tone_url(440, LONG))
    ports = {rest_port(bot.discord)}
    baseline = census(ignore_ports=ports)
    paused = await one_answer(await alice.press(now, "musicbot:pause"))
    assert next(b.custom_id for b in paused.buttons) == "musicbot:resume"
    # Paused past paused_timeout (1 s): the next sweep reaps it.
    await trio.sleep(SETTINGS["paused_timeout"] + 0.2)
    swept = await private_answer(await admin.slash("cleanup"))
    assert "1 player" in swept or "reaped" in swept.lower(), swept
    await bot.discord.wait_bot_voice(guild=1, channel=None)
    await bot.discord.wait_for(
        lambda: any(
            (m.content or "").startswith("Left the voice channel: the music was paused")
            for m in bot.discord.channel_messages(guild=1)
        ),
        what="the departure announced",
    )
    for button in ("resume", "skip", "stop"):
        assert await private_answer(await alice.press(now, f"musicbot:{button}")) == GONE
    assert bot.app.supervisor.find_player(bot.discord.guild(1).id) is None
    await no_leaks_since(baseline, ignore_ports=ports)


# --- presses from elsewhere ---------------------------------------------------------------------


async def test_a_press_from_a_member_elsewhere_gets_a_private_answer_and_changes_nothing(
    bot: LoopbackBot, complaints: list[logging.LogRecord]
) -> None:
    alice = await in_voice(bot, 1, "alice")
    now, queued = await playing_with_a_queue(bot, alice)
    ports = {rest_port(bot.discord)}
    baseline = census(ignore_ports=ports)
    bob = await in_voice(bot, 1, "bob", "Lounge")  # another voice channel
    carol = bot.discord.member(guild=1, name="carol")  # no voice at all
    music = bot.discord.guild(1).channel_id("Music")
    elsewhere = f"I am playing in <#{music}>; join it to control the music."
    for button in ("pause", "skip", "stop"):
        assert await private_answer(await bob.press(now, f"musicbot:{button}")) == elsewhere
        assert await private_answer(await carol.press(now, f"musicbot:{button}")) == JOIN_FIRST
    for command in ("skip", "stop", "pause", "leave"):
        assert await private_answer(await bob.slash(command)) == elsewhere
    added = await private_answer(await bob.slash("play", query=bot.media.tone_url(770, 1)))
    assert added == f"I am already playing in <#{music}>; join it to add music."
    # Still playing the first song, in Music, with the same queue.
    assert bot.discord.bot_voice_channel(1) == "Music"
    playing = await one_answer(await alice.slash("nowplaying"))
    assert bot.media.tone_url(440, LONG) in (playing.embeds[0].description or "")
    await packets_grow(bot, 1, 25)
    await assert_queue_kept(alice, queued)
    await no_leaks_since(baseline, ignore_ports=ports)


async def test_a_button_this_version_does_not_have_gets_a_private_answer(
    bot: LoopbackBot, complaints: list[logging.LogRecord]
) -> None:
    alice = await in_voice(bot, 1, "alice")
    _, queued = await playing_with_a_queue(bot, alice)
    # A message an older version posted, with buttons this one never registered.
    old_ids = ["musicbot:volume:up", "musicbot:skip:v1", "play-again", "musicbot:queue:x"]
    old = await post_as_an_older_version(bot, old_ids)
    ports = {rest_port(bot.discord)}
    baseline = census(ignore_ports=ports)
    for custom_id in old_ids:
        assert await private_answer(await alice.press(old, custom_id)) == RETIRED
    await packets_grow(bot, 1, 25)
    await assert_queue_kept(alice, queued)
    await no_leaks_since(baseline, ignore_ports=ports)


async def post_as_an_older_version(env: LoopbackBot, custom_ids: list[str]) -> Message:
    """Post, through the bot's own REST client, a message with buttons `custom_ids`, without
    registering any view for them in this process (as a message from a previous run)."""
    buttons = discord.ui.View(timeout=None)
    for custom_id in custom_ids:
        buttons.add_item(discord.ui.Button(label=custom_id[-20:], custom_id=custom_id))
    channel_id = next(iter(env.discord.guild(1).text_channels.values()))

    async def post() -> None:
        with discord.http.handle_message_parameters(content="Old controls", view=buttons) as p:
            await env.app.bot.http.send_message(channel_id, params=p)

    await aio_as_trio(post)()
    return await env.discord.wait_for(
        lambda: next(
            (m for m in env.discord.channel_messages(guild=1) if m.content == "Old controls"),
            None,
        ),
        what="the old message",
    )
