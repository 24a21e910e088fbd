from __future__ import annotations

import math
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from musicbot.config import parse_shard_ids
from musicbot.core.cache import LRUCache
from musicbot.core.messages import Resolved
from musicbot.core.supervisor import (
    ResourceSupervisor,
    SpawnRefused,
    SupervisorStatistics,
    open_supervisor,
)
from musicbot.metrics import (
    MAX_REQUEST_HEAD,
    MusicbotCollector,
    ShardPlacement,
    describe_shard_ids,
    metrics_registry,
    open_metrics_server,
)
from musicbot.process import ProcessStatistics
from musicbot.testing import FakeFrameSource, FakeResolver, FakeVoice, tone_track

Clock = trio.abc.Clock
Samples = dict[str, float]
"""Sample name with its labels (`name{label="value"}`) -> value."""

PROCESS = ProcessStatistics(
    pid=4242,
    resident_memory_bytes=123_456_789,
    cpu_seconds=12.5,
    cpu_percent=3.0,
    open_fds=42,
    max_fds=1024,
    threads=7,
    children=3,
    ffmpeg_children=2,
    started_at=1_700_000_000.0,
    uptime_seconds=3600.0,
    gc_collections=(900, 80, 7),
    gc_uncollectable=1,
)

SUPERVISOR_METRICS = {
    "musicbot_voice_connections": "gauge",
    "musicbot_voice_connections_max": "gauge",
    "musicbot_players": "gauge",
    "musicbot_queued_tracks": "gauge",
    "musicbot_voice_spawns": "counter",
    "musicbot_voice_refusals": "counter",
    "musicbot_voice_connect_failures": "counter",
    "musicbot_voice_reaped": "counter",
    "musicbot_player_crashes": "counter",
    "musicbot_cleanups": "counter",
    "musicbot_memory_released_bytes": "counter",
    "musicbot_frames_sent": "counter",
    "musicbot_frames_late": "counter",
    "musicbot_frames_sent_last_minute": "gauge",
    "musicbot_frames_missing_last_minute": "gauge",
    "musicbot_cache_hits": "counter",
    "musicbot_cache_misses": "counter",
    "musicbot_cache_evictions": "counter",
    "musicbot_cache_expirations": "counter",
    "musicbot_cache_entries": "gauge",
    "musicbot_cache_max_entries": "gauge",
    "musicbot_uptime_seconds": "gauge",
}
PROCESS_METRICS = {
    "musicbot_process_resident_memory_bytes": "gauge",
    "musicbot_process_cpu_seconds": "counter",
    "musicbot_process_open_fds": "gauge",
    "musicbot_process_max_fds": "gauge",
    "musicbot_process_threads": "gauge",
    "musicbot_process_children": "gauge",
    "musicbot_process_ffmpeg_children": "gauge",
    "musicbot_process_start_time_seconds": "gauge",
    "musicbot_python_gc_collections": "counter",
    "musicbot_python_gc_uncollectable": "counter",
}


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """(family name -> type, samples) of a text exposition, through prometheus-client's parser."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, f"{family.name} has no help text"
        types[family.name] = family.type
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return types, samples


def scrape(registry: CollectorRegistry) -> Samples:
    types, samples = parse(generate_latest(registry).decode())
    assert types == SUPERVISOR_METRICS | PROCESS_METRICS
    return samples


def expect(samples: Samples, expected: Mapping[str, float]) -> None:
    """The samples named in `expected` have those values (the others are not checked)."""
    assert {name: samples.get(name) for name in expected} == pytest.approx(expected)


class Rig:
    """Fakes for a supervisor whose resolver knows two queries, and a cache of one entry."""

    def __init__(self) -> None:
        self.voices: dict[int, FakeVoice] = {}
        self.source = FakeFrameSource()
        self.resolver = FakeResolver(
            {
                # 200 frames; the source stalls before frame 100 until release_stalls().
                "stalling song": Resolved((tone_track("s", 4.0, url="stall:s"),)),
                "short song": Resolved((tone_track("o", 1.0),)),
            }
        )

    def make_voice(self, guild_id: int) -> FakeVoice:
        voice = self.voices[guild_id] = FakeVoice(guild_id)
        return voice

    @asynccontextmanager
    async def supervisor(self, **options: Any) -> AsyncIterator[ResourceSupervisor]:
        async with open_supervisor(
            make_voice=self.make_voice,
            frame_source=self.source,
            resolver=self.resolver,
            cache=LRUCache(max_size=1, ttl=50, clock=trio.current_time),
            **options,
        ) as supervisor:
            yield supervisor


async def test_the_collector_reports_the_supervisor_as_it_changes(autojump_clock: Clock) -> None:
    rig = Rig()
    async with rig.supervisor(max_connections=2, idle_timeout=60, cleanup_interval=10) as sup:
        registry = metrics_registry(sup, process=lambda: PROCESS)
        first = await sup.get_player(1)
        resolved = await sup.resolve("stalling song")  # a miss
        assert await sup.resolve("stalling song") is resolved  # a hit
        await sup.resolve("short song")  # a miss, and evicts the first (the cache holds one)
        await first.enqueue(*resolved.tracks)
        await sup.get_player(2)
        with pytest.raises(SpawnRefused):
            await sup.get_player(3)
        await trio.sleep(1.01)  # between two frames: 51 sent (t = 0, 0.02, ... 1.00)
        expect(
            scrape(registry),
            {
                "musicbot_voice_connections": 2,
                "musicbot_voice_connections_max": 2,
                'musicbot_players{state="playing"}': 1,
                'musicbot_players{state="paused"}': 0,
                'musicbot_players{state="idle"}': 1,
                "musicbot_queued_tracks": 0,
                "musicbot_voice_spawns_total": 2,
                "musicbot_voice_refusals_total": 1,
                "musicbot_voice_connect_failures_total": 0,
                "musicbot_voice_reaped_total": 0,
                "musicbot_player_crashes_total": 0,
                "musicbot_cleanups_total": 0,
                "musicbot_memory_released_bytes_total": 0,
                "musicbot_frames_sent_total": 51,
                "musicbot_frames_late_total": 0,
                "musicbot_frames_sent_last_minute": 51,
                "musicbot_frames_missing_last_minute": 0,
                "musicbot_cache_hits_total": 1,
                "musicbot_cache_misses_total": 2,
                "musicbot_cache_evictions_total": 1,
                "musicbot_cache_expirations_total": 0,
                "musicbot_cache_entries": 1,
                "musicbot_cache_max_entries": 1,
                "musicbot_uptime_seconds": 1.01,
            },
        )

        # Frame 100 (due at 2.00 s) comes when the stall is released, a second late: one late
        # frame, 50 empty slots, and the other 100 frames on a new schedule after it.
        await trio.sleep(3.0 - 1.01)
        rig.source.release_stalls()
        await trio.sleep(2.5)  # the track ended at 5.0 s; both players idle
        expect(
            scrape(registry),
            {
                'musicbot_players{state="playing"}': 0,
                'musicbot_players{state="idle"}': 2,
                "musicbot_frames_sent_total": 200,
                "musicbot_frames_late_total": 1,
                "musicbot_frames_sent_last_minute": 200,
                "musicbot_frames_missing_last_minute": 50,
                "musicbot_uptime_seconds": 5.5,
            },
        )

        # Guild 2 has been idle since 0 s: the sweep at 70 s reaps it (idle 70 s > 60 s). Guild 1
        # gets a command at 40 s, so it stays until the sweep at 110 s. At 50 s the cached entry
        # expires, and the sweep at 50 s purges it.
        await trio.sleep(40 - 5.5)
        await first.queue()
        await trio.sleep(75 - 40)
        expect(
            scrape(registry),
            {
                "musicbot_voice_connections": 1,
                'musicbot_players{state="idle"}': 1,
                "musicbot_voice_reaped_total": 1,
                "musicbot_cleanups_total": 7,
                "musicbot_cache_expirations_total": 1,
                "musicbot_cache_entries": 0,
                "musicbot_frames_sent_total": 200,
            },
        )
        assert rig.voices[2].disconnects == 1

        await trio.sleep(115 - 75)
        expect(
            scrape(registry),
            {
                "musicbot_voice_connections": 0,
                'musicbot_players{state="playing"}': 0,
                'musicbot_players{state="paused"}': 0,
                'musicbot_players{state="idle"}': 0,
                "musicbot_voice_reaped_total": 2,
                "musicbot_cleanups_total": 11,
                # Counters keep the frames of players that left; the last minute's gauges do not.
                "musicbot_frames_sent_total": 200,
                "musicbot_frames_late_total": 1,
                "musicbot_frames_sent_last_minute": 0,
                "musicbot_frames_missing_last_minute": 0,
                "musicbot_voice_spawns_total": 2,
                "musicbot_voice_refusals_total": 1,
            },
        )
        assert rig.voices[1].disconnects == 1


async def test_frame_counters_never_go_down_when_a_guild_gets_a_new_player(
    autojump_clock: Clock,
) -> None:
    rig = Rig()
    async with rig.supervisor() as sup:
        registry = metrics_registry(sup, process=lambda: PROCESS)
        player = await sup.get_player(1)
        await player.enqueue(tone_track("a", 2.0))
        await trio.sleep(3)
        assert scrape(registry)["musicbot_frames_sent_total"] == 100
        await sup.leave(1)
        player = await sup.get_player(1)  # a new player: its own count starts at 0
        await player.enqueue(tone_track("b", 1.0))
        await trio.sleep(2)
        assert scrape(registry)["musicbot_frames_sent_total"] == 150
        assert scrape(registry)["musicbot_frames_sent_total"] == 150  # scraping changes nothing


async def test_process_figures_are_exported_and_unknown_ones_left_out(
    autojump_clock: Clock,
) -> None:
    rig = Rig()
    async with rig.supervisor() as sup:
        samples = scrape(metrics_registry(sup, process=lambda: PROCESS))
        expect(
            samples,
            {
                "musicbot_process_resident_memory_bytes": 123_456_789,
                "musicbot_process_cpu_seconds_total": 12.5,
                "musicbot_process_open_fds": 42,
                "musicbot_process_max_fds": 1024,
                "musicbot_process_threads": 7,
                "musicbot_process_children": 3,
                "musicbot_process_ffmpeg_children": 2,
                "musicbot_process_start_time_seconds": 1_700_000_000,
                'musicbot_python_gc_collections_total{generation="0"}': 900,
                'musicbot_python_gc_collections_total{generation="1"}': 80,
                'musicbot_python_gc_collections_total{generation="2"}': 7,
                "musicbot_python_gc_uncollectable_total": 1,
            },
        )

        unknown = ProcessStatistics(
            pid=1,
            resident_memory_bytes=None,
            cpu_seconds=None,
            cpu_percent=None,
            open_fds=None,
            max_fds=None,
            threads=None,
            children=None,
            ffmpeg_children=None,
            started_at=None,
            uptime_seconds=None,
            gc_collections=(1, 2, 3),
            gc_uncollectable=0,
        )
        text = generate_latest(metrics_registry(sup, process=lambda: unknown)).decode()
        types, _ = parse(text)
        left = {"musicbot_python_gc_collections", "musicbot_python_gc_uncollectable"}
        assert types.keys() - SUPERVISOR_METRICS.keys() == left


async def test_the_collector_reads_the_real_process_by_default(autojump_clock: Clock) -> None:
    rig = Rig()
    async with rig.supervisor() as sup:
        samples = scrape(metrics_registry(sup))
        assert samples["musicbot_process_resident_memory_bytes"] > 1 << 20
        assert samples["musicbot_process_threads"] >= 1
        assert samples["musicbot_process_open_fds"] >= 3


# --- over HTTP, on real sockets and real time ------------------------------------------------


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `raw` to the server and read the answer until it closes the connection."""
    with trio.fail_after(10):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(raw)
            received = bytearray()
            while chunk := await stream.receive_some(65536):
                received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def urlopen(url: str) -> tuple[int, str, bytes]:
    """GET with the standard library's client (run in a thread)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read()


async def test_metrics_are_served_over_http() -> None:
    rig = Rig()
    async with rig.supervisor(max_connections=2) as sup:
        await sup.get_player(1)
        await sup.get_player(2)
        with pytest.raises(SpawnRefused):
            await sup.get_player(3)
        await sup.resolve("short song")
        await sup.resolve("short song")
        async with open_metrics_server(sup, host="127.0.0.1", port=0) as server:
            assert server.port > 0
            assert server.url == f"http://127.0.0.1:{server.port}/metrics"
            status, content_type, body = await trio.to_thread.run_sync(urlopen, server.url)
            assert (status, content_type) == (200, CONTENT_TYPE_LATEST)
            types, samples = parse(body.decode())
            assert types == SUPERVISOR_METRICS | PROCESS_METRICS
            expect(
                samples,
                {
                    "musicbot_voice_connections": 2,
                    "musicbot_voice_connections_max": 2,
                    'musicbot_players{state="idle"}': 2,
                    "musicbot_voice_spawns_total": 2,
                    "musicbot_voice_refusals_total": 1,
                    "musicbot_cache_hits_total": 1,
                    "musicbot_cache_misses_total": 1,
                    "musicbot_cache_entries": 1,
                },
            )
            assert samples["musicbot_process_resident_memory_bytes"] > 1 << 20
            assert samples["musicbot_process_cpu_seconds_total"] > 0
            assert 0 < samples["musicbot_uptime_seconds"] < 60

            # A second scrape sees what changed in between.
            await sup.resolve("short song")
            _, _, body = await trio.to_thread.run_sync(urlopen, server.url)
            assert parse(body.decode())[1]["musicbot_cache_hits_total"] == 2

            head = await request(server.port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert head[0] == 200 and int(head[1]["content-length"]) > 1000
            assert head[2] == b""
            status, content_type, _ = await trio.to_thread.run_sync(
                urlopen, server.url.replace("/metrics", "/")
            )
            assert status == 404
            assert (await request(server.port, b"POST /metrics HTTP/1.1\r\n\r\n"))[:2] == (
                405,
                {
                    "content-type": "text/plain; charset=utf-8",
                    "content-length": "19",
                    "connection": "close",
                    "allow": "GET, HEAD",
                },
            )
            assert (await request(server.port, b"hello\r\n\r\n"))[0] == 400
            long_head = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * MAX_REQUEST_HEAD + b"\r\n\r\n"
            assert (await request(server.port, long_head))[0] == 431


async def test_closing_the_server_closes_its_connections_and_port() -> None:
    rig = Rig()
    async with rig.supervisor() as sup:
        nurseries = list(trio.lowlevel.current_task().child_nurseries)
        async with open_metrics_server(sup) as server:
            # A client that connects and says nothing: the server is waiting on it.
            silent = await trio.open_tcp_stream("127.0.0.1", server.port)
            await trio.testing.wait_all_tasks_blocked()
        async with silent:
            assert trio.lowlevel.current_task().child_nurseries == nurseries  # no task left
            with trio.fail_after(5):
                assert await silent.receive_some(1) == b""  # closed by the server
        with pytest.raises(OSError, match="all attempts to connect"):  # refused
            await trio.open_tcp_stream("127.0.0.1", server.port)


async def test_a_failing_scrape_answers_500_and_the_server_carries_on() -> None:
    class Flaky:
        def __init__(self, inner: ResourceSupervisor) -> None:
            self.inner = inner
            self.fail = True

        def statistics(self) -> SupervisorStatistics:
            if self.fail:
                raise RuntimeError("a bug in a statistic")
            return self.inner.statistics()

    rig = Rig()
    async with rig.supervisor() as sup:
        flaky = Flaky(sup)
        async with open_metrics_server(flaky) as server:
            status, _, _ = await request(server.port, b"GET /metrics HTTP/1.0\r\n\r\n")
            assert status == 500
            flaky.fail = False
            status, _, body = await request(server.port, b"GET /metrics HTTP/1.0\r\n\r\n")
            assert status == 200
            assert parse(body.decode())[1]["musicbot_voice_connections"] == 0


async def test_an_error_in_the_body_comes_out_as_itself() -> None:
    rig = Rig()
    async with rig.supervisor() as sup:
        with pytest.raises(KeyError, match="mine"):
            async with open_metrics_server(sup):
                raise KeyError("mine")


async def test_the_collector_reads_the_supervisor_on_the_trio_thread_from_any_thread() -> None:
    rig = Rig()
    async with rig.supervisor() as sup:
        trio_thread_reads: list[bool] = []

        class Watched:
            def statistics(self) -> SupervisorStatistics:
                trio_thread_reads.append(trio.lowlevel.in_trio_run())
                return sup.statistics()

        collector = MusicbotCollector(Watched(), process=lambda: PROCESS)
        collect: Callable[[], list[Any]] = lambda: list(collector.collect())  # noqa: E731
        from_a_thread = await trio.to_thread.run_sync(collect)
        on_trio = collect()
        assert trio_thread_reads == [True, True]
        assert [m.name for m in from_a_thread] == [m.name for m in on_trio]
        assert not any(math.isnan(s.value) for m in on_trio for s in m.samples)


SHARD_METRICS = {
    "musicbot_shard_info": "gauge",
    "musicbot_shard_count": "gauge",
    "musicbot_shard_connected": "gauge",
}


async def test_the_shards_this_process_serves_are_exported_with_where_it_runs(
    autojump_clock: Clock,
) -> None:
    placement = ShardPlacement(
        shard_count=8, shard_ids=(2, 3, 5), connected=frozenset({2, 5}), pid=4242, host="box-1"
    )
    rig = Rig()
    async with rig.supervisor() as sup:
        text = generate_latest(
            metrics_registry(sup, process=lambda: PROCESS, shards=lambda: placement)
        ).decode()
    types, samples = parse(text)
    assert types == SUPERVISOR_METRICS | PROCESS_METRICS | SHARD_METRICS
    shard_samples = {name: value for name, value in samples.items() if "_shard_" in name}
    assert shard_samples == {
        'musicbot_shard_info{host="box-1",pid="4242",shards="2-3,5"}': 1,
        "musicbot_shard_count": 8,
        'musicbot_shard_connected{shard="2"}': 1,
        'musicbot_shard_connected{shard="3"}': 0,
        'musicbot_shard_connected{shard="5"}': 1,
    }


async def test_no_shard_figures_before_the_bot_has_shards(autojump_clock: Clock) -> None:
    rig = Rig()
    async with rig.supervisor() as sup:
        types, _ = parse(
            generate_latest(
                metrics_registry(sup, process=lambda: PROCESS, shards=lambda: None)
            ).decode()
        )
    assert types == SUPERVISOR_METRICS | PROCESS_METRICS


async def test_the_shards_are_read_on_the_trio_thread_from_any_thread() -> None:
    rig = Rig()
    async with rig.supervisor() as sup:
        trio_thread_reads: list[bool] = []

        def placement() -> ShardPlacement:
            trio_thread_reads.append(trio.lowlevel.in_trio_run())
            return ShardPlacement(shard_count=2, shard_ids=(1,), connected=frozenset({1}))

        collector = MusicbotCollector(sup, process=lambda: PROCESS, shards=placement)
        await trio.to_thread.run_sync(lambda: list(collector.collect()))
        assert trio_thread_reads == [True]


@pytest.mark.parametrize(
    ("shards", "text"),
    [((0,), "0"), ((0, 1, 2, 3), "0-3"), ((5, 0, 2, 7, 6), "0,2,5-7"), ((1, 3), "1,3")],
)
def test_shard_ids_are_described_as_the_command_line_takes_them(
    shards: tuple[int, ...], text: str
) -> None:
    assert describe_shard_ids(shards) == text
    assert parse_shard_ids(text) == tuple(sorted(shards))


def test_importing_metrics_drags_in_no_asyncio_world() -> None:
    probe = (
        "import sys, musicbot.metrics\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('discord', 'asyncio', 'trio_asyncio', 'yt_dlp', 'aiohttp'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == []
