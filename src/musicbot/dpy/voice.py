"""DiscordVoice: the core's VoicePort over a discord.py VoiceClient.

Frames go out with `send_audio_packet(opus, encode=False)` straight from the GuildPlayer's Trio
pacing loop: no discord.py AudioPlayer thread per guild. The asyncio loop runs on the same
thread under trio-asyncio, so this synchronous call is safe from Trio.
"""

from __future__ import annotations

import contextlib
import logging
import socket

import discord
from discord.voice_state import ConnectionFlowState, VoiceConnectionState

from musicbot.core.ports import VoiceConnectError
from musicbot.dpy.bridge import call_asyncio_from_trio

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15.0
"""Seconds Discord gets to complete a voice handshake."""


class _VoiceConnectionState(VoiceConnectionState):
    """discord.py 2.7's voice connection with three fixes for a bot that joins and leaves all
    day (found by the soak benchmark; each is worth reporting upstream):

    - a leave wakes the socket reader thread at once: it waits in select() for up to 30 s,
      which closing the socket does not end, and until then it keeps the whole voice client
      (about 0.3 MB) alive;
    - the "you left" confirmation is expected before the leave is sent: discord.py cleared
      the flag after sending, so a quick answer was lost and the leave waited out its timeout;
    - one disconnect at a time: a websocket closing normally during a leave started a second,
      nested one, which cleared the confirmation again.
    """

    _disconnecting = False

    async def disconnect(
        self, *, force: bool = True, cleanup: bool = True, wait: bool = False
    ) -> None:
        if self._disconnecting:
            return
        self._disconnecting = True
        try:
            if cleanup and self.socket:
                with contextlib.suppress(OSError):  # not connected: nothing to wake
                    self.socket.shutdown(socket.SHUT_RD)
            await super().disconnect(force=force, cleanup=cleanup, wait=wait)
        finally:
            self._disconnecting = False

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
