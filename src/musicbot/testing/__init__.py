"""Test support that users of musicbot can use too: fakes for the core's ports, and (with the
`loopback` extra) a loopback Discord and media server that real discord.py talks to.
"""

from musicbot.testing.fakes import (
    FakeFrameSource,
    FakeResolver,
    FakeVoice,
    FakeWarmer,
    SentFrame,
    tone_track,
)

__all__ = ["FakeFrameSource", "FakeResolver", "FakeVoice", "FakeWarmer", "SentFrame", "tone_track"]
