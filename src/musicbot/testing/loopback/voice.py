"""The voice websocket (asyncio side, behind TLS): IDENTIFY -> HELLO/READY, heartbeats,
SELECT_PROTOCOL -> SESSION_DESCRIPTION (`dave_protocol_version` 0: transport encryption only),
SPEAKING, RESUME; plus the voice UDP datagrams (IP discovery, RTP) handed over by `udp.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets

import attrs
import trio
from aiohttp import WSMsgType, web

from musicbot.testing.loopback import rtp
from musicbot.testing.loopback.outbox import Outbox
from musicbot.testing.loopback.records import JSON, RtpPacket, SpeakingEvent, VoiceClose
from musicbot.testing.loopback.state import BotVoice, State

HEARTBEAT_INTERVAL_MS = 13_750
CLOSE_TIMEOUT = 2.0  # how long a server-side close waits for the client's close frame


@attrs.define(eq=False)
class VoiceConnection:
    outbox: Outbox
    transport: asyncio.Transport | None = None
    guild_id: int | None = None
    done: asyncio.Event = attrs.Factory(asyncio.Event)
    aborted: bool = False

    def abort(self) -> None:
        """Drop the TCP connection: no close frame, as when a voice server dies or a route
        fails (the client sees 1006)."""
        self.aborted = True
        if self.transport is not None:
            self.transport.abort()


class VoiceServer:
    def __init__(self, state: State) -> None:
        self._state = state
        self.endpoint = ""  # "127.0.0.1:PORT", known once the TLS site listens
        self.udp_port = 0
        # Where READY sends the bot's RTP: the fake's own socket, or (for load benchmarks) a
        # receiver in another process, which then answers IP discovery itself.
        self.udp_address: tuple[str, int] | None = None
        self.connections: dict[int, VoiceConnection] = {}  # by guild id, authenticated ones
        self._all: set[VoiceConnection] = set()

    def close(self, guild_id: int, code: int) -> VoiceConnection | None:
        """Close the guild's voice websocket from the server side."""
        connection = self.connections.get(guild_id)
        if connection is not None:
            connection.outbox.close(code)
        return connection

    def abort(self, guild_id: int) -> VoiceConnection | None:
        """Drop the guild's voice websocket's TCP connection without a close frame."""
        connection = self.connections.get(guild_id)
        if connection is not None:
            connection.abort()
        return connection

    async def on_shutdown(self, app: web.Application) -> None:
        """aiohttp shutdown hook (asyncio): close every voice websocket with 1001."""
        closing = list(self._all)
        for connection in closing:
            connection.outbox.close(1001)
        if closing:
            await asyncio.wait([asyncio.ensure_future(c.done.wait()) for c in closing], timeout=5)

    # -- the websocket ------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0, timeout=CLOSE_TIMEOUT)
        await ws.prepare(request)
        connection = VoiceConnection(
            Outbox(ws, on_written=self._state.changes.notify), transport=request.transport
        )
        self._all.add(connection)
        writer = asyncio.ensure_future(connection.outbox.run())
        connection.outbox.send(
            {"op": 8, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS, "v": 8}}
        )
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    try:
                        self._on_frame(connection, json.loads(message.data))
                    except Exception as exc:  # a bug of the fake: show it in `errors`
                        self._refuse(connection, 1011, f"fake Discord failed: {exc!r}")
                # BINARY frames are DAVE (MLS) messages; with protocol version 0 none are expected.
        finally:
            connection.outbox.finish()
            with contextlib.suppress(Exception):
                await writer
            self._all.discard(connection)
            self._closed(connection, ws)
            connection.done.set()
        return ws

    def _closed(self, connection: VoiceConnection, ws: web.WebSocketResponse) -> None:
        if connection.guild_id is None:
            return
        voice = self._state.bot_voice[connection.guild_id]
        if self.connections.get(connection.guild_id) is connection:
            del self.connections[connection.guild_id]
            voice.websocket_open = False
            voice.described = False
        if connection.aborted:
            close = VoiceClose(trio.current_time(), 1006, "lost")
        elif connection.outbox.closed_by_server is not None:
            close = VoiceClose(trio.current_time(), connection.outbox.closed_by_server, "server")
        elif ws.close_code is not None and ws.close_code != 1006:
            close = VoiceClose(trio.current_time(), int(ws.close_code), "client")
        else:  # 1006: the connection ended without a close frame
            close = VoiceClose(trio.current_time(), ws.close_code, "lost")
        voice.sessions_closed += 1
        voice.closes.append(close)
        self._state.changes.notify()

    def _refuse(self, connection: VoiceConnection, code: int, reason: str) -> None:
        self._state.reject("voice websocket", code, reason)
        connection.outbox.close(code)

    def _on_frame(self, connection: VoiceConnection, frame: JSON) -> None:
        op, data = frame.get("op"), frame.get("d") or {}
        if op == 3:
            nonce = data.get("t") if isinstance(data, dict) else data
            connection.outbox.send({"op": 6, "d": {"t": nonce}})
        elif op == 0:
            self._identify(connection, data)
        elif op == 7:
            self._resume(connection, data)
        elif connection.guild_id is None:
            self._refuse(connection, 4003, f"voice op {op} before IDENTIFY")
        elif op == 1:
            self._select_protocol(connection, data)
        elif op == 5:
            voice = self._state.bot_voice[connection.guild_id]
            voice.speaking.append(
                SpeakingEvent(
                    trio.current_time(), int(data.get("speaking", 0)), int(data.get("ssrc", 0))
                )
            )
            self._state.changes.notify()
        # op 12 CLIENT_CONNECT and others carry nothing the fake needs.

    def _authenticate(self, connection: VoiceConnection, data: JSON) -> BotVoice | None:
        state = self._state
        guild = state.guild_by_id(int(data.get("server_id") or 0))
        if guild is None:
            self._refuse(
                connection, 4004, f"voice IDENTIFY for unknown guild {data.get('server_id')}"
            )
            return None
        voice = state.bot_voice[guild.id]
        bot_state = guild.voice_states.get(state.bot.id)
        if voice.token is None or data.get("token") != voice.token:
            self._refuse(connection, 4004, "voice IDENTIFY/RESUME with a wrong or stale token")
            return None
        if bot_state is None or data.get("session_id") != bot_state.session_id:
            self._refuse(connection, 4006, "voice session id does not match the voice state")
            return None
        if "user_id" in data and int(data["user_id"]) != state.bot.id:
            self._refuse(connection, 4004, "voice IDENTIFY for another user")
            return None
        previous = self.connections.get(guild.id)
        if previous is not None and previous is not connection:
            previous.outbox.close(4014)
        connection.guild_id = guild.id
        self.connections[guild.id] = connection
        voice.websocket_open = True
        voice.sessions_opened += 1
        return voice

    def _refused_by_fault(self, connection: VoiceConnection, data: JSON) -> bool:
        """The `refuse_voice` fault: close at once with its code (not a rejection: on purpose)."""
        guild = self._state.guild_by_id(int(data.get("server_id") or 0))
        voice = None if guild is None else self._state.bot_voice[guild.id]
        if voice is None or voice.refuse_code is None:
            return False
        voice.refused += 1
        connection.outbox.close(voice.refuse_code)
        self._state.changes.notify()
        return True

    def _identify(self, connection: VoiceConnection, data: JSON) -> None:
        if self._refused_by_fault(connection, data):
            return
        voice = self._authenticate(connection, data)
        if voice is None:
            return
        voice.ssrc = secrets.randbelow(2**31 - 1) + 1
        voice.secret_key = None
        voice.mode = None
        voice.described = False
        ip, port = self.udp_address or ("127.0.0.1", self.udp_port)
        connection.outbox.send(
            {
                "op": 2,
                "d": {
                    "ssrc": voice.ssrc,
                    "ip": ip,
                    "port": port,
                    "modes": list(rtp.MODES),
                    "heartbeat_interval": 1,
                },
            }
        )
        self._state.changes.notify()

    def _resume(self, connection: VoiceConnection, data: JSON) -> None:
        if self._refused_by_fault(connection, data):
            return
        voice = self._authenticate(connection, data)
        if voice is None:
            return
        if voice.secret_key is None:
            self._refuse(connection, 4006, "voice RESUME of a session that never got its key")
            return
        voice.described = True
        connection.outbox.send({"op": 9, "d": None})
        self._state.changes.notify()

    def _select_protocol(self, connection: VoiceConnection, data: JSON) -> None:
        assert connection.guild_id is not None
        voice = self._state.bot_voice[connection.guild_id]
        mode = (data.get("data") or {}).get("mode")
        if data.get("protocol") != "udp" or mode not in rtp.MODES:
            self._refuse(connection, 4016, f"unknown encryption mode {mode!r}")
            return
        voice.mode = mode
        voice.secret_key = secrets.token_bytes(32)
        connection.outbox.send(
            {
                "op": 4,
                "d": {
                    "mode": mode,
                    "secret_key": list(voice.secret_key),
                    "dave_protocol_version": 0,
                    "audio_codec": "opus",
                    "video_codec": "H264",
                    "media_session_id": secrets.token_hex(16),
                },
            }
        )
        voice.described = True
        self._state.changes.notify()

    # -- UDP (called from the Trio UDP task) -------------------------------------------------------

    def on_datagram(self, datagram: bytes, address: str, port: int) -> bytes | None:
        """Handle one datagram; returns the reply to send back, if any."""
        state = self._state
        now = trio.current_time()
        ssrc = rtp.discovery_ssrc(datagram)
        if ssrc is not None:
            voice = self._voice_by_ssrc(ssrc)
            if voice is None:
                state.reject("voice udp", 0, f"IP discovery for unknown ssrc {ssrc}")
                return None
            if self._dropping(voice, now):
                return None
            return rtp.discovery_reply(ssrc, address, port)
        ssrc = rtp.rtp_ssrc(datagram)
        voice = None if ssrc is None else self._voice_by_ssrc(ssrc)
        if voice is None:
            state.reject("voice udp", 0, f"datagram of {len(datagram)} bytes from no known session")
            return None
        if self._dropping(voice, now):
            return None
        try:
            if voice.secret_key is None or voice.mode is None:
                raise ValueError("RTP before the session description")
            packet = rtp.decrypt(datagram, voice.secret_key, voice.mode)
        except ValueError:
            voice.undecryptable += 1
            state.changes.notify()
            return None
        voice.packets.append(
            RtpPacket(
                now, voice.guild_id, packet.ssrc, packet.sequence, packet.timestamp, packet.payload
            )
        )
        state.changes.notify()
        return None

    def _dropping(self, voice: BotVoice, now: float) -> bool:
        """Whether the `drop_udp` fault swallows this guild's datagrams now (counted)."""
        if now >= voice.udp_drop_until:
            return False
        voice.udp_dropped += 1
        self._state.changes.notify()
        return True

    def _voice_by_ssrc(self, ssrc: int) -> BotVoice | None:
        return next((v for v in self._state.bot_voice.values() if v.ssrc == ssrc), None)
