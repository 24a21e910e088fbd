"""The process's memory kept in shape for a run of months: the cyclic collector's pauses kept
out of the audio, and the heap's free pages given back to the operating system.

Pauses. A full pass of Python's cyclic collector walks every container object, and stops the
event loop while it does: with 200 guilds playing, 60 to 150 ms, when each frame has 20 ms. So
what is known to live long is frozen out of the passes (`gc.freeze()`, a constant-time list
move): what start-up made, and what each voice connection holds once it is made. What dies in
a frozen object cycle waits for the next idle sweep, which unfreezes, collects everything once
and freezes again: one full pass per sweep (every 5 minutes by default) instead of several a
minute. Objects freed by reference counting, most of them, are freed at once, frozen or not.

Free pages. Python frees what the bot is done with, but glibc keeps freed chunks in the middle
of its heap as resident pages: every voice join and leave (TLS buffers, websocket frames, HTTP
bodies) leaves holes, and resident memory creeps up while live memory stays flat (the soak
found 34 MB after 850 join/play/skip/leave cycles). Each sweep hands them back with
`malloc_trim(0)`. Elsewhere than glibc (musl, macOS) there is nothing to call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psutil


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class HeapKeeper:
    """The supervisor's Heap (musicbot.core.ports). Freezing starts with `kept()`."""

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._process = psutil.Process()
        self._freezing = False

    @property
    def can_trim(self) -> bool:
        return self._trim is not None

    @contextmanager
    def kept(self) -> Iterator[None]:
        """Freeze what exists now (call it when start-up is done), and on every `settle`,
        until the block ends; then unfreeze, so that a process running bots one after another
        (the tests) collects them as usual."""
        gc.collect()
        gc.freeze()
        self._freezing = True
        try:
            yield
        finally:
            self._freezing = False
            gc.unfreeze()

    def settle(self) -> None:
        if self._freezing:
            gc.freeze()

    def sweep(self) -> int:
        if self._freezing:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        return self.trim()

    def trim(self) -> int:
        """Give the heap's free pages back; the bytes of resident memory that went."""
        if self._trim is None:
            return 0
        before = self._process.memory_info().rss
        self._trim(0)
        return max(0, before - self._process.memory_info().rss)
