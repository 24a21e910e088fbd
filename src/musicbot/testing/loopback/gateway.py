"""The main gateway websocket (asyncio side): HELLO, IDENTIFY -> READY + GUILD_CREATE, heartbeats,
RESUME with replay, voice state updates (op 4), member chunks (op 8), and dispatches routed to
the session whose shard holds the guild, filtered by its intents.

Frames go out as TEXT (discord.py only zlib-inflates BINARY frames, so `compress=zlib-stream`
needs no compression here).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import secrets

import attrs
import trio
from aiohttp import WSMsgType, web

from musicbot.testing.loopback import payloads
from musicbot.testing.loopback.outbox import Outbox
from musicbot.testing.loopback.records import JSON
from musicbot.testing.loopback.snowflakes import shard_of
from musicbot.testing.loopback.state import VOICE, Guild, State, VoiceState
from musicbot.testing.loopback.voice import VoiceServer

HEARTBEAT_INTERVAL_MS = 41_250
CLOSE_TIMEOUT = 2.0  # how long a server-side close waits for the client's close frame
REPLAY_LIMIT = 1000

GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_VOICE_STATES = 1 << 7
GUILD_PRESENCES = 1 << 8
GUILD_MESSAGES = 1 << 9

EVENT_INTENTS = {
    "GUILD_CREATE": GUILDS,
    "GUILD_ROLE_CREATE": GUILDS,
    "GUILD_MEMBER_ADD": GUILD_MEMBERS,
    "GUILD_MEMBER_REMOVE": GUILD_MEMBERS,
    "VOICE_STATE_UPDATE": GUILD_VOICE_STATES,
    "MESSAGE_CREATE": GUILD_MESSAGES,
    "MESSAGE_UPDATE": GUILD_MESSAGES,
    "MESSAGE_DELETE": GUILD_MESSAGES,
}


@attrs.define(eq=False)
class GatewaySession:
    id: str
    shard: tuple[int, int]
    intents: int
    resume_url: str
    seq: int = 0
    replay: collections.deque[JSON] = attrs.Factory(lambda: collections.deque(maxlen=REPLAY_LIMIT))
    connection: GatewayConnection | None = None
    ready_written: trio.Event = attrs.Factory(trio.Event)
    identified_at: float = attrs.Factory(trio.current_time)

    def covers(self, guild_id: int) -> bool:
        shard_id, shard_count = self.shard
        return shard_of(guild_id, shard_count) == shard_id

    def dispatch(self, event: str, data: JSON) -> trio.Event | None:
        self.seq += 1
        frame = {"op": 0, "t": event, "s": self.seq, "d": data}
        self.replay.append(frame)
        if self.connection is None:
            return None
        return self.connection.outbox.send(frame)


@attrs.define(eq=False)
class GatewayConnection:
    outbox: Outbox
    session: GatewaySession | None = None
    done: asyncio.Event = attrs.Factory(asyncio.Event)


class Gateway:
    def __init__(self, state: State, voice: VoiceServer, *, shards: int) -> None:
        self._state = state
        self._voice = voice
        self.recommended_shards = shards
        self.identify_concurrency = 1  # GET /gateway/bot's max_concurrency
        self.sessions: dict[str, GatewaySession] = {}
        self.connections: set[GatewayConnection] = set()

    # -- routing (used by REST, the face and faults) -----------------------------------------

    def session_for(self, guild_id: int) -> GatewaySession | None:
        """The newest identified session whose shard holds the guild, connected ones first."""
        candidates = [s for s in self.sessions.values() if s.covers(guild_id)]
        connected = [s for s in candidates if s.connection is not None]
        pool = connected or candidates
        return pool[-1] if pool else None

    def dispatch_guild(self, guild_id: int, event: str, data: JSON) -> trio.Event | None:
        """Dispatch to the guild's session if its intents ask for the event."""
        session = self.session_for(guild_id)
        return None if session is None else self._dispatch_to(session, event, data)

    @staticmethod
    def _dispatch_to(session: GatewaySession, event: str, data: JSON) -> trio.Event | None:
        needed = EVENT_INTENTS.get(event, 0)
        if needed and not session.intents & needed:
            return None
        return session.dispatch(event, data)

    def member_voice_changed(
        self, guild: Guild, user_id: int, left_session: str | None
    ) -> trio.Event | None:
        if left_session is not None:
            data = payloads.left_voice(guild, user_id, left_session)
        else:
            data = payloads.voice_state(guild, guild.voice_states[user_id])
        self._state.changes.notify()
        return self.dispatch_guild(guild.id, "VOICE_STATE_UPDATE", data)

    def close_all(self, code: int, *, forget_sessions: bool = False) -> list[GatewayConnection]:
        closing = list(self.connections)
        if forget_sessions:
            self.sessions.clear()
        for connection in closing:
            connection.outbox.close(code)
        return closing

    async def on_shutdown(self, app: web.Application) -> None:
        """aiohttp shutdown hook (asyncio): close every gateway websocket with 1001."""
        closing = self.close_all(1001)
        if closing:
            await asyncio.wait([asyncio.ensure_future(c.done.wait()) for c in closing], timeout=5)

    # -- the websocket ------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("encoding", "json") != "json":
            self._state.reject("gateway", 400, "only encoding=json is served")
            raise web.HTTPBadRequest(text="only encoding=json is served")
        ws = web.WebSocketResponse(max_msg_size=0, timeout=CLOSE_TIMEOUT)
        await ws.prepare(request)
        connection = GatewayConnection(Outbox(ws, on_written=self._state.changes.notify))
        self.connections.add(connection)
        writer = asyncio.ensure_future(connection.outbox.run())
        resume_url = f"ws://{request.host}/"
        connection.outbox.send({"op": 10, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}})
        self._state.changes.notify()
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    try:
                        self._on_frame(connection, json.loads(message.data), resume_url)
                    except Exception as exc:  # a bug of the fake: show it in `errors`
                        self._refuse(connection, 1011, f"fake Discord failed: {exc!r}")
                elif message.type is WSMsgType.BINARY:
                    self._refuse(connection, 4002, "binary (ETF) frames are not served")
        finally:
            connection.outbox.finish()
            with contextlib.suppress(Exception):
                await writer
            if connection.session is not None and connection.session.connection is connection:
                connection.session.connection = None
            self.connections.discard(connection)
            connection.done.set()
            self._state.changes.notify()
        return ws

    def _refuse(self, connection: GatewayConnection, code: int, reason: str) -> None:
        self._state.reject("gateway", code, reason)
        connection.outbox.close(code)

    def _on_frame(self, connection: GatewayConnection, frame: JSON, resume_url: str) -> None:
        op, data = frame.get("op"), frame.get("d")
        session = connection.session
        if op == 1:
            connection.outbox.send({"op": 11})
        elif op == 2:
            self._identify(connection, data or {}, resume_url)
        elif op == 6:
            self._resume(connection, data or {})
        elif session is None:
            self._refuse(connection, 4003, f"op {op} before IDENTIFY")
        elif op == 3:
            pass  # presence update: nothing to show
        elif op == 4:
            self._voice_state(session, data or {})
        elif op == 8:
            self._request_members(session, data or {})
        else:
            self._refuse(connection, 4001, f"unknown opcode {op}")

    def _identify(self, connection: GatewayConnection, data: JSON, resume_url: str) -> None:
        state = self._state
        if connection.session is not None:
            return self._refuse(connection, 4005, "IDENTIFY sent twice")
        if data.get("token") != state.token:
            return self._refuse(connection, 4004, "IDENTIFY with a wrong token")
        shard_id, shard_count = data.get("shard") or (0, 1)
        if not 0 <= shard_id < shard_count:
            return self._refuse(connection, 4010, f"invalid shard {[shard_id, shard_count]}")
        if "intents" not in data:
            return self._refuse(connection, 4013, "IDENTIFY without intents")
        session = GatewaySession(
            secrets.token_hex(16), (shard_id, shard_count), int(data["intents"]), resume_url
        )
        session.connection = connection
        connection.session = session
        self.sessions[session.id] = session
        state.identifies += 1
        guilds = [g for g in state.guilds if session.covers(g.id)]
        ready: JSON = {
            "v": 10,
            "user": payloads.me(state),
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": resume_url,
            "application": {"id": str(state.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["loopback"],
            "_trace": ["fake-discord"],
        }
        if "shard" in data:
            ready["shard"] = [shard_id, shard_count]
        last = session.dispatch("READY", ready)
        all_members = bool(session.intents & GUILD_PRESENCES)
        for guild in guilds:
            created = payloads.guild_create(guild, all_members=all_members)
            written = self._dispatch_to(session, "GUILD_CREATE", created)
            if written is not None:
                last = written
        if last is not None:
            session.ready_written = last
        state.changes.notify()
        return None

    def _resume(self, connection: GatewayConnection, data: JSON) -> None:
        state = self._state
        session = self.sessions.get(data.get("session_id") or "")
        seq = data.get("seq") or 0
        if data.get("token") != state.token:
            return self._refuse(connection, 4004, "RESUME with a wrong token")
        if session is None or (session.replay and session.replay[0]["s"] > seq + 1):
            connection.outbox.send({"op": 9, "d": False})
            return None
        if session.connection is not None and session.connection is not connection:
            session.connection.outbox.close(4000)
        session.connection = connection
        connection.session = session
        for frame in list(session.replay):
            if frame["s"] > seq:
                connection.outbox.send(frame)
        session.dispatch("RESUMED", {"_trace": ["fake-discord"]})
        state.resumes += 1
        state.changes.notify()
        return None

    def _voice_state(self, session: GatewaySession, data: JSON) -> None:
        """op 4: the bot joins, moves or leaves voice in a guild."""
        state = self._state
        guild = state.guild_by_id(int(data.get("guild_id") or 0))
        if guild is None or not session.covers(guild.id):
            state.reject(
                "gateway op 4", 400, f"voice state update for unknown guild {data.get('guild_id')}"
            )
            return
        bot_id = state.bot.id
        current = guild.voice_states.get(bot_id)
        voice = state.bot_voice[guild.id]
        channel_id = data.get("channel_id")
        if channel_id is None:
            if current is not None:
                del guild.voice_states[bot_id]
            voice.token = None
            self.dispatch_guild(
                guild.id, "VOICE_STATE_UPDATE", payloads.left_voice(guild, bot_id, session.id)
            )
            state.changes.notify()
            return
        channel = guild.channels.get(int(channel_id))
        if channel is None or channel.type != VOICE:
            state.reject(
                "gateway op 4", 400, f"channel {channel_id} is not a voice channel of {guild.name}"
            )
            return
        moved = current is not None and current.channel_id != channel.id
        guild.voice_states[bot_id] = VoiceState(
            bot_id,
            channel.id,
            session.id,
            self_mute=bool(data.get("self_mute")),
            self_deaf=bool(data.get("self_deaf")),
        )
        state_update = payloads.voice_state(guild, guild.voice_states[bot_id])
        if (current is not None and not moved and voice.websocket_open) or voice.stall_connect:
            # Same channel on a live connection (a mute change): no new voice server. A stalled
            # connect never gets one either, so discord.py waits until its timeout.
            self.dispatch_guild(guild.id, "VOICE_STATE_UPDATE", state_update)
            state.changes.notify()
            return
        voice.token = secrets.token_hex(8)
        # VOICE_SERVER_UPDATE first: discord.py's state machine handles that order in every path
        # (first connect, move, and its 4015 resume).
        self.dispatch_guild(
            guild.id,
            "VOICE_SERVER_UPDATE",
            {"token": voice.token, "guild_id": str(guild.id), "endpoint": self._voice.endpoint},
        )
        self.dispatch_guild(guild.id, "VOICE_STATE_UPDATE", state_update)
        if moved:
            self._voice.close(guild.id, 4014)  # "voice server changed": the client reconnects
        state.changes.notify()

    def _request_members(self, session: GatewaySession, data: JSON) -> None:
        guild = self._state.guild_by_id(int(data.get("guild_id") or 0))
        if guild is None:
            return
        query = (data.get("query") or "").lower()
        user_ids = {int(u) for u in data.get("user_ids") or ()}
        limit = int(data.get("limit") or 0) or len(guild.members)
        found = [
            m
            for m in guild.members.values()
            if (not user_ids or m.user.id in user_ids) and m.user.name.lower().startswith(query)
        ][:limit]
        chunk: JSON = {
            "guild_id": str(guild.id),
            "members": [payloads.member(guild, m) for m in found],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [str(u) for u in user_ids - {m.user.id for m in found}],
        }
        if data.get("presences"):
            chunk["presences"] = []
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        session.dispatch("GUILD_MEMBERS_CHUNK", chunk)
