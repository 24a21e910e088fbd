"""FrameClock: one timer that wakes every guild's pacing loop at its frame deadlines.

`trio.sleep_until()` costs a cancel scope, an entry in Trio's deadline heap and a Cancelled
exception raised and caught: with a GuildPlayer sending 50 frames a second, that was about 60 %
of its work per frame. Players of one supervisor wait on a shared FrameClock instead: each parks
its own task (no cancel scope, no exception) with its due time in a heap, and the clock's one
ticker task sleeps until the earliest due time and wakes every player due by then, a few at a
time when their deadlines fall together. Each player still runs in its own task and cancel
scope: cancelling it while it waits takes it off the clock.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any

import trio

BATCH = 0.0002
"""Players due this soon after the earliest wake with it: one ticker wake serves them all."""


class FrameClock:
    """Run `clock.run()` in a nursery; then `await clock.sleep_until(due)` from any task of that
    Trio run. Once the ticker has stopped, sleep_until() is plain trio.sleep_until()."""

    def __init__(self) -> None:
        # Entries are [due, order, task]; a waiter cancelled meanwhile has task None.
        self._due: list[list[Any]] = []
        self._order = itertools.count()
        self._nap: trio.CancelScope | None = None
        self._running = False
        self.wakes = 0
        """Times the ticker woke (the cost the players share)."""

    async def run(self) -> None:
        """The ticker. Runs until cancelled; then wakes whoever still waits (shielded ones)."""
        due = self._due
        self._running = True
        try:
            while True:
                with trio.CancelScope(deadline=due[0][0] if due else math.inf) as nap:
                    self._nap = nap
                    await trio.sleep_forever()
                self._nap = None
                self.wakes += 1
                until = trio.current_time() + BATCH
                while due and due[0][0] <= until:
                    task = heapq.heappop(due)[2]
                    if task is not None:
                        trio.lowlevel.reschedule(task)
        finally:
            self._running = False
            self._nap = None
            for entry in due:
                if entry[2] is not None:
                    trio.lowlevel.reschedule(entry[2])
            due.clear()

    async def sleep_until(self, deadline: float) -> None:
        """Like trio.sleep_until(deadline): a checkpoint, and cancellable while it waits."""
        if not self._running:
            await trio.sleep_until(deadline)
            return
        entry: list[Any] = [deadline, next(self._order), trio.lowlevel.current_task()]
        heapq.heappush(self._due, entry)
        nap = self._nap
        if nap is not None and deadline < nap.deadline:
            nap.deadline = deadline  # the ticker would sleep past this one

        def abort(_: Any) -> trio.lowlevel.Abort:
            entry[2] = None  # left where it is; the ticker skips it
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
