"""What a fault may leave behind: Trio tasks, child processes, descriptors and threads.

A fault test takes a `Census` once the bot is settled before the fault, and again after the
guild recovered (or was cleaned up); `await settled_census(baseline)` waits (boundedly) for
the counts to come back, since closing a socket or reaping ffmpeg takes a moment, and says
what is still over if they do not:

    before = census(ignore_ports={rest_port(discord)})
    ...inject the fault, check the recovery...
    await no_leaks_since(before, ignore_ports={rest_port(discord)})

Tasks are counted from Trio's root task down, by name (so a leaked player says which); the
loopback Discord and media server run in the same process, so their tasks and sockets count
too, which is why the baseline is taken with the same guilds in voice as after.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Collection
from urllib.parse import urlsplit

import attrs
import psutil
import trio

from musicbot.testing.loopback import FakeDiscord

SETTLE_SECONDS = 10.0
"""How long the counts may take to come back: ffmpeg reaped, sockets closed, aiohttp's
closing handshakes done."""


@attrs.frozen
class Census:
    tasks: Counter[str]
    children: int
    fds: int
    threads: int

    def over(self, baseline: Census) -> list[str]:
        """What this census holds beyond `baseline`, in words; empty if nothing."""
        found = []
        extra_tasks = self.tasks - baseline.tasks
        if extra_tasks:
            found.append(f"tasks {dict(extra_tasks)}")
        for name in ("children", "fds", "threads"):
            mine, theirs = getattr(self, name), getattr(baseline, name)
            if mine > theirs:
                found.append(f"{name} {theirs} -> {mine}")
        return found


IO_TASK = "trio_asyncio.BaseTrioEventLoop._io_task"
"""trio-asyncio's task waiting on one socket for asyncio (one per open connection end)."""


def _task_names(skip_fds: Collection[int] = ()) -> Counter[str]:
    """Every task's short name, less trio-asyncio's I/O tasks waiting on `skip_fds`."""
    names: Counter[str] = Counter()
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task is None:
            continue
        if not (skip_fds and _io_task_fd(task) in skip_fds):
            names[_short(task.name)] += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return names


def _io_task_fd(task: trio.lowlevel.Task) -> int | None:
    """The descriptor a trio-asyncio I/O task waits on; None for any other task."""
    frame = getattr(task.coro, "cr_frame", None)
    if not task.name.startswith(IO_TASK) or frame is None:
        return None
    fd = frame.f_locals.get("fd")
    return fd if isinstance(fd, int) else getattr(fd, "fileno", lambda: None)()


_HEX_IDS = re.compile(r"[0-9a-f]{8,}")
"""Hashes and random suffixes in names, such as a song writer's temporary file
("flush .<sha1>.<random>.part"): the same song played again gets a new one."""


def _short(name: str) -> str:
    """A task's name without the addresses and ids that make every instance unique."""
    head = name.split(" at 0x")[0]
    if "GuildPlayer" in head:  # by guild id, so that a leaked player says which
        return head
    return _HEX_IDS.sub("#", head.split("(")[0])


def census(*, ignore_ports: Collection[int] = ()) -> Census:
    """This process now; call it from within Trio. TCP sockets from or to `ignore_ports`, and
    trio-asyncio's tasks waiting on them, are not counted: pass the loopback Discord's REST
    port (`rest_port(discord)`), since aiohttp keeps idle HTTP connections for up to 31 s on a
    timer of its own (the soak benchmark watches those over time)."""
    process = psutil.Process()
    with process.oneshot():
        children = len(process.children(recursive=True))
        fds = process.num_fds()
        ignored = {
            conn.fd
            for conn in (process.net_connections(kind="tcp") if ignore_ports else ())
            if _port(conn.laddr) in ignore_ports or _port(conn.raddr) in ignore_ports
        }
    return Census(_task_names(ignored), children, fds - len(ignored), _busy_threads())


def _busy_threads() -> int:
    """Threads less Trio's idle cached workers (named "Trio thread N" while idle; a job renames
    its worker): Trio keeps those 10 s for the next job, whoever's it is."""
    return sum(not t.name.startswith("Trio thread ") for t in threading.enumerate())


def _port(address: object) -> int | None:
    return getattr(address, "port", None)


def rest_port(discord: FakeDiscord) -> int:
    """The loopback Discord's REST port, for `census(ignore_ports=...)`."""
    port = urlsplit(discord.api_base).port
    assert port is not None
    return port


async def no_leaks_since(
    baseline: Census, *, ignore_ports: Collection[int] = (), within: float = SETTLE_SECONDS
) -> Census:
    """Wait until nothing is over `baseline`; AssertionError naming what is, after `within`."""
    with trio.move_on_after(within):
        while True:
            now = census(ignore_ports=ignore_ports)
            if not now.over(baseline):
                return now
            await trio.sleep(0.05)
    left = census(ignore_ports=ignore_ports).over(baseline)
    raise AssertionError(f"left behind after {within:g} s: {'; '.join(left)}")
