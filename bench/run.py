"""Run the benchmarks: `python bench/run.py [--quick] [--only NAME ...]`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import cache_bench
import cpu_bench
import machine
import shutdown_bench
import soak_bench
import streams_bench
import ttfa_bench

BENCHMARKS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "streams": streams_bench.run,
    "ttfa": ttfa_bench.run,
    "cpu": cpu_bench.run,
    "soak": soak_bench.run,
    "cache": cache_bench.run,
    "shutdown": shutdown_bench.run,
}
TABLES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "streams": streams_bench.table,
    "ttfa": ttfa_bench.table,
    "soak": soak_bench.table,
}
RESULTS = Path(__file__).parent / "results"


def _verdict(result: dict[str, Any]) -> str:
    return f"goal: {result['goal']}: {'met' if result['met'] else 'NOT met'}"


def table(results: dict[str, Any]) -> str:
    run = "quick" if results["quick"] else "full"
    where = results["machine"]
    lines = [f"Measured {results['when']} on {where['cpu']} ({where['cores']} cores), {run} run."]
    for name, lines_of in TABLES.items():
        result = results["benchmarks"].get(name)
        if result:
            lines += ["", *lines_of(result)]
    cache = results["benchmarks"].get("cache")
    if cache:
        lines += ["", "| cache (get/set mix) | ops/s |", "| --- | ---: |"]
        lines += [f"| {name} | {rate:,.0f} |" for name, rate in cache["ops_per_second"].items()]
        ratio = cache["ratio_vs_cachetools_ttlcache"]
        lines += ["", f"LRUCache / cachetools.TTLCache: {ratio:.2f}x ({_verdict(cache)})"]
    cpu = results["benchmarks"].get("cpu")
    if cpu:
        lines += ["", "| cpu | CPU s per stream-minute |", "| --- | ---: |"]
        costs = cpu["cpu_seconds_per_stream_minute"]
        lines += [f"| {name} | {value:.4f} |" for name, value in costs.items()]
        ratio = cpu["transcoding_over_passthrough"]
        lines += ["", f"transcoding / passthrough: {ratio:.0f}x ({_verdict(cpu)})"]
    shutdown = results["benchmarks"].get("shutdown")
    if shutdown:
        real, fake = shutdown["real_process"], shutdown["fake_actors"]
        lines += ["", "| shutdown | seconds to exit | left behind |", "| --- | ---: | --- |"]
        lines += [
            f"| SIGTERM, `musicbot run`, {real['guilds_playing']} guilds playing "
            f"| {real['seconds_to_exit']:.2f} | {real['children_left']} child processes, "
            f"{real['still_in_voice']} voice connections |",
            f"| cancellation, {fake['actors']} actors on fake voices "
            f"| {fake['seconds_to_exit']:.3f} | {fake['actors'] - fake['disconnected_once']} "
            f"voices not disconnected exactly once |",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs, a few minutes")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    args = parser.parse_args()
    chosen = args.only or list(BENCHMARKS)
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "machine": machine.describe(),
        "benchmarks": {},
    }
    for name in chosen:
        print(f"running {name}...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        results["benchmarks"][name] = BENCHMARKS[name](args.quick)
        results["benchmarks"][name]["wall_seconds"] = time.perf_counter() - started
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    (RESULTS / "latest.txt").write_text(text + "\n")
    print(text)
    return 0 if all(result.get("met", True) for result in results["benchmarks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
