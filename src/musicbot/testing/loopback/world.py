"""What the Trio face's objects share: the model, the gateway, the voice server, the timeouts."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import attrs
import trio

from musicbot.testing.loopback.gateway import Gateway
from musicbot.testing.loopback.state import State
from musicbot.testing.loopback.voice import VoiceServer

T = TypeVar("T")


@attrs.frozen
class World:
    state: State
    gateway: Gateway
    voice: VoiceServer
    wait_timeout: float

    async def wait_for(self, predicate: Callable[[], T | None], *, what: str) -> T:
        """Wait (at most `wait_timeout`) until `predicate()` is truthy; return its value."""
        return await self.state.changes.wait_for(predicate, within=self.wait_timeout, what=what)

    async def written(self, event: trio.Event | None, *, what: str) -> None:
        """Wait until a dispatch is written to the bot's websocket (None: nobody to send it to)."""
        if event is None:
            return
        with trio.move_on_after(self.wait_timeout):
            await event.wait()
            return
        raise trio.TooSlowError(
            f"timed out after {self.wait_timeout:g} s writing {what} to the bot"
        )
