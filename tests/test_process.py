from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import imageio_ffmpeg
import psutil
import pytest

from musicbot.process import ProcessMonitor, ProcessStatistics, process_statistics

needs_proc = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="exact counts are checked where psutil has them all",
)


@pytest.fixture
def monitor() -> ProcessMonitor:
    return ProcessMonitor()


Sleeper = Callable[[], "subprocess.Popen[bytes]"]


@pytest.fixture
def start_sleeper() -> Iterator[Sleeper]:
    """Starts child processes that wait on their stdin; each is killed and reaped at the end."""
    with contextlib.ExitStack() as children:

        def start() -> subprocess.Popen[bytes]:
            child = children.enter_context(
                subprocess.Popen(
                    [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
                )
            )
            children.callback(child.kill)
            return child

        yield start


@needs_proc
def test_a_reading_is_sane(monitor: ProcessMonitor) -> None:
    before = time.time()
    stats = monitor.statistics()
    assert stats.pid == os.getpid()
    assert stats.resident_memory_bytes is not None
    assert 1 << 20 < stats.resident_memory_bytes < 1 << 40
    assert stats.cpu_seconds is not None and stats.cpu_seconds > 0
    assert stats.cpu_percent is not None and stats.cpu_percent >= 0
    assert stats.open_fds is not None and stats.open_fds >= 3
    assert stats.max_fds is None or stats.max_fds >= stats.open_fds
    assert stats.threads is not None and stats.threads >= 1
    assert stats.started_at is not None and stats.started_at <= before
    assert stats.uptime_seconds is not None
    assert stats.uptime_seconds == pytest.approx(before - stats.started_at, abs=1.0)
    assert len(stats.gc_collections) >= 3
    assert all(count >= 0 for count in stats.gc_collections)
    assert stats.gc_uncollectable >= 0


@needs_proc
def test_opening_a_file_adds_one_descriptor(monitor: ProcessMonitor, tmp_path: Path) -> None:
    before = monitor.statistics().open_fds
    assert before is not None
    with (tmp_path / "f").open("w"):
        assert monitor.statistics().open_fds == before + 1
    assert monitor.statistics().open_fds == before


@needs_proc
def test_starting_a_thread_adds_one_thread(monitor: ProcessMonitor) -> None:
    def added_by_one_thread() -> int | None:
        before = monitor.statistics().threads
        release = threading.Event()
        worker = threading.Thread(target=release.wait)
        worker.start()
        try:
            during = monitor.statistics().threads
        finally:
            release.set()
            worker.join()
        return None if before is None or during is None else during - before

    # Other tests' idle worker threads (Trio's thread cache) may end at any moment, so a reading
    # may see one fewer; of three tries, one must see exactly the thread started here.
    assert 1 in [added_by_one_thread() for _ in range(3)]


def children(monitor: ProcessMonitor) -> tuple[int, int]:
    stats = monitor.statistics()
    assert stats.children is not None and stats.ffmpeg_children is not None
    return stats.children, stats.ffmpeg_children


@needs_proc
def test_a_child_is_counted_until_it_is_reaped(
    monitor: ProcessMonitor, start_sleeper: Sleeper
) -> None:
    others, other_ffmpegs = children(monitor)  # those other tests may have left
    sleeper = start_sleeper()
    assert children(monitor) == (others + 1, other_ffmpegs)
    assert sleeper.stdin is not None
    sleeper.stdin.close()  # it exits
    os.waitid(os.P_PID, sleeper.pid, os.WEXITED | os.WNOWAIT)  # until it has, without reaping
    assert children(monitor)[0] == others + 1  # a zombie: exited, not reaped
    assert sleeper.wait() == 0
    assert children(monitor)[0] == others


@needs_proc
def test_an_ffmpeg_child_is_counted_as_ffmpeg(
    monitor: ProcessMonitor, start_sleeper: Sleeper
) -> None:
    others, other_ffmpegs = children(monitor)
    start_sleeper()
    ffmpeg = subprocess.Popen(
        [
            *(imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error"),
            *("-f", "s16le", "-i", "pipe:0", "-f", "null", "-"),
        ],
        stdin=subprocess.PIPE,
    )
    try:
        assert children(monitor) == (others + 2, other_ffmpegs + 1)
    finally:
        assert ffmpeg.stdin is not None
        ffmpeg.stdin.close()  # end of input: ffmpeg exits on its own
        assert ffmpeg.wait(timeout=10) == 0
    assert children(monitor) == (others + 1, other_ffmpegs)


@needs_proc
def test_cpu_percent_covers_the_time_since_the_previous_reading(monitor: ProcessMonitor) -> None:
    first = monitor.statistics()
    assert first.cpu_seconds is not None
    started = time.process_time()
    while time.process_time() - started < 0.3:
        pass  # one core busy
    busy = monitor.statistics()
    assert busy.cpu_seconds is not None and busy.cpu_percent is not None
    assert busy.cpu_seconds - first.cpu_seconds >= 0.25
    assert busy.cpu_percent > 5  # one core busy is 100 %; a loaded machine gives less
    time.sleep(0.3)  # measured, not waited on: the process is idle for 0.3 s
    idle = monitor.statistics()
    assert idle.cpu_percent is not None
    assert idle.cpu_percent < busy.cpu_percent


def test_a_process_that_is_gone_reads_as_unknown(start_sleeper: Sleeper) -> None:
    sleeper = start_sleeper()
    monitor = ProcessMonitor(sleeper.pid)
    assert monitor.statistics().resident_memory_bytes is not None
    sleeper.kill()
    sleeper.wait()
    stats = monitor.statistics()
    assert stats.pid == sleeper.pid
    unknown = (
        stats.resident_memory_bytes,
        stats.cpu_seconds,
        stats.cpu_percent,
        stats.open_fds,
        stats.threads,
        stats.children,
        stats.ffmpeg_children,
        stats.started_at,
        stats.uptime_seconds,
    )
    assert unknown == (None,) * len(unknown)


def test_the_module_function_reads_this_process() -> None:
    stats = process_statistics()
    assert isinstance(stats, ProcessStatistics)
    assert stats.pid == os.getpid()
    again = process_statistics()
    assert again.uptime_seconds is not None and stats.uptime_seconds is not None
    assert again.uptime_seconds >= stats.uptime_seconds


def test_a_figure_the_platform_refuses_reads_as_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(self: psutil.Process) -> object:
        raise psutil.AccessDenied(self.pid)

    monkeypatch.delattr(psutil.Process, "num_fds", raising=False)  # as on Windows
    monkeypatch.setattr(psutil.Process, "num_threads", denied)
    stats = ProcessMonitor().statistics()
    assert (stats.open_fds, stats.threads) == (None, None)
    assert stats.resident_memory_bytes is not None and stats.resident_memory_bytes > 0
    assert stats.cpu_seconds is not None
