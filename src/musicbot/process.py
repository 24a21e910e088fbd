"""ProcessStatistics: what this process holds right now (memory, CPU, descriptors, threads,
child processes), read with psutil in one `oneshot()`.

Nothing here raises: a figure the platform (or a permission) does not give is None. Reading it
costs about a millisecond, most of it listing child processes, which scans every process on the
host; call it from a worker thread (`trio.to_thread.run_sync`) rather than between audio frames.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import attrs
import psutil

T = TypeVar("T")

FFMPEG_PREFIX = "ffmpeg"
"""A child process whose name starts with this (any case) is counted as an ffmpeg."""


@attrs.frozen
class ProcessStatistics:
    pid: int
    resident_memory_bytes: int | None
    cpu_seconds: float | None
    """User plus system CPU time since the process started."""
    cpu_percent: float | None
    """CPU use since the previous reading (the first: since the process started), in percent of
    one core: 250.0 is two and a half cores busy."""
    open_fds: int | None
    """Open file descriptors (POSIX); None on Windows."""
    max_fds: int | None
    """The soft limit on open file descriptors (RLIMIT_NOFILE); None where there is none."""
    threads: int | None
    children: int | None
    """Direct child processes, zombies (exited but not yet reaped) included."""
    ffmpeg_children: int | None
    """How many of `children` are ffmpeg."""
    started_at: float | None
    """When the process started, in seconds since the Unix epoch."""
    uptime_seconds: float | None
    gc_collections: tuple[int, ...]
    """Garbage collections run so far, per generation (oldest last)."""
    gc_uncollectable: int
    """Objects the garbage collector found unreachable but could not free, in total."""


class ProcessMonitor:
    """Reads ProcessStatistics for one process, remembering the previous reading so that each
    reading's `cpu_percent` covers the time since the one before.

    Each consumer that wants its own CPU window (an admin command, a metrics scrape) keeps its own
    monitor. Safe to call from several threads.
    """

    def __init__(self, pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        self._lock = threading.Lock()
        self._process: psutil.Process | None
        try:
            self._process = psutil.Process(self.pid)
        except psutil.Error:
            self._process = None
        self._previous: tuple[float, float] | None = None
        """(time.monotonic(), cpu_seconds) at the previous reading."""

    def statistics(self) -> ProcessStatistics:
        with self._lock:
            return self._read()

    def _read(self) -> ProcessStatistics:
        process = self._process
        resident = cpu = fds = max_fds = threads = started = None
        children: list[psutil.Process] | None = None
        if process is not None:
            try:
                with process.oneshot():
                    resident = _attempt(lambda: process.memory_info().rss)
                    cpu = _attempt(lambda: _cpu_seconds(process))
                    fds = _attempt(lambda: process.num_fds())  # absent on Windows
                    threads = _attempt(process.num_threads)
                    started = _attempt(process.create_time)
                    max_fds = _attempt(lambda: _soft_fd_limit(process))
                children = _attempt(process.children)
            except psutil.NoSuchProcess:  # it is gone: nothing about it is current
                resident = cpu = fds = max_fds = threads = started = children = None
        now_wall, now_mono = time.time(), time.monotonic()
        percent = None
        if cpu is not None:
            percent = self._cpu_percent(cpu, now_wall, now_mono, started)
            self._previous = (now_mono, cpu)
        stats = gc.get_stats()
        return ProcessStatistics(
            pid=self.pid,
            resident_memory_bytes=resident,
            cpu_seconds=cpu,
            cpu_percent=percent,
            open_fds=fds,
            max_fds=max_fds,
            threads=threads,
            children=None if children is None else len(children),
            ffmpeg_children=None if children is None else sum(map(_is_ffmpeg, children)),
            started_at=started,
            uptime_seconds=None if started is None else max(0.0, now_wall - started),
            gc_collections=tuple(generation["collections"] for generation in stats),
            gc_uncollectable=sum(generation["uncollectable"] for generation in stats),
        )

    def _cpu_percent(
        self, cpu: float, now_wall: float, now_mono: float, started: float | None
    ) -> float | None:
        if self._previous is not None:
            then, cpu_then = self._previous
            elapsed, used = now_mono - then, cpu - cpu_then
        elif started is not None:
            elapsed, used = now_wall - started, cpu
        else:
            return None
        if elapsed <= 0:
            return None
        return max(0.0, 100.0 * used / elapsed)


_default_monitor: ProcessMonitor | None = None


def process_statistics() -> ProcessStatistics:
    """This process's statistics; `cpu_percent` covers the time since the previous call."""
    global _default_monitor
    if _default_monitor is None:
        _default_monitor = ProcessMonitor()
    return _default_monitor.statistics()


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _soft_fd_limit(process: psutil.Process) -> int | None:
    soft, _hard = process.rlimit(psutil.RLIMIT_NOFILE)
    return None if soft == psutil.RLIM_INFINITY else int(soft)


def _is_ffmpeg(child: psutil.Process) -> bool:
    try:
        return child.name().lower().startswith(FFMPEG_PREFIX)
    except psutil.Error:  # it exited meanwhile, or is not ours to look at
        return False


def _attempt(read: Callable[[], T]) -> T | None:
    """`read()`, or None when the platform or a permission says no. NoSuchProcess propagates:
    the caller decides what a vanished process means."""
    try:
        return read()
    except psutil.NoSuchProcess:
        raise
    except (psutil.Error, OSError, NotImplementedError, AttributeError):
        return None
