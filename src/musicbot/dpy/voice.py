"""DiscordVoice: the core's VoicePort over a discord.py VoiceClient.

Frames go out with `send_audio_packet(opus, encode=False)` straight from the GuildPlayer's Trio
pacing loop: no discord.py AudioPlayer thread per guild. The asyncio loop runs on the same
thread under trio-asyncio, so this synchronous call is safe from Trio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
from discord.errors import ConnectionClosed
from discord.gateway import DiscordVoiceWebSocket
from discord.utils import MISSING
from discord.voice_state import ConnectionFlowState, SocketReader, VoiceConnectionState

if TYPE_CHECKING:
    from discord.channel import VocalGuildChannel

from musicbot.core.ports import VoiceConnectError
from musicbot.dpy.bridge import call_asyncio_from_trio

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15.0
"""Seconds Discord gets to complete a voice handshake."""

RESUME_TIMEOUT = 5.0
"""Seconds a voice RESUME may take before a new voice session is tried instead."""

NEW_SESSION_ATTEMPTS = 2
"""New voice sessions tried after a voice websocket is lost and cannot be resumed; then the bot
leaves the channel (and the player ends, saying so)."""

NEW_SESSION_BACKOFF = 1.0
"""Seconds between those attempts."""

NOT_RESUMABLE = frozenset({4006, 4009})
"""Voice close codes after which the session is gone (invalid, timed out): only a new one helps."""

_REQUEST_ERRORS = (ConnectionClosed, TimeoutError, aiohttp.ClientError, OSError)
"""What a voice websocket being opened or polled raises when Discord's side fails."""


POLL_SECONDS = 1.0
"""Longest wait of a voice UDP reader before it looks again at which socket to read."""


class _PollingSocketReader(SocketReader):
    """discord.py's voice UDP reader, waiting with poll() instead of select().

    select() cannot wait on a descriptor numbered 1024 or more: past about 250 voice
    connections in one process every new reader got ValueError, which discord.py's loop takes
    for a closed socket and retries at once, spinning a core, and IP discovery never finished
    (the streams benchmark's cliff at 256 guilds). poll() has no such limit.

    It waits at most POLL_SECONDS at a time: poll() looks descriptors up by number, and a
    socket closed while it waits (its number then reused by the next one) can leave it asleep
    on the old socket, deaf to the new one, for as long as it waits.
    """

    def _do_run(self) -> None:
        while not self._end.is_set():
            if not self._running.is_set():
                self._running.wait()
                continue
            sock = self.state.socket
            try:
                poller = select.poll()
                poller.register(sock, select.POLLIN)
                events = poller.poll(POLL_SECONDS * 1000)
            except (ValueError, TypeError, OSError):  # no socket yet, or a closed one
                self._end.wait(0.05)
                continue
            if not events:
                continue
            try:
                data = sock.recv(2048)
            except OSError:
                log.debug("voice socket read failed; it is being replaced or closed")
                self._end.wait(0.05)
                continue
            if not data:  # shut for reading: the connection is ending
                self._end.wait(0.05)
                continue
            for callback in self._callbacks:
                try:
                    callback(data)
                except Exception:
                    log.exception("a voice socket listener failed")


class _VoiceWebSocket(DiscordVoiceWebSocket):
    """discord.py's voice websocket, noting whether it RESUMEs and whether Discord took it."""

    resuming = False
    resumed = False

    async def received_message(self, msg: dict[str, Any]) -> None:
        if msg.get("op") == self.RESUMED:
            self.resumed = True
        await super().received_message(msg)


class _VoiceConnectionState(VoiceConnectionState):
    """discord.py 2.7's voice connection with fixes for a bot that joins and leaves all day
    (found by the soak benchmark and the fault tests; each is worth reporting upstream):

    - a leave wakes the socket reader thread at once: it waits in select() for up to 30 s,
      which closing the socket does not end, and until then it keeps the whole voice client
      (about 0.3 MB) alive;
    - the "you left" confirmation is expected before the leave is sent: discord.py cleared
      the flag after sending, so a quick answer was lost and the leave waited out its timeout;
      likewise the two voice updates that answer a join are expected before the join is sent:
      discord.py dropped any that came while the send was under way, and the join timed out;
    - one disconnect at a time: a websocket closing normally during a leave started a second,
      nested one, which cleared the confirmation again; and none after the voice client is
      done (kicked, or given up on): a second leave waited its whole timeout for a
      confirmation that goes to nobody;
    - its UDP reader waits with poll(), not select() (see `_PollingSocketReader`);
    - a wait for a connection state no longer misses a change made before it started waiting
      (see `_wait_for_state`);
    - a lost voice websocket is recovered without leaving the channel (`_recover`), where
      discord.py waited 15 s for a session description that a RESUME never gets (4015), or
      left the channel and joined it again (4006, a dropped connection), which ended the
      player on the "left" voice update while discord.py went on joining: a bot in the
      channel with nothing to play.
    """

    _disconnecting = False
    _finished = False
    """Disconnected with cleanup: this connection is over and takes no second leave."""
    speaking = False
    """What the player last said (re-said after a reconnection: a new session starts silent)."""

    def __init__(self, voice_client: discord.VoiceClient) -> None:
        self._state_watchers: set[asyncio.Event] = set()
        super().__init__(voice_client)
        # discord.py started its select() reader already; it ends at once, paused as it is.
        self._socket_reader.stop()
        self._socket_reader = _PollingSocketReader(self)
        self._socket_reader.start()

    async def disconnect(
        self, *, force: bool = True, cleanup: bool = True, wait: bool = False
    ) -> None:
        if self._disconnecting or self._finished:
            return
        self._disconnecting = True
        try:
            if cleanup:
                self._stop_recovering()
            if cleanup and self.socket:
                # Told to end first: a socket shut for reading is always readable, and a
                # reader still running would spin on it.
                self._socket_reader.stop()
                with contextlib.suppress(OSError):  # not connected: nothing to wake
                    self.socket.shutdown(socket.SHUT_RD)
            await super().disconnect(force=force, cleanup=cleanup, wait=wait)
        finally:
            self._disconnecting = False
            self._finished = cleanup

    def _stop_recovering(self) -> None:
        """A leave from outside ends the websocket poller, so that a reconnection under way
        does not join the channel again behind the leave."""
        if self._runner is not None and not self._inside_runner():
            self._runner.cancel()
            self._runner = None

    @property
    def state(self) -> ConnectionFlowState:
        return self._state

    @state.setter
    def state(self, state: ConnectionFlowState) -> None:
        VoiceConnectionState.state.fset(self, state)  # type: ignore[attr-defined]
        for watcher in self._state_watchers:
            watcher.set()

    async def _wait_for_state(
        self,
        state: ConnectionFlowState,
        *other_states: ConnectionFlowState,
        timeout: float | None = None,  # noqa: ASYNC109 (discord.py's signature)
    ) -> None:
        # discord.py set and cleared one event at each change, and a change that came before
        # the waiting task got to wait was missed: with a fast Discord, the voice updates that
        # answer a join landed there, and the join waited out its timeout. Each wait has its
        # own event here, set by every change until the wait ends.
        states = (state, *other_states)
        changed = asyncio.Event()
        self._state_watchers.add(changed)
        try:
            async with asyncio.timeout(timeout):
                while self.state not in states:
                    await changed.wait()
                    changed.clear()
        finally:
            self._state_watchers.discard(changed)

    async def _voice_connect(self, *, self_deaf: bool = False, self_mute: bool = False) -> None:
        if self.state is ConnectionFlowState.disconnected:
            self.state = ConnectionFlowState.set_guild_voice_state
        await super()._voice_connect(self_deaf=self_deaf, self_mute=self_mute)

    async def _voice_disconnect(self) -> None:
        self.state = ConnectionFlowState.disconnected
        self._expecting_disconnect = True
        self._disconnected.clear()
        await self.voice_client.channel.guild.change_voice_state(channel=None)

    async def _connect_websocket(self, resume: bool) -> DiscordVoiceWebSocket:
        seq_ack = -1 if self.ws is MISSING else self.ws.seq_ack
        ws = await _VoiceWebSocket.from_connection_state(
            self, resume=resume, hook=self.hook, seq_ack=seq_ack
        )
        ws.resuming = resume
        self.state = ConnectionFlowState.websocket_connected
        return ws

    async def _handshake_websocket(self) -> None:
        ws = self.ws
        if isinstance(ws, _VoiceWebSocket) and ws.resuming:
            # Discord answers RESUMED and keeps the session (UDP socket, SSRC, key): no new
            # session description comes, which discord.py waited for until its timeout.
            while not ws.resumed and ws.secret_key is None:
                await ws.poll_event()
            self.state = ConnectionFlowState.connected
            return
        await super()._handshake_websocket()

    # --- a lost voice websocket ----------------------------------------------------------------

    async def _poll_voice_ws(self, reconnect: bool) -> None:
        while True:
            try:
                await self.ws.poll_event()
            except asyncio.CancelledError:
                return
            except (ConnectionClosed, TimeoutError) as exc:
                code = exc.code if isinstance(exc, ConnectionClosed) else None
                if not await self._recover(code):
                    return

    async def _recover(self, code: int | None) -> bool:
        """After the voice websocket closed with `code` (None: it went silent), get back to
        sending audio in the same channel; True once connected again, False if this voice
        connection is over (the bot left the channel, and the player hears of it)."""
        guild_id = self.voice_client.guild.id
        if code == 1000:  # closed by our own leave, or ended normally by Discord
            if not self._expecting_disconnect:
                await self.disconnect()
            return False
        if code in (4014, 4022):
            return await self._after_disconnected_by_discord(code)
        if code == 4021 or not self.reconnect:
            log.warning("guild %s: voice closed with %s; leaving the channel", guild_id, code)
            await self._leave_after_failure()
            return False
        log.info("guild %s: voice websocket lost (close code %s); reconnecting", guild_id, code)
        if code not in NOT_RESUMABLE and await self._attempt(self._resume, RESUME_TIMEOUT):
            log.info("guild %s: voice session resumed", guild_id)
            await self._say_speaking_again()
            return True
        for attempt in range(NEW_SESSION_ATTEMPTS):
            if attempt:
                await asyncio.sleep(NEW_SESSION_BACKOFF * attempt)
            if self.state is ConnectionFlowState.disconnected and self._expecting_disconnect:
                return False  # a leave came in meanwhile
            if await self._attempt(self._new_session, self.timeout):
                log.info("guild %s: new voice session after losing the old one", guild_id)
                await self._say_speaking_again()
                return True
        log.warning("guild %s: could not reconnect to voice; leaving the channel", guild_id)
        await self._leave_after_failure()
        return False

    async def _after_disconnected_by_discord(self, code: int) -> bool:
        """4014/4022, discord.py's way: a kick (its voice update came first) ends the
        connection; otherwise it may be a move, so wait for the new voice server."""
        if self._disconnected.is_set():
            await self.disconnect()
            return False
        if await self._potential_reconnect():
            await self._say_speaking_again()
            return True
        log.info("guild %s: voice closed with %s and no move followed", self.guild.id, code)
        await self._leave_after_failure()
        return False

    async def _attempt(self, step: Callable[[], Awaitable[None]], within: float) -> bool:
        """Run one reconnection step, for at most `within` seconds; False if Discord's side
        failed it."""
        previous = self.ws
        try:
            async with asyncio.timeout(within):
                await step()
        except _REQUEST_ERRORS as exc:
            log.info("guild %s: voice reconnection step failed: %r", self.guild.id, exc)
            if self.ws is not previous:
                await _close_quietly(self.ws)
            return False
        finally:
            if previous is not MISSING and previous is not self.ws:
                await _close_quietly(previous)  # closed already; this ends its heartbeats
        return True

    async def _resume(self) -> None:
        """RESUME on a new websocket: the same UDP socket, SSRC and key carry on."""
        self.state = ConnectionFlowState.websocket_connected  # frames wait until it is back
        self.ws = await self._connect_websocket(resume=True)
        await self._handshake_websocket()

    async def _new_session(self) -> None:
        """A new voice session in the same channel without leaving it (a leave would end the
        player): fresh voice updates for the channel, a new UDP socket, IDENTIFY."""
        self._socket_reader.pause()
        retired, self.socket = self.socket, MISSING  # the voice update makes the new one
        if retired:
            # Wake the reader off the old socket (shut for reading, it is readable at once),
            # and close it only once the new session is up: closed now, its number could go
            # to the new socket while the reader still waits on it (see _PollingSocketReader).
            with contextlib.suppress(OSError):
                retired.shutdown(socket.SHUT_RD)
        self.ip = self.port = MISSING
        self.secret_key = MISSING
        self.state = ConnectionFlowState.set_guild_voice_state
        voice_state = self.self_voice_state or self
        try:
            await self._voice_connect(
                self_deaf=voice_state.self_deaf, self_mute=voice_state.self_mute
            )
            await self._wait_for_state(ConnectionFlowState.got_both_voice_updates)
            self.ws = await self._connect_websocket(resume=False)
            await self._handshake_websocket()
        finally:
            if retired:
                retired.close()

    async def _say_speaking_again(self) -> None:
        if self.speaking:
            with contextlib.suppress(*_REQUEST_ERRORS):
                await self.ws.speak(discord.SpeakingState.voice)

    async def _leave_after_failure(self) -> None:
        if self.state is not ConnectionFlowState.disconnected:
            await self.disconnect()


async def _close_quietly(ws: DiscordVoiceWebSocket) -> None:
    """Close a voice websocket that failed or was replaced (stopping its heartbeat thread);
    it may be gone already."""
    with contextlib.suppress(*_REQUEST_ERRORS):
        await ws.close()


class MusicVoiceClient(discord.VoiceClient):
    """discord.VoiceClient with the fixes of `_VoiceConnectionState`, and a channel that stays
    current across a new gateway session (see `channel`)."""

    _channel: VocalGuildChannel | None = None

    @property  # type: ignore[override]
    def channel(self) -> VocalGuildChannel:
        """The channel as the client knows it now. A new gateway session (an IDENTIFY after
        an invalid session) builds new guild and channel objects and updates only those: the
        ones discord.py kept went stale, and who is in the channel (the alone policy) was read
        from a guild frozen at the old session."""
        kept = self._channel
        assert kept is not None, "a voice client always has a channel"
        guild = self.client.get_guild(kept.guild.id)  # by id: Client.get_channel is O(guilds)
        current = None if guild is None else guild.get_channel(kept.id)
        return current if isinstance(current, discord.VoiceChannel | discord.StageChannel) else kept

    @channel.setter
    def channel(self, channel: discord.abc.Connectable | None) -> None:
        # discord.py sets it on connect and on a move; a None (moved to no channel, on the way
        # out) keeps the last one, which the teardown still needs.
        if isinstance(channel, discord.VoiceChannel | discord.StageChannel):
            self._channel = channel

    def create_connection_state(self) -> VoiceConnectionState:
        return _VoiceConnectionState(self)

    async def set_speaking(self, speaking: bool) -> None:
        """Say whether audio flows. Remembered even while reconnecting, and said again once
        connected: a new voice session starts out silent."""
        connection = self._connection
        assert isinstance(connection, _VoiceConnectionState)
        connection.speaking = speaking
        if self.is_connected():
            state = discord.SpeakingState.voice if speaking else discord.SpeakingState.none
            # The websocket may be closing under us; a reconnection says it again.
            with contextlib.suppress(*_REQUEST_ERRORS):
                await self.ws.speak(state)


class DiscordVoice:
    """One guild's voice connection, made on connect() and gone after disconnect()."""

    def __init__(self, client: discord.Client, guild_id: int) -> None:
        self._client = client
        self.guild_id = guild_id
        self._voice: MusicVoiceClient | None = None
        self.frames_dropped = 0

    async def connect(self, channel_id: int | None) -> None:
        if channel_id is None:
            raise VoiceConnectError("join a voice channel first, then ask again")
        channel = self._client.get_channel(channel_id)
        if not isinstance(channel, discord.VoiceChannel | discord.StageChannel):
            raise VoiceConnectError("I cannot see that voice channel")
        permissions = channel.permissions_for(channel.guild.me)
        if not (permissions.connect and permissions.speak):
            raise VoiceConnectError(
                f"I need the Connect and Speak permissions in {channel.mention} to play there"
            )
        try:
            self._voice = await call_asyncio_from_trio(self._connect, channel)
        except TimeoutError:
            raise VoiceConnectError(
                "Discord did not finish the voice connection in time; try again in a moment"
            ) from None
        except discord.ClientException as exc:
            raise VoiceConnectError(f"I could not join {channel.mention}: {exc}") from None

    @staticmethod
    async def _connect(channel: discord.VoiceChannel | discord.StageChannel) -> MusicVoiceClient:
        voice = await channel.connect(
            cls=MusicVoiceClient, timeout=CONNECT_TIMEOUT, reconnect=True, self_deaf=True
        )
        assert isinstance(voice, MusicVoiceClient)
        return voice

    def send_frame(self, opus: bytes) -> None:
        voice = self._voice
        if voice is None or not voice.is_connected():
            # Reconnecting (see `_VoiceConnectionState._recover`): drop the frame, keep the
            # schedule, so the track goes on where it would have been.
            self.frames_dropped += 1
            return
        voice.send_audio_packet(opus, encode=False)

    async def set_speaking(self, speaking: bool) -> None:
        voice = self._voice
        if voice is not None:
            await call_asyncio_from_trio(voice.set_speaking, speaking)

    async def disconnect(self) -> None:
        voice, self._voice = self._voice, None
        if voice is not None:
            await call_asyncio_from_trio(voice.disconnect, force=True)
            return
        # A connect that failed part way may have left a voice client behind.
        guild = self._client.get_guild(self.guild_id)
        if guild is not None and isinstance(guild.voice_client, discord.VoiceClient):
            await call_asyncio_from_trio(guild.voice_client.disconnect, force=True)


class DiscordVoices:
    """The supervisor's VoiceFactory. The client is attached once it exists: the supervisor
    starts first (it must outlive the bot), and players are only asked for after login."""

    def __init__(self) -> None:
        self.client: discord.Client | None = None

    def __call__(self, guild_id: int) -> DiscordVoice:
        if self.client is None:
            raise RuntimeError("DiscordVoices used before the bot was attached")
        return DiscordVoice(self.client, guild_id)
