"""Prometheus metrics: a collector that reads the supervisor's and the process's statistics at
scrape time, and a small HTTP server on Trio that serves them at `GET /metrics`.

Nothing is counted on the audio path: every figure comes from `supervisor.statistics()`,
`ProcessMonitor.statistics()` and the bot's shards (a `ShardPlacement`) when Prometheus asks.
A scrape is rendered in a worker thread (the process figures scan the host's process table);
only the supervisor and shard snapshots, a few microseconds, are taken on the Trio thread, so
a scrape never holds up a frame.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Protocol
from urllib.parse import urlsplit

import attrs
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from musicbot.core.messages import PlayerState
from musicbot.core.services import open_service_nursery
from musicbot.core.supervisor import SupervisorStatistics
from musicbot.process import ProcessMonitor, ProcessStatistics

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
MAX_REQUEST_HEAD = 8 * 1024
"""Bytes a request line and headers may take; a longer head is answered 431."""
REQUEST_TIMEOUT = 10.0
"""Seconds a client has to send its request head, and then to take the answer."""


@attrs.frozen
class ShardPlacement:
    """Where this process runs and which of the bot's gateway shards it serves: with several
    processes, each runs a range of shards, and an operator needs to know which is which."""

    shard_count: int
    """Gateway shards across all of the bot's processes."""
    shard_ids: tuple[int, ...]
    """The shards this process runs, in order."""
    connected: frozenset[int] = frozenset()
    """Those of `shard_ids` whose gateway connection is up now."""
    pid: int = attrs.field(factory=os.getpid)
    host: str = attrs.field(factory=socket.gethostname)


def describe_shard_ids(shard_ids: Iterable[int]) -> str:
    """`0-3`, `0,2,5-7`: the form `--shard-ids` takes, runs of consecutive shards as ranges."""
    runs: list[list[int]] = []
    for shard in sorted(shard_ids):
        if runs and shard == runs[-1][-1] + 1:
            runs[-1].append(shard)
        else:
            runs.append([shard])
    return ",".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


class StatisticsSource(Protocol):
    """What the collector reads: a ResourceSupervisor, or anything shaped like one."""

    def statistics(self) -> SupervisorStatistics: ...


# --- the collector ---------------------------------------------------------------------------


class MusicbotCollector:
    """A prometheus-client Collector over a supervisor and this process.

    Make it inside Trio. `collect()` may then run on the Trio thread or in any other thread: the
    supervisor is always read on the Trio thread, the process wherever `collect()` runs.
    """

    def __init__(
        self,
        supervisor: StatisticsSource,
        *,
        process: Callable[[], ProcessStatistics] | None = None,
        shards: Callable[[], ShardPlacement | None] | None = None,
    ) -> None:
        """`shards`: where this process runs and its gateway shards, read on the Trio thread
        like the supervisor (None while the bot is not connected: no shard figures then)."""
        self._supervisor = supervisor
        self._process = process if process is not None else ProcessMonitor().statistics
        self._shards = shards
        self._trio_token = trio.lowlevel.current_trio_token()

    def collect(self) -> Iterator[Metric]:
        if trio.lowlevel.in_trio_run():
            stats, placement = self._read_trio_side()
        else:  # the supervisor's and the bot's state belong to the Trio thread
            stats, placement = trio.from_thread.run_sync(
                self._read_trio_side, trio_token=self._trio_token
            )
        yield from _supervisor_metrics(stats)
        if placement is not None:
            yield from _shard_metrics(placement)
        yield from _process_metrics(self._process())

    def _read_trio_side(self) -> tuple[SupervisorStatistics, ShardPlacement | None]:
        placement = self._shards() if self._shards is not None else None
        return self._supervisor.statistics(), placement


def metrics_registry(
    supervisor: StatisticsSource,
    *,
    process: Callable[[], ProcessStatistics] | None = None,
    shards: Callable[[], ShardPlacement | None] | None = None,
) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one) holding a MusicbotCollector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MusicbotCollector(supervisor, process=process, shards=shards))
    return registry


def _gauge(name: str, documentation: str, value: float, unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value, unit=unit)


def _counter(name: str, documentation: str, value: float, unit: str = "") -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value, unit=unit)


def _supervisor_metrics(stats: SupervisorStatistics) -> Iterator[Metric]:
    cache = stats.cache
    yield _gauge(
        "musicbot_voice_connections",
        "Voice connections held now: connecting, playing, idle or tearing down.",
        stats.active,
    )
    yield _gauge(
        "musicbot_voice_connections_max",
        "The most voice connections allowed at once (max_connections).",
        stats.max_connections,
    )
    by_state = GaugeMetricFamily(
        "musicbot_players", "Connected players by state.", labels=["state"]
    )
    for state in PlayerState:
        count = sum(player.state is state for player in stats.players)
        by_state.add_metric([state.value], count)
    yield by_state
    yield _gauge(
        "musicbot_queued_tracks",
        "Tracks waiting in every guild's queue, not counting those playing.",
        sum(player.queue_length for player in stats.players),
    )
    yield _counter(
        "musicbot_voice_spawns",
        "Players started: voice connections attempted for a guild.",
        stats.spawns,
    )
    yield _counter(
        "musicbot_voice_refusals",
        "New guilds refused because every voice connection was in use.",
        stats.refusals,
    )
    yield _counter(
        "musicbot_voice_connect_failures",
        "Voice connections that could not be made.",
        stats.connect_failures,
    )
    yield _counter(
        "musicbot_voice_reaped",
        "Voice connections ended by the sweep (or /cleanup): idle, alone or paused too long.",
        stats.reaped,
    )
    yield _counter(
        "musicbot_player_crashes",
        "Players ended by an unexpected error (a bug); each was disconnected and removed.",
        stats.crashes,
    )
    yield _counter("musicbot_cleanups", "Idle sweeps run, periodic and /cleanup.", stats.cleanups)
    yield _counter(
        "musicbot_memory_released_bytes",
        "Free heap the sweeps gave back to the operating system (glibc malloc_trim).",
        stats.memory_released,
    )
    yield _counter(
        "musicbot_frames_sent",
        "20 ms Opus frames sent to voice, all guilds.",
        stats.frames_sent,
    )
    yield _counter(
        "musicbot_frames_late",
        "Frames sent more than 5 ms after their deadline, all guilds.",
        stats.frames_late,
    )
    yield _gauge(
        "musicbot_frames_sent_last_minute",
        "Frames sent over the last 60 s, all connected guilds.",
        sum(p.frames_sent_last_minute for p in stats.players),
    )
    yield _gauge(
        "musicbot_frames_missing_last_minute",
        "Frames due but not sent over the last 60 s (gaps in the audio), all connected guilds.",
        sum(p.frames_missing_last_minute for p in stats.players),
    )
    yield _counter("musicbot_cache_hits", "Track cache lookups answered.", cache.hits)
    yield _counter(
        "musicbot_cache_misses",
        "Track cache lookups not answered (absent or expired).",
        cache.misses,
    )
    yield _counter(
        "musicbot_cache_evictions",
        "Live track cache entries dropped to make room.",
        cache.evictions,
    )
    yield _counter(
        "musicbot_cache_expirations",
        "Track cache entries dropped because their time to live ran out.",
        cache.expirations,
    )
    yield _gauge(
        "musicbot_cache_entries",
        "Entries in the track cache (expired ones included until purged).",
        cache.size,
    )
    yield _gauge("musicbot_cache_max_entries", "The track cache's capacity.", cache.max_size)
    yield _gauge(
        "musicbot_uptime_seconds",
        "Seconds since the supervisor started.",
        stats.uptime,
        unit="seconds",
    )


def _shard_metrics(placement: ShardPlacement) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "musicbot_shard_info",
        "Where this process runs and the gateway shards it serves, as labels (always 1).",
        labels=["host", "pid", "shards"],
    )
    info.add_metric(
        [placement.host, str(placement.pid), describe_shard_ids(placement.shard_ids)], 1
    )
    yield info
    yield _gauge(
        "musicbot_shard_count",
        "Gateway shards across all of the bot's processes (shard_count).",
        placement.shard_count,
    )
    connected = GaugeMetricFamily(
        "musicbot_shard_connected",
        "Each shard this process runs: 1 while its gateway connection is up, 0 while not.",
        labels=["shard"],
    )
    for shard in placement.shard_ids:
        connected.add_metric([str(shard)], shard in placement.connected)
    yield connected


def _process_metrics(process: ProcessStatistics) -> Iterator[Metric]:
    """Figures the platform does not give (None) are left out."""
    if process.resident_memory_bytes is not None:
        yield _gauge(
            "musicbot_process_resident_memory_bytes",
            "Resident memory of the bot's process.",
            process.resident_memory_bytes,
            unit="bytes",
        )
    if process.cpu_seconds is not None:
        yield _counter(
            "musicbot_process_cpu_seconds",
            "CPU time used by the bot's process, user plus system.",
            process.cpu_seconds,
            unit="seconds",
        )
    if process.open_fds is not None:
        yield _gauge("musicbot_process_open_fds", "Open file descriptors.", process.open_fds)
    if process.max_fds is not None:
        yield _gauge(
            "musicbot_process_max_fds",
            "The limit on open file descriptors (soft RLIMIT_NOFILE).",
            process.max_fds,
        )
    if process.threads is not None:
        yield _gauge("musicbot_process_threads", "OS threads in the process.", process.threads)
    if process.children is not None:
        yield _gauge(
            "musicbot_process_children",
            "Child processes, exited but unreaped ones included.",
            process.children,
        )
    if process.ffmpeg_children is not None:
        yield _gauge(
            "musicbot_process_ffmpeg_children",
            "Child processes that are ffmpeg (one per track being played).",
            process.ffmpeg_children,
        )
    if process.started_at is not None:
        yield _gauge(
            "musicbot_process_start_time_seconds",
            "When the process started, in seconds since the Unix epoch.",
            process.started_at,
            unit="seconds",
        )
    collections = CounterMetricFamily(
        "musicbot_python_gc_collections",
        "Garbage collections run, per generation.",
        labels=["generation"],
    )
    for generation, count in enumerate(process.gc_collections):
        collections.add_metric([str(generation)], count)
    yield collections
    yield _counter(
        "musicbot_python_gc_uncollectable",
        "Objects the garbage collector found unreachable but could not free.",
        process.gc_uncollectable,
    )


# --- the HTTP server -------------------------------------------------------------------------


class MetricsServer:
    """The running server: `port` is the port it bound (useful with port 0)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._renderers = trio.CapacityLimiter(1)
        """One scrape is rendered at a time, so scrapes cannot pile up threads."""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{METRICS_PATH}"

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        """Answer one request, then close the connection (Trio-flavoured)."""
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                response = await self._answer(await _read_head(stream))
                await stream.send_all(response)
        except _EarlyClose:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            await trio.aclose_forcefully(stream)

    async def _answer(self, head: bytes) -> bytes:
        try:
            method, path = _request_line(head)
        except _BadRequest as bad:
            return _response(bad.status, f"{bad.status.phrase}\n".encode())
        head_only = method == "HEAD"
        if path != METRICS_PATH:
            return _response(HTTPStatus.NOT_FOUND, b"Not Found\n", head_only=head_only)
        if method not in ("GET", "HEAD"):
            return _response(
                HTTPStatus.METHOD_NOT_ALLOWED,
                b"Method Not Allowed\n",
                extra_headers=[("Allow", "GET, HEAD")],
            )
        try:
            body = await trio.to_thread.run_sync(
                generate_latest, self.registry, limiter=self._renderers
            )
        except Exception:
            log.exception("metrics: the scrape failed")
            return _response(HTTPStatus.INTERNAL_SERVER_ERROR, b"Internal Server Error\n")
        return _response(HTTPStatus.OK, body, CONTENT_TYPE_LATEST, head_only=head_only)


@asynccontextmanager
async def open_metrics_server(
    supervisor: StatisticsSource,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    process: Callable[[], ProcessStatistics] | None = None,
    shards: Callable[[], ShardPlacement | None] | None = None,
) -> AsyncIterator[MetricsServer]:
    """Serve `supervisor`'s and this process's metrics at http://host:port/metrics, with the
    gateway shards `shards()` says this process serves.

    `host` is an address or a name; the server binds the first address it resolves to. Port 0
    picks a free port: read it from `server.port`. Leaving the block closes the listener and every
    open connection; no task outlives it.
    """
    registry = metrics_registry(supervisor, process=process, shards=shards)
    listener = await _listen(host, port)
    bound_host, bound_port = listener.socket.getsockname()[:2]
    server = MetricsServer(registry, bound_host, bound_port)
    async with open_service_nursery("metrics server closing") as connections:
        await connections.start(trio.serve_listeners, server.serve_connection, [listener])
        log.info("metrics: serving %s", server.url)
        yield server


async def _listen(host: str, port: int) -> trio.SocketListener:
    addresses = await trio.socket.getaddrinfo(
        host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
    )
    family, kind, proto, _, address = addresses[0]
    sock = trio.socket.socket(family, kind, proto)
    try:
        if hasattr(trio.socket, "SO_REUSEADDR") and not hasattr(trio.socket, "SO_EXCLUSIVEADDRUSE"):
            # Restart without waiting out TIME_WAIT; not on Windows, where it allows port theft.
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        await sock.bind(address)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


# --- HTTP, the little of it a scrape needs ---------------------------------------------------


class _EarlyClose(Exception):
    """The client closed the connection before its request was complete."""


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status.phrase)
        self.status = status


async def _read_head(stream: trio.SocketStream) -> bytes:
    """What the client sent, up to the blank line that ends the request head or a little past
    MAX_REQUEST_HEAD bytes, whichever comes first."""
    received = bytearray()
    while b"\r\n\r\n" not in received and len(received) <= MAX_REQUEST_HEAD:
        data = await stream.receive_some(MAX_REQUEST_HEAD)
        if not data:
            raise _EarlyClose
        received += data
    return bytes(received)


def _request_line(head: bytes) -> tuple[str, str]:
    """(method, path) of a request head; raises _BadRequest."""
    end = head.find(b"\r\n\r\n")
    if end < 0 or end > MAX_REQUEST_HEAD:
        raise _BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
    line = head.lstrip(b"\r\n").split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
        raise _BadRequest(HTTPStatus.BAD_REQUEST)
    method, target = parts[0].decode("ascii", "replace"), parts[1].decode("ascii", "replace")
    return method, urlsplit(target).path


def _response(
    status: HTTPStatus,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    head_only: bool = False,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        *extra_headers,
    ]
    lines = [f"HTTP/1.1 {status.value} {status.phrase}", *(f"{k}: {v}" for k, v in headers)]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body
