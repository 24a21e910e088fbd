"""The Trio face of the fake Discord: `open_fake_discord()` and what tests do with it.

The servers are aiohttp applications on the asyncio loop that trio-asyncio provides, so the
caller must have entered `async with trio_asyncio.open_loop():`. The voice UDP endpoint is a Trio
socket. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import trio
import trio_asyncio
from aiohttp import web

from musicbot.testing.loopback import payloads, permissions
from musicbot.testing.loopback.audio import AudioReport, analyse
from musicbot.testing.loopback.gateway import GUILD_PRESENCES, Gateway
from musicbot.testing.loopback.member import FakeMember
from musicbot.testing.loopback.records import (
    AppCommand,
    CommandSync,
    GuildInfo,
    Message,
    RejectedRequest,
    RtpPacket,
    Statistics,
    VoiceStatus,
)
from musicbot.testing.loopback.rest import Rest
from musicbot.testing.loopback.state import Guild, Member, Role, State, iso_now
from musicbot.testing.loopback.tls import LoopbackTLS
from musicbot.testing.loopback.udp import open_udp_socket, serve_udp
from musicbot.testing.loopback.voice import VoiceServer
from musicbot.testing.loopback.world import World

T = TypeVar("T")

SHUTDOWN_SECONDS = 5.0


class FakeDiscord:
    """A running fake Discord. Made by `open_fake_discord()`; see docs/testing.md."""

    def __init__(
        self, world: World, tls: LoopbackTLS, *, http_port: int, voice_port: int, udp_port: int
    ) -> None:
        self._world = world
        self._state = world.state
        self._tls = tls
        self.api_base = f"http://127.0.0.1:{http_port}/api/v10"
        self.gateway_url = f"ws://127.0.0.1:{http_port}/"
        self.voice_endpoint = f"127.0.0.1:{voice_port}"
        self.udp_port = udp_port
        self.ca_pem_path: Path = tls.ca_pem_path
        self.token = self._state.token
        self.application_id = self._state.application_id
        self.bot_user_id = self._state.bot.id
        self.faults = Faults(world)

    def client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context trusting the fake's CA (for `aiohttp.TCPConnector(ssl=...)`)."""
        return self._tls.client_context()

    # -- guilds and members ------------------------------------------------------------------

    @property
    def guilds(self) -> tuple[GuildInfo, ...]:
        return tuple(g.info() for g in self._state.guilds)

    def guild(self, index: int = 1) -> GuildInfo:
        """Guild number `index` (1-based)."""
        return self._state.guild(index).info()

    def member(
        self,
        guild: int = 1,
        name: str = "alice",
        *,
        admin: bool = False,
        permissions: Iterable[str] = (),
        roles: Iterable[str] = (),
    ) -> FakeMember:
        """The member `name` of guild `guild`, made on first use.

        `admin` gives the role "Admin" (ADMINISTRATOR); `permissions` (discord.py names such as
        "manage_guild") gives a role holding just those; `roles` are plain roles by name.
        Asking again for an existing member with other roles raises ValueError.
        """
        state = self._state
        model = state.guild(guild)
        wanted = self._roles_for(model.index, admin=admin, permissions=permissions, roles=roles)
        existing = model.member_named(name)
        if existing is not None:
            if sorted(existing.role_ids) != sorted(r.id for r in wanted):
                have = [model.roles[r].name for r in existing.role_ids]
                raise ValueError(f"member {name!r} of guild {guild} exists with roles {have}")
            return FakeMember(self._world, model, existing)
        user = state.user_named(name)
        member = Member(user, [r.id for r in wanted], iso_now())
        model.members[user.id] = member
        self._world.gateway.dispatch_guild(
            model.id,
            "GUILD_MEMBER_ADD",
            {**payloads.member(model, member), "guild_id": str(model.id)},
        )
        state.changes.notify()
        return FakeMember(self._world, model, member)

    def _roles_for(
        self, guild: int, *, admin: bool, permissions: Iterable[str], roles: Iterable[str]
    ) -> list[Role]:
        model = self._state.guild(guild)
        wanted = [self._role(model, name, 0) for name in roles]
        if admin:
            wanted.append(self._role(model, "Admin", _bits(["administrator"])))
        names = sorted(permissions)
        if names:
            wanted.append(self._role(model, "perm:" + "+".join(names), _bits(names)))
        return wanted

    def _role(self, guild: Guild, name: str, bits: int) -> Role:
        """The role `name`, made (and announced with GUILD_ROLE_CREATE) on first use."""
        existed = guild.role_named(name) is not None
        role = self._state.role(guild, name, permissions=bits)
        if not existed:
            self._world.gateway.dispatch_guild(
                guild.id,
                "GUILD_ROLE_CREATE",
                {"guild_id": str(guild.id), "role": payloads.role(role)},
            )
        return role

    # -- commands and messages ------------------------------------------------------------------

    @property
    def commands(self) -> Mapping[str, AppCommand]:
        """Global slash commands the bot registered, by name."""
        return dict(self._state.global_commands)

    def guild_commands(self, guild: int = 1) -> Mapping[str, AppCommand]:
        return dict(self._state.guild_commands.get(self._state.guild(guild).id, {}))

    @property
    def command_syncs(self) -> tuple[CommandSync, ...]:
        return tuple(self._state.command_syncs)

    def channel_messages(
        self,
        guild: int = 1,
        channel: str | None = None,
        *,
        include_answers: bool = False,
        include_deleted: bool = False,
    ) -> tuple[Message, ...]:
        """Messages the bot posted in a text channel (the first one by default), oldest first.

        Only POST /channels/{id}/messages by default; `include_answers` adds the non-ephemeral
        interaction answers shown in the channel."""
        model = self._state.guild(guild)
        name = channel or next(iter(model.info().text_channels))
        channel_id = model.info().channel_id(name)
        found = []
        for message_id in self._state.channel_messages.get(channel_id, []):
            message = self._state.messages[message_id]
            if message.deleted and not include_deleted:
                continue
            if message.interaction_id is not None and (not include_answers or message.ephemeral):
                continue
            found.append(message)
        return tuple(found)

    def message(self, message_id: int) -> Message:
        """The latest version of any message the bot made."""
        return self._state.messages[message_id]

    # -- voice ----------------------------------------------------------------------------------

    def bot_voice_channel(self, guild: int = 1) -> str | None:
        return self.voice(guild).channel

    def voice(self, guild: int = 1) -> VoiceStatus:
        model = self._state.guild(guild)
        voice = self._state.bot_voice[model.id]
        in_voice = model.voice_states.get(self._state.bot.id)
        return VoiceStatus(
            guild_id=model.id,
            channel=None if in_voice is None else model.channels[in_voice.channel_id].name,
            channel_id=None if in_voice is None else in_voice.channel_id,
            websocket_open=voice.websocket_open,
            connected=voice.websocket_open and voice.described,
            sessions_opened=voice.sessions_opened,
            sessions_closed=voice.sessions_closed,
            closes=tuple(voice.closes),
            speaking=tuple(voice.speaking),
            packets=len(voice.packets),
            udp_dropped=voice.udp_dropped,
            undecryptable=voice.undecryptable,
            mode=voice.mode,
            refused=voice.refused,
        )

    async def wait_bot_voice(self, guild: int = 1, channel: str | None = "Music") -> VoiceStatus:
        """Wait until the bot is in `channel` with its voice connection ready for audio, or, with
        `channel=None`, until it left voice and its voice websocket is closed."""

        def arrived() -> VoiceStatus | None:
            status = self.voice(guild)
            if channel is None:
                gone = status.channel is None and not status.websocket_open
                return status if gone else None
            return status if status.channel == channel and status.connected else None

        goal = "leave voice" if channel is None else f"be connected in {channel!r}"
        what = f"the bot to {goal} in guild {guild}"
        return await self.wait_for(arrived, what=what)

    def rtp_packets(self, guild: int = 1) -> tuple[RtpPacket, ...]:
        return tuple(self._state.bot_voice[self._state.guild(guild).id].packets)

    def audio(
        self,
        guild: int = 1,
        *,
        since: float | None = None,
        until: float | None = None,
        packets: slice | None = None,
    ) -> AudioReport:
        """Analyse what the fake heard in `guild`: all of it, packets that arrived in
        [since, until) (trio.current_time() readings), and/or a slice of the packet list."""
        chosen: Sequence[RtpPacket] = self.rtp_packets(guild)
        if packets is not None:
            chosen = chosen[packets]
        chosen = [
            p
            for p in chosen
            if (since is None or p.at >= since) and (until is None or p.at < until)
        ]
        return analyse(chosen)

    def clear_audio(self, guild: int = 1) -> None:
        """Forget the RTP packets heard so far in `guild`."""
        self._state.bot_voice[self._state.guild(guild).id].packets.clear()

    # -- waiting and records ---------------------------------------------------------------------

    async def wait_ready(self) -> None:
        """Wait until the bot identified and READY plus every GUILD_CREATE were written to it."""

        def ready() -> bool:
            gateway = self._world.gateway
            sessions = [gateway.session_for(g.id) for g in self._state.guilds]
            return all(s is not None and s.connection is not None for s in sessions) and all(
                s.ready_written.is_set() for s in sessions if s is not None
            )

        await self.wait_for(ready, what="the bot to be READY with every guild")

    async def wait_for(self, predicate: Callable[[], T | None], *, what: str = "a condition") -> T:
        """Wait until `predicate()` is truthy and return its value. It is re-checked whenever the
        fake sees anything happen. Raises trio.TooSlowError after the fake's `wait_timeout`;
        wrap the call in `trio.fail_after()` for a shorter bound."""
        return await self._world.wait_for(predicate, what=what)

    def identifies(self) -> tuple[tuple[tuple[int, int], float], ...]:
        """Every IDENTIFY the gateway accepted, in order: its [shard_id, shard_count] and when
        (trio.current_time())."""
        sessions = self._world.gateway.sessions.values()
        return tuple((session.shard, session.identified_at) for session in sessions)

    @property
    def errors(self) -> tuple[RejectedRequest, ...]:
        """Requests the fake refused (as Discord would have), with reasons. Expect () in tests."""
        return tuple(self._state.rejected)

    def statistics(self) -> Statistics:
        state = self._state
        return Statistics(
            identifies=state.identifies,
            resumes=state.resumes,
            gateway_connections=len(self._world.gateway.connections),
            voice_websockets=len(self._world.voice.connections),
            interactions=len(state.interactions),
            rest_requests=state.rest_requests,
            rejected_requests=len(state.rejected),
        )


class Faults:
    """Things that go wrong on Discord's side, on demand."""

    def __init__(self, world: World) -> None:
        self._world = world

    async def close_voice(
        self, guild: int = 1, code: int = 4015, *, abnormal: bool = False
    ) -> None:
        """Close the bot's voice websocket in `guild` with `code` (4015: "voice server crashed,
        resume"; 4014: disconnected; 4006: session invalid; ...). `abnormal` drops the TCP
        connection instead, with no close frame (the client sees 1006; `code` is unused).
        Waits until it is closed."""
        state = self._world.state
        guild_id = state.guild(guild).id
        voice = self._world.voice
        connection = voice.abort(guild_id) if abnormal else voice.close(guild_id, code)
        if connection is None:
            raise RuntimeError(f"the bot has no voice websocket open in guild {guild}")
        await self._world.wait_for(
            lambda: self._world.voice.connections.get(guild_id) is not connection,
            what="the voice websocket to close",
        )

    async def kick_from_voice(self, guild: int = 1, *, close_first: bool = False) -> None:
        """Disconnect the bot from voice server-side, as a moderator would: VOICE_STATE_UPDATE with
        no channel, then the voice websocket closed with 4014. `close_first`: the other order
        (both happen on Discord), the close handled by the bot before the voice update."""
        state = self._world.state
        model = state.guild(guild)
        before = model.voice_states.pop(state.bot.id, None)
        if before is None:
            raise RuntimeError(f"the bot is not in voice in guild {guild}")
        state.bot_voice[model.id].token = None
        voice = self._world.voice
        if close_first:
            closing = voice.close(model.id, 4014)
            await self._world.wait_for(
                lambda: voice.connections.get(model.id) is not closing,
                what="the voice websocket to close",
            )
        written = self._world.gateway.dispatch_guild(
            model.id,
            "VOICE_STATE_UPDATE",
            payloads.left_voice(model, state.bot.id, before.session_id),
        )
        if not close_first:
            voice.close(model.id, 4014)
        state.changes.notify()
        await self._world.written(written, what="the bot's kick from voice")

    async def drop_gateway(self, *, code: int = 4000, resumable: bool = True) -> None:
        """Close every main gateway websocket with `code`. discord.py then resumes (RESUME, the
        missed events are replayed, RESUMED); with `resumable=False` the sessions are forgotten,
        so its RESUME gets INVALID_SESSION and it identifies anew. Waits until they are closed."""
        gateway = self._world.gateway
        closing = gateway.close_all(code, forget_sessions=not resumable)
        await self._world.wait_for(
            lambda: not any(c in gateway.connections for c in closing),
            what="the gateway websockets to close",
        )

    def drop_udp(self, guild: int = 1, seconds: float = 1.0) -> None:
        """Drop every voice datagram of `guild` (RTP and IP discovery) for `seconds` from now."""
        state = self._world.state
        state.bot_voice[state.guild(guild).id].udp_drop_until = trio.current_time() + seconds

    def refuse_voice(self, guild: int = 1, code: int | None = 4006) -> None:
        """Close every voice IDENTIFY and RESUME of the bot in `guild` with `code` at once (a
        voice server that will not take the session back); `code=None` lifts it."""
        state = self._world.state
        state.bot_voice[state.guild(guild).id].refuse_code = code

    def stall_voice_connect(self, guild: int = 1, stalled: bool = True) -> None:
        """While stalled, the bot's voice joins in `guild` get a VOICE_STATE_UPDATE but never a
        VOICE_SERVER_UPDATE, so `channel.connect()` never completes (it times out)."""
        state = self._world.state
        state.bot_voice[state.guild(guild).id].stall_connect = stalled

    async def forget_guild(self, guild: int = 1) -> None:
        """GUILD_DELETE for `guild`, as when the bot user is removed from it while the app's
        commands stay installed there: members still run them, so the bot gets interactions
        from a guild it has no state for. The fake's own model is unchanged (interaction
        answers go through webhooks, which need no membership). `restore_guild` undoes it."""
        model = self._world.state.guild(guild)
        written = self._world.gateway.dispatch_guild(
            model.id, "GUILD_DELETE", {"id": str(model.id)}
        )
        await self._world.written(written, what=f"GUILD_DELETE of guild {guild}")

    async def restore_guild(self, guild: int = 1) -> None:
        """GUILD_CREATE for `guild` again, as when the bot is added back."""
        model = self._world.state.guild(guild)
        session = self._world.gateway.session_for(model.id)
        all_members = session is not None and bool(session.intents & GUILD_PRESENCES)
        created = payloads.guild_create(model, all_members=all_members)
        written = self._world.gateway.dispatch_guild(model.id, "GUILD_CREATE", created)
        await self._world.written(written, what=f"GUILD_CREATE of guild {guild}")


def _bits(names: Iterable[str]) -> int:
    return permissions.from_names(names)


@asynccontextmanager
async def open_fake_discord(
    *,
    guilds: int = 1,
    shards: int = 1,
    text_channels: Sequence[str] = ("general",),
    voice_channels: Sequence[str] = ("Music", "Lounge"),
    answer_timeout: float = 3.0,
    wait_timeout: float = 5.0,
    voice_udp: tuple[str, int] | None = None,
    identify_concurrency: int = 1,
) -> AsyncIterator[FakeDiscord]:
    """Run a fake Discord on 127.0.0.1 for the duration of the `async with`.

    Must run inside `async with trio_asyncio.open_loop():`. `shards` is what GET /gateway/bot
    recommends; `answer_timeout` is Discord's deadline for an interaction's first answer;
    `wait_timeout` bounds the face's other waits. `voice_udp` sends the bot's RTP to that
    address instead of the fake's own UDP endpoint (a receiver in another process, for load
    benchmarks: it must answer IP discovery itself, and the fake then hears nothing).
    `identify_concurrency` is the `max_concurrency` GET /gateway/bot reports (a large bot's).
    On exit every websocket is closed (1001), every server and the UDP socket are closed, and
    no task is left behind.
    """
    if trio_asyncio.current_loop.get() is None:
        raise RuntimeError(
            "open_fake_discord() needs an asyncio loop: "
            "enter `async with trio_asyncio.open_loop():` first"
        )
    with tempfile.TemporaryDirectory(prefix="fake-discord-") as directory:
        tls = LoopbackTLS(Path(directory))
        state = State(
            guilds=guilds,
            text_channels=text_channels,
            voice_channels=voice_channels,
            answer_timeout=answer_timeout,
        )
        voice = VoiceServer(state)
        gateway = Gateway(state, voice, shards=shards)
        gateway.identify_concurrency = identify_concurrency
        world = World(state, gateway, voice, wait_timeout)

        http_app = web.Application()
        Rest(state, gateway).add_routes(http_app)
        http_app.router.add_get("/", gateway.handle)
        http_app.on_shutdown.append(gateway.on_shutdown)
        voice_app = web.Application()
        voice_app.router.add_get("/", voice.handle)
        voice_app.on_shutdown.append(voice.on_shutdown)

        with await open_udp_socket() as udp:
            voice.udp_port = udp.getsockname()[1]
            voice.udp_address = voice_udp
            async with (
                _serve(http_app) as http_port,
                _serve(voice_app, ssl_context=tls.server_context()) as voice_port,
                trio.open_nursery() as udp_server,
            ):
                voice.endpoint = f"127.0.0.1:{voice_port}"
                udp_server.start_soon(serve_udp, udp, voice)
                yield FakeDiscord(
                    world, tls, http_port=http_port, voice_port=voice_port, udp_port=voice.udp_port
                )
                udp_server.cancel_scope.cancel()


@asynccontextmanager
async def _serve(
    app: web.Application, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """Serve an aiohttp app on 127.0.0.1 (random port) on the trio-asyncio loop."""
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS
    )
    await trio_asyncio.aio_as_trio(runner.setup)()
    try:
        # Discord's edge takes a burst of connections; aiohttp's default backlog (128) dropped
        # the SYNs of 200 /play answered at once, and each dropped one waited a 1 s retry.
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context, backlog=1024)
        await trio_asyncio.aio_as_trio(site.start)()
        yield int(runner.addresses[0][1])
    finally:
        with trio.move_on_after(SHUTDOWN_SECONDS * 2, shield=True):
            await trio_asyncio.aio_as_trio(runner.cleanup)()
