"""A loopback Discord that real discord.py 2.7 talks to: REST, gateway, voice websocket (TLS) and
voice UDP on 127.0.0.1, with a Trio face for tests. Needs the `loopback` extra and must run
inside `async with trio_asyncio.open_loop():`. See docs/testing.md.
"""

from musicbot.testing.loopback.audio import AudioReport
from musicbot.testing.loopback.face import FakeDiscord, Faults, open_fake_discord
from musicbot.testing.loopback.interaction import Interaction
from musicbot.testing.loopback.member import FakeMember
from musicbot.testing.loopback.records import (
    AppCommand,
    Callback,
    Choice,
    CommandOption,
    CommandSync,
    Component,
    Embed,
    EmbedField,
    GuildInfo,
    Message,
    RejectedRequest,
    RtpPacket,
    SpeakingEvent,
    Statistics,
    VoiceClose,
    VoiceStatus,
)

__all__ = [
    "AppCommand",
    "AudioReport",
    "Callback",
    "Choice",
    "CommandOption",
    "CommandSync",
    "Component",
    "Embed",
    "EmbedField",
    "FakeDiscord",
    "FakeMember",
    "Faults",
    "GuildInfo",
    "Interaction",
    "Message",
    "RejectedRequest",
    "RtpPacket",
    "SpeakingEvent",
    "Statistics",
    "VoiceClose",
    "VoiceStatus",
    "open_fake_discord",
]
