"""A voice UDP receiver in a process of its own, for load benchmarks.

`python -m musicbot.testing.rtp_sink` binds 127.0.0.1, prints `listening HOST PORT`, answers
IP discovery like Discord's voice server, and notes each RTP packet's SSRC, sequence and arrival
time (the header only: the payload stays encrypted, so the sink's cost per packet is small and
flat). Point the loopback Discord at it with `open_fake_discord(voice_udp=(host, port))`.

It takes one command per line on stdin:
- `mark`: start a measuring window now, forgetting what came before;
- `report`: print one JSON line describing the window so far (see `Window.report`);
- end of input: exit.

Its own process, so that a benchmark's sender is not charged for receiving, as with Discord.
From Trio, `async with open_rtp_sink() as sink:` runs one; `sink.address`, `await sink.mark()`,
`await sink.report()`.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import socket
import struct
import subprocess
import sys
import time
from array import array
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, BinaryIO, TextIO

import trio

from musicbot.testing.loopback.rtp import DISCOVERY_SIZE, discovery_reply, discovery_ssrc

FRAME_NS = 20_000_000
RECEIVE_BUFFER = 16 * 1024 * 1024
_HEADER = struct.Struct(">HII")  # sequence, timestamp, SSRC, after the first two bytes


class Stream:
    """One SSRC's packets in the window: sequence numbers (unwrapped) and arrival times."""

    __slots__ = ("arrivals", "last_raw", "sequences", "unwrapped")

    def __init__(self, sequence: int) -> None:
        self.sequences = array("q")
        self.arrivals = array("q")
        self.last_raw = sequence
        self.unwrapped = sequence

    def add(self, sequence: int, arrival_ns: int) -> None:
        step = (sequence - self.last_raw) & 0xFFFF
        if step >= 0x8000:  # older than the last one: reordered
            step -= 0x10000
        self.unwrapped += step
        self.last_raw = sequence
        self.sequences.append(self.unwrapped)
        self.arrivals.append(arrival_ns)


class Window:
    def __init__(self) -> None:
        self.started_ns = time.monotonic_ns()
        self.streams: dict[int, Stream] = {}
        self.discoveries = 0
        self.other = 0
        self.receive_errors = _receive_buffer_errors()

    def add_rtp(self, ssrc: int, sequence: int, arrival_ns: int) -> None:
        stream = self.streams.get(ssrc)
        if stream is None:
            stream = self.streams[ssrc] = Stream(sequence)
        stream.add(sequence, arrival_ns)

    def report(self) -> dict[str, Any]:
        """The window's figures.

        - `expected`: per stream, the 20 ms frames between its first and last packet in the
          window; `missing` is `expected` minus what arrived, summed over the streams (a sender
          that fell behind has gaps in time, not in sequence numbers);
        - `lost`: sequence numbers that never arrived (dropped on the way);
        - `lateness_ms`: each packet's arrival against its stream's ideal 20 ms schedule, the
          schedule set by the stream's earliest packet, so a constant delay is not lateness.
        """
        now = time.monotonic_ns()
        packets = expected = lost = 0
        lateness: list[int] = []
        for stream in self.streams.values():
            count = len(stream.sequences)
            packets += count
            first, last = min(stream.arrivals), max(stream.arrivals)
            expected += round((last - first) / FRAME_NS) + 1
            lost += max(0, max(stream.sequences) - min(stream.sequences) + 1 - count)
            offsets = [
                arrival - sequence * FRAME_NS
                for arrival, sequence in zip(stream.arrivals, stream.sequences, strict=True)
            ]
            earliest = min(offsets)
            lateness.extend(offset - earliest for offset in offsets)
        lateness.sort()
        return {
            "seconds": (now - self.started_ns) / 1e9,
            "streams": len(self.streams),
            "packets": packets,
            "expected": expected,
            "missing": max(0, expected - packets),
            "lost": lost,
            "discoveries": self.discoveries,
            "other_datagrams": self.other,
            "receive_buffer_errors": _receive_buffer_errors() - self.receive_errors,
            "lateness_ms": {
                "p50": _quantile(lateness, 0.50) / 1e6,
                "p99": _quantile(lateness, 0.99) / 1e6,
                "max": (lateness[-1] if lateness else 0) / 1e6,
            },
        }


def _quantile(ordered: list[int], q: float) -> float:
    if not ordered:
        return 0.0
    return float(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)])


def _receive_buffer_errors() -> int:
    """The kernel's count of UDP datagrams dropped for a full receive buffer (Linux), so that a
    sink that fell behind is never mistaken for a sender that did."""
    try:
        with open("/proc/net/snmp", encoding="ascii") as snmp:
            rows = [line.split() for line in snmp if line.startswith("Udp:")]
    except OSError:
        return 0
    if len(rows) < 2 or "RcvbufErrors" not in rows[0]:
        return 0
    return int(rows[1][rows[0].index("RcvbufErrors")])


def serve(sock: socket.socket, commands: BinaryIO, answers: TextIO) -> None:
    """Receive until `commands` ends; answer each `report` on `answers`."""
    window = Window()
    buffer = bytearray(2048)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(commands, selectors.EVENT_READ)
    typed = b""
    while True:
        for key, _ in selector.select():
            if key.fileobj is commands:
                chunk = os.read(commands.fileno(), 4096)
                if not chunk:
                    return
                *lines, typed = (typed + chunk).split(b"\n")
                for line in lines:
                    if line.strip() == b"mark":
                        window = Window()
                    elif line.strip() == b"report":
                        answers.write(json.dumps(window.report()) + "\n")
                        answers.flush()
                continue
            _drain(sock, buffer, window)


def _drain(sock: socket.socket, buffer: bytearray, window: Window) -> None:
    """Take every datagram waiting: discovery gets its answer, RTP is noted."""
    while True:
        try:
            size, address = sock.recvfrom_into(buffer)
        except BlockingIOError:
            return
        now = time.monotonic_ns()
        if size == DISCOVERY_SIZE:
            ssrc = discovery_ssrc(bytes(buffer[:size]))
            if ssrc is not None:
                window.discoveries += 1
                sock.sendto(discovery_reply(ssrc, address[0], address[1]), address)
                continue
        if size >= 12 and buffer[0] >> 6 == 2:
            sequence, _, ssrc = _HEADER.unpack_from(buffer, 2)
            window.add_rtp(ssrc, sequence, now)
        else:
            window.other += 1


# --- the Trio side: run a sink and ask it for reports ------------------------------------


class Sink:
    """The Trio side of a running sink process (see `open_rtp_sink`)."""

    def __init__(self, process: trio.Process, lines: _Lines, port: int) -> None:
        self._process = process
        self._lines = lines
        self.address = ("127.0.0.1", port)

    async def mark(self) -> None:
        assert self._process.stdin is not None
        await self._process.stdin.send_all(b"mark\n")

    async def report(self) -> dict[str, Any]:
        assert self._process.stdin is not None
        await self._process.stdin.send_all(b"report\n")
        return dict(json.loads(await self._lines.next()))


class _Lines:
    """Lines from a byte stream, one at a time."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._pending = b""

    async def next(self) -> str:
        while b"\n" not in self._pending:
            chunk = await self._stream.receive_some()
            if not chunk:
                raise EOFError("the RTP sink ended")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode()


@asynccontextmanager
async def open_rtp_sink() -> AsyncIterator[Sink]:
    """Run the sink in a process of its own for the duration of the `async with`."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "musicbot.testing.rtp_sink"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        lines = _Lines(process.stdout)
        with trio.fail_after(30):
            first = await lines.next()
        _, _, port = first.split()
        yield Sink(process, lines, int(port))
    finally:
        if process.stdin is not None:
            await process.stdin.aclose()
        with trio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    host, port = sock.getsockname()
    print(f"listening {host} {port}", flush=True)
    with sock:
        serve(sock, sys.stdin.buffer, sys.stdout)


if __name__ == "__main__":
    main()
