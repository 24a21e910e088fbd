"""The demo: the README's first command. Its scenario runner, and the CLI around it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from musicbot.demo import (
    BUILTIN_SCENARIO,
    BUILTIN_SHARDED_SCENARIO,
    ScenarioError,
    load_scenario,
    run_scenario,
)

SHARDED_DEMO_TIMEOUT = 180
"""Seconds for `demo --shards 2`: two cold bot processes on a loaded 2-core machine, then
about 10 s of scenario."""


async def test_the_builtin_scenario_works_and_hears_each_guild() -> None:
    transcript = await run_scenario(BUILTIN_SCENARIO, echo=False)
    assert transcript["ok"], transcript
    steps = {s["index"]: s for s in transcript["steps"]}
    plays = [s for s in transcript["steps"] if s["command"] == "play"]
    assert [s["embeds"][0]["title"] if s["embeds"] else None for s in plays] == [
        "Now playing",
        "Queued at position 1",
        "Queued at position 2",
        "Now playing",
        None,
    ]
    assert plays[-1]["ephemeral"]
    assert "404" in plays[-1]["content"]
    queue = next(s for s in transcript["steps"] if s["command"] == "queue")
    assert queue["embeds"][0]["description"].count("\n") == 2  # playing + two upcoming
    now = next(s for s in transcript["steps"] if s["command"] == "nowplaying")
    assert "Progress" in now["embeds"][0]["fields"]
    skip = next(s for s in transcript["steps"] if s["command"] == "skip")
    assert skip["content"].startswith("⏭ Skipped")
    heard = [s for s in steps.values() if s["command"] is None]
    assert len(heard) == 3
    assert all(s["ok"] for s in heard)
    assert transcript["audio"]["2"]["dominant_hz"] == pytest.approx(880, abs=5)
    assert transcript["audio"]["1"]["seconds"] >= 3.5


async def test_unknown_commands_and_refusals_are_reported_in_their_steps() -> None:
    scenario = {
        "guilds": 1,
        "steps": [
            {"user": "alice", "guild": 1, "command": "play", "options": {"query": "tone:440:1"}},
            {"user": "boss", "guild": 1, "admin": True, "command": "no-such-command"},
            {"expect_audio": {"guild": 1, "dominant_hz": 440, "min_seconds": 0.5}},
        ],
    }
    transcript = await run_scenario(scenario, echo=False)
    assert not transcript["ok"]
    refused, unknown, heard = transcript["steps"]
    assert (refused["ok"], refused["ephemeral"]) == (False, True)
    assert refused["content"] == "Join a voice channel first, then ask again."
    assert (unknown["ok"], unknown["content"]) == (False, "the bot has no /no-such-command command")
    assert not heard["ok"]
    assert transcript["audio"] == {}


def test_the_cli_prints_one_json_transcript_and_exits_by_the_result(tmp_path: Path) -> None:
    scenario = tmp_path / "short.json"
    scenario.write_text(
        json.dumps(
            {
                "guilds": 1,
                "steps": [
                    {"user": "alice", "guild": 1, "join_voice": "Music"},
                    {"user": "alice", "command": "play", "options": {"query": "tone:550:1"}},
                    {"sleep": 1.3},
                    {"expect_audio": {"guild": 1, "dominant_hz": 550}},
                    {"user": "alice", "command": "leave"},
                ],
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "musicbot", "demo", "--scenario", str(scenario), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    transcript = json.loads(done.stdout)
    assert [s["command"] for s in transcript["steps"]] == ["play", None, "leave"]
    assert set(transcript["audio"]["1"]) == {
        "packets",
        "seconds",
        "dominant_hz",
        "rms",
        "late_p99_ms",
    }
    assert transcript["audio"]["1"]["dominant_hz"] == pytest.approx(550, abs=5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "is not valid JSON"),
        ('{"guilds": 1}', "needs an object with a list of 'steps'"),
        ('{"guilds": 0, "steps": []}', "'guilds' must be a whole number of at least 1"),
    ],
)
def test_bad_scenarios_are_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=message):
        load_scenario(str(path))


def test_a_missing_scenario_file_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "musicbot", "demo", "--scenario", str(tmp_path / "none.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().endswith("none.json does not exist")
    assert "Traceback" not in done.stderr


def test_the_sharded_demo_serves_each_guild_from_its_own_process_and_shares_the_store() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "musicbot", "demo", "--shards", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=SHARDED_DEMO_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    transcript = json.loads(done.stdout)
    assert transcript["ok"], transcript
    served = transcript["served_by"]
    assert sorted(served[guild]["shard"] for guild in ("1", "2")) == [0, 1]
    pids = {served[guild]["pid"] for guild in ("1", "2")}
    assert len(pids) == 2
    resources = [s for s in transcript["steps"] if s["command"] == "resources"]
    assert len(resources) == 3
    for step in resources:
        guild = str(BUILTIN_SHARDED_SCENARIO["steps"][step["index"] - 1]["guild"])
        shard, pid = served[guild]["shard"], served[guild]["pid"]
        where = step["embeds"][0]["fields"]["Process"].splitlines()[0]
        assert re.fullmatch(
            rf"pid {pid} on host \S+ · shard {shard} of 2 · this server is on shard {shard}", where
        ), where
    # Guild 2 played the song guild 1's process had stored: from the store they share.
    store = resources[-1]["embeds"][0]["fields"]["Song store"]
    hit_rate = re.search(r"hit rate (\d+)%", store)
    assert hit_rate and int(hit_rate.group(1)) > 0, store
    assert transcript["audio"]["1"]["dominant_hz"] == pytest.approx(440, abs=5)
    assert transcript["audio"]["2"]["seconds"] >= 5.0
    assert not [pid for pid in pids if psutil.pid_exists(pid)]  # both processes are gone


def test_a_sharded_demo_whose_processes_cannot_start_says_why_in_one_line(
    tmp_path: Path,
) -> None:
    scenario = tmp_path / "no-ffmpeg.json"
    scenario.write_text(
        json.dumps({"guilds": 2, "settings": {"ffmpeg_path": str(tmp_path / "none")}, "steps": []})
    )
    done = subprocess.run(
        [sys.executable, "-m", "musicbot", "demo", "--shards", "2", "--scenario", str(scenario)],
        capture_output=True,
        text=True,
        timeout=SHARDED_DEMO_TIMEOUT,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert re.fullmatch(
        r"musicbot: the process for shard [01] of 2 exited \(1\) while starting: "
        r"ffmpeg not found.*",
        done.stderr.strip(),
    ), done.stderr


@pytest.mark.parametrize("shards", ["0", "9", "two"])
def test_the_number_of_demo_processes_is_checked(shards: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "musicbot", "demo", "--shards", shards],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "argument --shards: a whole number of processes from 1 to 8" in done.stderr
