import signal
from collections.abc import AsyncIterator

import pytest
import trio

from musicbot import app


async def two_signals() -> AsyncIterator[int]:
    yield signal.SIGTERM
    yield signal.SIGINT


async def test_the_first_signal_stops_gracefully_and_a_second_exits_at_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    exits: list[int] = []
    monkeypatch.setattr(app.os, "_exit", exits.append)
    stop = trio.Event()
    await app._watch_signals(two_signals(), stop)
    assert stop.is_set()
    assert exits == [app.EXIT_AT_ONCE]
    assert "SIGTERM: shutting down (send it again to exit at once)" in caplog.text
    assert "SIGINT again: exiting at once" in caplog.text
