"""DiscordVoice: the core's VoicePort over a discord.py VoiceClient.

Frames go out with `send_audio_packet(opus, encode=False)` straight from the GuildPlayer's Trio
pacing loop: no discord.py AudioPlayer thread per guild. The asyncio loop runs on the same
thread under trio-asyncio, so this synchronous call is safe from Trio.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket

import discord
from discord.voice_state import ConnectionFlowState, SocketReader, VoiceConnectionState

from musicbot.core.ports import VoiceConnectError
from musicbot.dpy.bridge import call_asyncio_from_trio

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15.0
"""Seconds Discord gets to complete a voice handshake."""


class _PollingSocketReader(SocketReader):
    """discord.py's voice UDP reader, waiting with poll() instead of select().

    select() cannot wait on a descriptor numbered 1024 or more: past about 250 voice
    connections in one process every new reader got ValueError, which discord.py's loop takes
    for a closed socket and retries at once, spinning a core, and IP discovery never finished
    (the streams benchmark's cliff at 256 guilds). poll() has no such limit.
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
                events = poller.poll(30_000)
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


class _VoiceConnectionState(VoiceConnectionState):
    """discord.py 2.7's voice connection with three fixes for a bot that joins and leaves all
    day (found by the soak benchmark; each is worth reporting upstream):

    - a leave wakes the socket reader thread at once: it waits in select() for up to 30 s,
      which closing the socket does not end, and until then it keeps the whole voice client
      (about 0.3 MB) alive;
    - the "you left" confirmation is expected before the leave is sent: discord.py cleared
      the flag after sending, so a quick answer was lost and the leave waited out its timeout;
      likewise the two voice updates that answer a join are expected before the join is sent:
      discord.py dropped any that came while the send was under way, and the join timed out;
    - one disconnect at a time: a websocket closing normally during a leave started a second,
      nested one, which cleared the confirmation again;
    - its UDP reader waits with poll(), not select() (see `_PollingSocketReader`).
    """

    _disconnecting = False

    def __init__(self, voice_client: discord.VoiceClient) -> None:
        super().__init__(voice_client)
        # discord.py started its select() reader already; it ends at once, paused as it is.
        self._socket_reader.stop()
        self._socket_reader = _PollingSocketReader(self)
        self._socket_reader.start()

    async def disconnect(
        self, *, force: bool = True, cleanup: bool = True, wait: bool = False
    ) -> None:
        if self._disconnecting:
            return
        self._disconnecting = True
        try:
            if cleanup and self.socket:
                # Told to end first: a socket shut for reading is always readable, and a
                # reader still running would spin on it.
                self._socket_reader.stop()
                with contextlib.suppress(OSError):  # not connected: nothing to wake
                    self.socket.shutdown(socket.SHUT_RD)
            await super().disconnect(force=force, cleanup=cleanup, wait=wait)
        finally:
            self._disconnecting = False

    async def _voice_connect(self, *, self_deaf: bool = False, self_mute: bool = False) -> None:
        if self.state is ConnectionFlowState.disconnected:
            self.state = ConnectionFlowState.set_guild_voice_state
        await super()._voice_connect(self_deaf=self_deaf, self_mute=self_mute)

    async def _voice_disconnect(self) -> None:
        self.state = ConnectionFlowState.disconnected
        self._expecting_disconnect = True
        self._disconnected.clear()
        await self.voice_client.channel.guild.change_voice_state(channel=None)


class MusicVoiceClient(discord.VoiceClient):
    """discord.VoiceClient with the fixes of `_VoiceConnectionState`."""

    def create_connection_state(self) -> VoiceConnectionState:
        return _VoiceConnectionState(self)


class DiscordVoice:
    """One guild's voice connection, made on connect() and gone after disconnect()."""

    def __init__(self, client: discord.Client, guild_id: int) -> None:
        self._client = client
        self.guild_id = guild_id
        self._voice: discord.VoiceClient | None = None
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
    async def _connect(channel: discord.VoiceChannel | discord.StageChannel) -> discord.VoiceClient:
        return await channel.connect(
            cls=MusicVoiceClient, timeout=CONNECT_TIMEOUT, reconnect=True, self_deaf=True
        )

    def send_frame(self, opus: bytes) -> None:
        voice = self._voice
        if voice is None or not voice.is_connected():
            # Reconnecting (discord.py resumes on its own): drop the frame, keep the schedule.
            self.frames_dropped += 1
            return
        voice.send_audio_packet(opus, encode=False)

    async def set_speaking(self, speaking: bool) -> None:
        voice = self._voice
        if voice is None or not voice.is_connected():
            return
        state = discord.SpeakingState.voice if speaking else discord.SpeakingState.none
        await call_asyncio_from_trio(voice.ws.speak, state)

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
