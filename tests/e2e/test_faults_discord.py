"""Faults on Discord's side, against the running bot.

Three guilds each play a long tone with two more songs queued behind it. Then, in guild 1 only,
Discord misbehaves: its voice websocket is closed (4015 voice server crashed, 4006 session no
longer valid, 4014 disconnected, or dropped with no close frame), the main gateway drops (a
resumable session, or an invalid one), or its UDP is lost for a while.

What a music bot owes its users then, checked each time:
- guild 1 gets its music back: the same track, from about where it was, with the same queue;
  or, when Discord took the bot out of voice (or would not take it back), it says so in the
  text channel, and the next /play starts afresh;
- guilds 2 and 3 never notice: their RTP keeps coming at 50 packets a second throughout (less
  only what the shared machine's own stalls of this process explain, see `Starvation`);
- nothing is left behind: Trio tasks, ffmpeg processes, descriptors and threads are back to what
  they were with the same guilds playing before the fault.
Recovery is measured from the fault to the first RTP packet heard again in guild 1.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

from musicbot.core.player import RESYNC_AFTER
from musicbot.dpy.voice import NEW_SESSION_ATTEMPTS, NEW_SESSION_BACKOFF
from musicbot.testing.harness import LoopbackBot, open_loopback_bot, reply_to
from musicbot.testing.leaks import Census, census, no_leaks_since, rest_port
from musicbot.testing.loopback import FakeDiscord, FakeMember, Message, RtpPacket

AFFECTED = 1
OTHERS = (2, 3)
GUILDS = (AFFECTED, *OTHERS)
LONG_SECONDS = 60
QUEUED_SECONDS = 5
FRAMES_PER_SECOND = 50
WINDOW = 3.0
"""The shortest stretch over which the other guilds' packets are counted."""
LONGEST_GAP_MS = 200
"""The longest silence allowed in the other guilds during a fault, beyond the time the machine
did not run this process (see `Starvation`)."""
TICK = 0.010
STALL = RESYNC_AFTER
"""The starvation watch wakes every TICK; a wake later than STALL is a stall that costs frames:
a player that late resyncs instead of bursting (see Starvation)."""
FRAMES_DUE = 0.95
"""The share of the frames due in a window that must arrive, beyond those the machine's
starving of this process explains."""
RECOVERY_BOUND = 3.0
"""Seconds a reconnection may take, fault to sound (measured: well under one)."""
DEPARTURE_BOUND = 1.0
"""Seconds to say the bot was disconnected (measured: some 10 ms; a second leave waiting for a
confirmation that never comes made it 2 s)."""
HEARD_AGAIN = 50
"""Packets (a second) to hear in guild 1 after a recovery, to judge what it plays."""

PLAYING = re.compile(r"\*\*Playing:\*\* \[[^\]]*\]\(([^)]+)\) `([0-9:]+) / ")
QUEUED = re.compile(r"`\d+\.` \[[^\]]*\]\(([^)]+)\)")


@attrs.frozen
class Guild:
    index: int
    dj: FakeMember
    songs: tuple[str, str, str]
    """The long tone playing, then the two queued."""
    hz: int
    """The long tone's frequency."""


@attrs.frozen
class Band:
    env: LoopbackBot
    guilds: dict[int, Guild]

    @property
    def discord(self) -> FakeDiscord:
        return self.env.discord

    def packets(self, guild: int) -> tuple[RtpPacket, ...]:
        return self.env.discord.rtp_packets(guild)


def tone_hz(guild: int, song: int) -> int:
    """Distinct frequencies: guild 1 plays 330, 440, 550 Hz; guild 2 660...; guild 3 990..."""
    return 330 * guild + 110 * song


@pytest.fixture
async def band(media_cache: Path) -> AsyncIterator[Band]:
    async with open_loopback_bot(guilds=len(GUILDS), media_cache=media_cache) as env:
        yield await start_playing(env)


async def start_playing(env: LoopbackBot) -> Band:
    guilds = {}
    for index in GUILDS:
        dj = env.discord.member(guild=index, name="dj")
        await dj.join_voice("Music")
        songs = (
            env.media.tone_url(tone_hz(index, 0), LONG_SECONDS),
            env.media.tone_url(tone_hz(index, 1), QUEUED_SECONDS),
            env.media.tone_url(tone_hz(index, 2), QUEUED_SECONDS),
        )
        for song in songs:
            answer = await reply_to(await dj.slash("play", query=song))
            assert not answer.ephemeral, answer.content
        guilds[index] = Guild(index, dj, songs, tone_hz(index, 0))
    band = Band(env, guilds)
    for index in GUILDS:
        await heard_since(band, index, 0, FRAMES_PER_SECOND)
    return band


async def heard_since(band: Band, guild: int, mark: int, packets: int) -> None:
    """Wait until `packets` more RTP packets than `mark` arrived in `guild`."""
    await band.discord.wait_for(
        lambda: len(band.packets(guild)) >= mark + packets,
        what=f"{packets} packets in guild {guild}",
    )


# --- before and after ------------------------------------------------------------------------


async def settled_census(band: Band) -> Census:
    """The census once the bot is steady (the queued songs' warming ffmpeg done): two readings
    half a second apart that agree."""
    ports = {rest_port(band.discord)}
    with trio.fail_after(15):
        while True:
            first = census(ignore_ports=ports)
            await trio.sleep(0.5)
            second = census(ignore_ports=ports)
            if not first.over(second) and not second.over(first):
                return second


async def nothing_left_behind(band: Band, baseline: Census) -> None:
    await no_leaks_since(baseline, ignore_ports={rest_port(band.discord)})


async def command(member: FakeMember, name: str, **options: object) -> Message:
    return await reply_to(await member.slash(name, **options))


async def queue_seen_by(member: FakeMember) -> tuple[str, float, list[str]]:
    """What /queue shows: the song playing, its elapsed seconds, and the songs queued."""
    shown = await command(member, "queue")
    assert not shown.ephemeral, shown.content
    description = shown.embeds[0].description or ""
    playing = PLAYING.search(description)
    assert playing is not None, description
    minutes, seconds = playing.group(2).split(":")
    return playing.group(1), 60 * int(minutes) + int(seconds), QUEUED.findall(description)


def longest_silence(packets: tuple[RtpPacket, ...], since: float) -> tuple[float, float]:
    """The longest gap between two packets that ends after `since`: (the last packet before
    it, the first packet after it). With no outage at all this is just the longest jitter."""
    arrivals = [p.at for p in packets]
    gaps = [(b - a, a, b) for a, b in itertools.pairwise(arrivals) if b > since]
    _, last_before, first_after = max(gaps)
    return last_before, first_after


@attrs.frozen
class Recovery:
    fault_at: float
    heard_again_at: float
    silence: float
    """The outage as heard: from the last packet before it to the first one after."""

    @property
    def seconds(self) -> float:
        return self.heard_again_at - self.fault_at


async def recovery_of(band: Band, fault_at: float, mark: int, back_at: float | None) -> Recovery:
    """Wait until guild 1 is heard again for HEARD_AGAIN packets past `mark` (taken at the
    fault). Heard again: the first packet from `back_at` (when its voice session was ready
    again) on, or, with None, the first one after the longest silence since the fault."""
    await heard_since(band, AFFECTED, mark, HEARD_AGAIN)
    packets = band.packets(AFFECTED)[max(mark - 1, 0) :]
    if back_at is None:
        last_before, first_after = longest_silence(packets, fault_at)
    else:
        first_after = next(p.at for p in packets if p.at >= back_at)
        last_before = max(p.at for p in packets if p.at < first_after)
    return Recovery(fault_at, first_after, first_after - last_before)


async def wait_long(
    band: Band, predicate: Callable[[], object], what: str, seconds: float = 15
) -> None:
    """`wait_for` past the fake's own 5 s bound."""
    with trio.fail_after(seconds):
        while True:
            try:
                await band.discord.wait_for(predicate, what=what)
                return
            except trio.TooSlowError:
                continue


async def voice_session_ready(band: Band, sessions_before: int) -> float:
    """Wait until guild 1 has a voice session past `sessions_before` ready for audio; when."""
    await band.discord.wait_for(
        lambda: (
            (v := band.discord.voice(AFFECTED)).sessions_opened > sessions_before and v.connected
        ),
        what="a new voice session in guild 1",
    )
    return trio.current_time()


def run_queue_wait() -> float:
    """Seconds this thread (Trio's and asyncio's: the bot's and the fake's) has waited for a CPU
    since it started, by the kernel's scheduler statistics; 0 where there are none."""
    try:
        with open("/proc/thread-self/schedstat") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


@attrs.define
class Starvation:
    """Stalls of this thread that the machine caused: the tests share two cores with others,
    and a player not run for over 100 ms resyncs (rather than burst), losing frames no fault
    caused. A task wakes every TICK; a wake later than STALL counts the time the thread spent
    waiting for a CPU meanwhile (not time it spent busy: that is the bot's)."""

    since: float
    stalled: float = 0.0
    longest: float = 0.0

    async def watch(self) -> None:
        last_at, last_waited = trio.current_time(), run_queue_wait()
        while True:
            await trio.sleep(TICK)
            now, waited = trio.current_time(), run_queue_wait()
            if now - last_at > STALL:
                machine = min(now - last_at, waited - last_waited)
                self.stalled += machine
                self.longest = max(self.longest, machine)
            last_at, last_waited = now, waited


@asynccontextmanager
async def watching_starvation() -> AsyncIterator[Starvation]:
    async with trio.open_nursery() as watcher:
        starvation = Starvation(trio.current_time())
        watcher.start_soon(starvation.watch)
        yield starvation
        watcher.cancel_scope.cancel()


async def kept_playing(
    band: Band, since: Starvation, until: float, guilds: tuple[int, ...] = OTHERS
) -> dict[int, int]:
    """The guilds' packets from the fault to `until` (at least WINDOW): 50 a second (less only
    the machine's stalls), none missing, no longer silence than LONGEST_GAP_MS (plus the
    machine's longest stall), their own song. Returns the counts."""
    until = max(until, since.since + WINDOW)
    await trio.sleep_until(until + 0.1)  # the window's last packets arrive
    counts = {}
    for guild in guilds:
        report = band.discord.audio(guild=guild, since=since.since, until=until)
        due = (until - since.since) * FRAMES_PER_SECOND
        explained = since.stalled * FRAMES_PER_SECOND
        assert report.packets >= FRAMES_DUE * due - explained, (guild, report, due, since)
        assert report.sequence_gaps == 0, (guild, report)
        assert report.spacing_max_ms < LONGEST_GAP_MS + 1000 * since.longest, (guild, since)
        assert report.dominant_hz == pytest.approx(band.guilds[guild].hz, abs=5)
        counts[guild] = report.packets
    if since.stalled:
        print(f"\n  (the machine stalled the bot {since.stalled:.2f} s in the window)")
    return counts


async def same_track_and_queue(band: Band, position_before: float, mark: int) -> float:
    """Guild 1 plays its long tone again, from where it was, with its two songs still queued;
    returns the position /queue shows."""
    guild = band.guilds[AFFECTED]
    heard = band.discord.audio(guild=AFFECTED, packets=slice(mark, None))
    assert heard.dominant_hz == pytest.approx(guild.hz, abs=5)
    playing, position, queued = await queue_seen_by(guild.dj)
    assert playing == guild.songs[0]
    assert queued == list(guild.songs[1:])
    assert position >= position_before
    return position


Fault = Callable[[Band], Awaitable[float | None]]
"""Injects a fault in guild 1; returns when guild 1's voice was ready again (None: it never
went down, or the bot cannot know: judge by the longest silence heard)."""


async def survives(
    band: Band,
    fault: Fault,
    *,
    recovery_bound: float = RECOVERY_BOUND,
    steady: tuple[int, ...] = OTHERS,
) -> tuple[Recovery, dict[int, int], float]:
    """Inject `fault` mid-track in guild 1 and check that guild 1 plays on (same track, same
    queue), the `steady` guilds never stop, and nothing is left behind. Returns the recovery,
    the steady guilds' packet counts over the fault and the position guild 1 resumed at."""
    guild = band.guilds[AFFECTED]
    baseline = await settled_census(band)
    _, position_before, _ = await queue_seen_by(guild.dj)
    mark = len(band.packets(AFFECTED))
    async with watching_starvation() as starvation:
        fault_at = starvation.since
        back_at = await fault(band)
        recovery = await recovery_of(band, fault_at, mark, back_at)
        assert recovery.seconds < recovery_bound, recovery
        counts = await kept_playing(band, starvation, recovery.heard_again_at, steady)
    position = await same_track_and_queue(band, position_before, mark)
    await nothing_left_behind(band, baseline)
    print(
        f"\n{fault.__name__}: a silence of {recovery.silence * 1000:.0f} ms, sound again "
        f"{recovery.seconds * 1000:.0f} ms after the fault; at {position_before:.0f} s before, "
        f"/queue shows {position:.0f} s after; guilds {steady} heard {counts} packets over "
        f"{max(recovery.seconds, WINDOW):.1f} s"
    )
    return recovery, counts, position


# --- the voice websocket ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "abnormal"),
    [(4015, False), (4006, False), (None, True)],
    ids=["4015-voice-server-crashed", "4006-session-invalid", "1006-no-close-frame"],
)
async def test_a_lost_voice_websocket_is_recovered_in_place(
    band: Band, code: int | None, abnormal: bool
) -> None:
    async def close_voice(band: Band) -> float:
        await band.discord.faults.close_voice(guild=AFFECTED, code=code or 0, abnormal=abnormal)
        return await voice_session_ready(band, before.sessions_opened)

    close_voice.__name__ = f"voice close {code or 'abnormal'}"
    before = band.discord.voice(AFFECTED)
    await survives(band, close_voice)
    after = band.discord.voice(AFFECTED)
    assert after.closes[-1].code == (code or 1006)
    assert after.closes[-1].by == ("lost" if abnormal else "server")
    # It never left the channel (a leave and a join would ring for everyone in it) ...
    assert after.channel == "Music" and after.connected
    assert after.sessions_opened == before.sessions_opened + 1
    # ... and is heard as speaking on its (new, for 4006) session.
    assert after.speaking[-1].speaking == 1
    assert {p.ssrc for p in band.packets(AFFECTED)[-HEARD_AGAIN:]} == {after.speaking[-1].ssrc}
    assert band.env.app.supervisor.statistics().active == len(GUILDS)
    assert band.discord.channel_messages(AFFECTED) == ()  # nothing to tell anyone


# --- out of voice: the player ends, says so, and /play starts afresh -------------------------

DEPARTURE = (
    "I was disconnected from the voice channel, so the music stopped "
    "and the queue was cleared; /play starts again."
)


def departure_said(band: Band) -> bool:
    return any(m.content == DEPARTURE for m in band.discord.channel_messages(AFFECTED))


async def ended_and_said_so(band: Band, fault_at: float) -> float:
    """Wait for the departure message; the seconds it took. The bot is out of voice, its
    player and queue are gone, and nobody is left waiting."""
    await band.discord.wait_for(lambda: departure_said(band), what="the departure announced")
    took = trio.current_time() - fault_at
    await band.discord.wait_bot_voice(guild=AFFECTED, channel=None)
    supervisor = band.env.app.supervisor
    assert supervisor.find_player(band.discord.guild(AFFECTED).id) is None
    assert supervisor.statistics().active == len(OTHERS)
    # The queue went with the player: /queue says so, privately.
    dj = band.guilds[AFFECTED].dj
    nothing = await command(dj, "queue")
    assert nothing.ephemeral and nothing.content == "I am not playing here; start with /play."
    return took


async def plays_afresh(band: Band) -> None:
    """/play brings the bot back with a new queue, as at the start."""
    guild = band.guilds[AFFECTED]
    mark = len(band.packets(AFFECTED))
    for song in guild.songs:
        answer = await command(guild.dj, "play", query=song)
        assert not answer.ephemeral, answer.content
    await band.discord.wait_bot_voice(guild=AFFECTED, channel="Music")
    await heard_since(band, AFFECTED, mark, HEARD_AGAIN)
    heard = band.discord.audio(guild=AFFECTED, packets=slice(mark, None))
    assert heard.dominant_hz == pytest.approx(guild.hz, abs=5)
    playing, _, queued = await queue_seen_by(guild.dj)
    assert (playing, queued) == (guild.songs[0], list(guild.songs[1:]))


@pytest.mark.parametrize("close_first", [False, True], ids=["update-then-4014", "4014-then-update"])
async def test_a_kick_ends_the_player_says_so_and_play_starts_afresh(
    band: Band, close_first: bool
) -> None:
    baseline = await settled_census(band)
    async with watching_starvation() as starvation:
        await band.discord.faults.kick_from_voice(guild=AFFECTED, close_first=close_first)
        took = await ended_and_said_so(band, starvation.since)
        assert took < DEPARTURE_BOUND
        counts = await kept_playing(band, starvation, trio.current_time())
    assert band.discord.voice(AFFECTED).closes[-1].code == 4014
    await plays_afresh(band)
    await nothing_left_behind(band, baseline)
    print(
        f"\nkick ({'4014 first' if close_first else 'update first'}): said so after "
        f"{took * 1000:.0f} ms; other guilds heard {counts} packets meanwhile"
    )


async def test_a_reconnection_that_fails_ends_the_player_says_so_and_play_starts_afresh(
    band: Band,
) -> None:
    baseline = await settled_census(band)
    faults = band.discord.faults
    faults.refuse_voice(guild=AFFECTED, code=4006)  # the voice server will not take it back
    async with watching_starvation() as starvation:
        await faults.close_voice(guild=AFFECTED, code=4015)
        took = await ended_and_said_so(band, starvation.since)
        # A RESUME, then two new sessions a second apart, each refused; then it left.
        assert band.discord.voice(AFFECTED).refused == 1 + NEW_SESSION_ATTEMPTS
        assert took < NEW_SESSION_BACKOFF * (NEW_SESSION_ATTEMPTS - 1) + DEPARTURE_BOUND
        counts = await kept_playing(band, starvation, trio.current_time())
    faults.refuse_voice(guild=AFFECTED, code=None)
    await plays_afresh(band)
    await nothing_left_behind(band, baseline)
    print(
        f"\nreconnection refused: gave up and said so after {took * 1000:.0f} ms; "
        f"other guilds heard {counts} packets meanwhile"
    )


async def test_a_leave_during_a_reconnection_is_obeyed(band: Band) -> None:
    """/leave while the voice is being won back: the bot leaves, and the reconnection under
    way does not bring it back to the channel behind the user's back."""
    baseline = await settled_census(band)
    faults = band.discord.faults
    faults.refuse_voice(guild=AFFECTED, code=4006)
    await faults.close_voice(guild=AFFECTED, code=4015)
    await band.discord.wait_for(lambda: band.discord.voice(AFFECTED).refused >= 2)
    left = await command(band.guilds[AFFECTED].dj, "leave")  # in the pause between attempts
    assert left.content == f"Left <#{band.discord.guild(AFFECTED).channel_id('Music')}>."
    await band.discord.wait_bot_voice(guild=AFFECTED, channel=None)
    tried = band.discord.voice(AFFECTED).refused
    faults.refuse_voice(guild=AFFECTED, code=None)
    # Longer than the rest of the reconnection would take: nothing more is tried.
    await trio.sleep(NEW_SESSION_BACKOFF * NEW_SESSION_ATTEMPTS + 0.5)
    status = band.discord.voice(AFFECTED)
    assert (status.channel, status.refused) == (None, tried)
    assert not departure_said(band)  # the user asked for it: nothing to announce
    await plays_afresh(band)
    await nothing_left_behind(band, baseline)


# --- the main gateway ------------------------------------------------------------------------


async def test_a_dropped_gateway_is_resumed_with_missed_events_and_the_music_never_stops(
    band: Band,
) -> None:
    listener = band.discord.member(guild=AFFECTED, name="listener")
    asked: list[Message] = []

    async def drop_gateway(band: Band) -> None:
        await band.discord.faults.drop_gateway(code=4000, resumable=True)
        # While the bot is away, someone joins its channel and asks for the queue: both
        # events reach it when it resumes.
        await listener.join_voice("Music")
        asked.append(await command(listener, "queue"))
        await band.discord.wait_for(lambda: band.discord.statistics().resumes == 1)

    # Voice does not go through the gateway: guild 1 plays on like the others.
    await survives(band, drop_gateway, steady=GUILDS)
    (queue,) = asked
    assert not queue.ephemeral
    assert band.guilds[AFFECTED].songs[0] in (queue.embeds[0].description or "")
    stats = band.discord.statistics()
    assert (stats.identifies, stats.resumes) == (1, 1)
    # The listener's join, made while the bot was away, reached it: it may steer the music.
    steered = await command(listener, "loop", mode="off")
    assert not steered.ephemeral, steered.content


async def test_an_invalid_gateway_session_means_a_new_identify_and_the_music_never_stops(
    band: Band,
) -> None:
    async def invalidate_gateway_session(band: Band) -> None:
        await band.discord.faults.drop_gateway(code=4000, resumable=False)
        # The bot waits up to IDENTIFY_INTERVAL (5 s: Discord's rate limit) to identify again.
        await wait_long(band, lambda: band.discord.statistics().identifies == 2, "an IDENTIFY")
        await band.discord.wait_ready()

    await survives(band, invalidate_gateway_session, recovery_bound=10, steady=GUILDS)
    # The new session's state is the one the bot reads: the dj leaving is seen (the player
    # counts itself alone), and coming back too.
    dj = band.guilds[AFFECTED].dj
    guild_id = band.discord.guild(AFFECTED).id

    def alone() -> bool:
        return any(
            p.guild_id == guild_id and p.alone_seconds > 0
            for p in band.env.app.supervisor.statistics().players
        )

    await dj.leave_voice()
    await band.discord.wait_for(alone, what="the player to notice it is alone")
    await dj.join_voice("Music")
    await band.discord.wait_for(lambda: not alone(), what="the player to notice the dj is back")


# --- voice UDP -------------------------------------------------------------------------------


async def test_udp_lost_for_3_seconds_and_the_track_goes_on(band: Band) -> None:
    async def drop_udp_for_3_seconds(band: Band) -> None:
        band.discord.faults.drop_udp(guild=AFFECTED, seconds=3.0)

    recovery, _, _ = await survives(band, drop_udp_for_3_seconds, recovery_bound=3 + 0.5)
    # UDP has no retransmission, and the bot is not told: the 3 s in flight are lost, the rest
    # of the track plays from where it would have been.
    assert 3 - 0.1 <= recovery.silence <= 3 + 0.5
    assert band.discord.voice(AFFECTED).udp_dropped == pytest.approx(150, abs=10)
