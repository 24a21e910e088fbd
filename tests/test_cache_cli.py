"""`musicbot cache ...` on a real store, filled by `warm` from the loopback media server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import trio

from musicbot.audio.store import open_store
from musicbot.testing.media import open_media_server


def cache(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "musicbot", "cache", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MUSICBOT_", "DISCORD_"))}
    env.update(MUSICBOT_CACHE_DIR=str(tmp_path / "cache"), MUSICBOT_ALLOW_HOSTS="127.0.0.1")
    return env


async def test_warm_list_stats_verify_and_clear(tmp_path: Path) -> None:
    env = environment(tmp_path)
    async with open_media_server(cache_dir=tmp_path / "tones") as media:
        listing = tmp_path / "songs.txt"
        listing.write_text(
            f"# two songs and a dead link\n{media.tone_url(440, 1)}\n"
            f"{media.page_url(660, 1)}\n{media.not_found_url()}\n"
        )
        warmed = await trio.to_thread.run_sync(cache, env, "warm", str(listing))
    assert warmed.returncode == 1  # one query failed, and it says so
    assert warmed.stdout.strip() == "2 songs stored, 1 queries failed"
    assert "[##############################] 3/3 done" in warmed.stderr
    assert "404" in warmed.stderr

    listed = cache(env, "list")
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[-1].startswith("2 songs, ")
    stats = json.loads(cache(env, "stats").stdout)
    assert (stats["entries"], stats["corrupt_dropped"]) == (2, 0)

    (damaged, *_) = sorted((tmp_path / "cache" / "songs").glob("*.opus"))
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    verified = cache(env, "verify")
    assert verified.returncode == 1
    assert verified.stdout.splitlines()[-1] == "2 checked, 1 damaged"

    cleared = cache(env, "clear")
    assert cleared.stdout.strip() == "deleted 1 songs"
    assert json.loads(cache(env, "stats").stdout)["entries"] == 0


async def test_a_store_in_use_is_one_clear_line(tmp_path: Path) -> None:
    env = environment(tmp_path)
    async with open_store(tmp_path / "cache"):  # a bot has it open
        done = await trio.to_thread.run_sync(cache, env, "clear")  # needs it to itself
        shared = await trio.to_thread.run_sync(cache, env, "stats")  # shares it
    assert shared.returncode == 0 and json.loads(shared.stdout)["entries"] == 0
    assert done.returncode == 1
    assert done.stderr.startswith("musicbot: another musicbot is using the cache directory")
    assert "Traceback" not in done.stderr
