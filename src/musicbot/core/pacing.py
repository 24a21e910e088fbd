"""FrameWindow: frames sent and missed over the last minute, in O(1) per frame and flat memory.

Like Lavalink's frame statistics: 50 frames a second are expected from a playing guild; a frame
that could not go out on time (the source stalled, the event loop was blocked) is missing.
"""

from __future__ import annotations

import math

WINDOW_SECONDS = 60


class FrameWindow:
    """Per-second buckets in a ring; a bucket older than the window is reset on reuse."""

    __slots__ = ("_missed", "_seconds", "_sent", "_stamps")

    def __init__(self, seconds: int = WINDOW_SECONDS) -> None:
        self._seconds = seconds
        self._stamps = [-1] * seconds
        self._sent = [0] * seconds
        self._missed = [0] * seconds

    def record(self, now: float, *, sent: int = 0, missed: int = 0) -> None:
        second = math.floor(now)
        slot = second % self._seconds
        if self._stamps[slot] != second:
            self._stamps[slot] = second
            self._sent[slot] = self._missed[slot] = 0
        self._sent[slot] += sent
        self._missed[slot] += missed

    def totals(self, now: float) -> tuple[int, int]:
        """(sent, missed) in the window ending at `now`."""
        oldest = math.floor(now) - self._seconds + 1
        sent = missed = 0
        for slot, stamp in enumerate(self._stamps):
            if stamp >= oldest:
                sent += self._sent[slot]
                missed += self._missed[slot]
        return sent, missed
