"""`musicbot demo`: the real bot against the loopback Discord, driven by a scenario of simulated
users; prints a transcript of what they saw and what the voice channels heard."""

from __future__ import annotations

import json
import logging
import math
import re
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import attrs
import trio

from musicbot.cli import find_exception
from musicbot.config import ConfigError

log = logging.getLogger(__name__)

BUILTIN_SCENARIO: dict[str, Any] = {
    "guilds": 2,
    "steps": [
        {"user": "alice", "guild": 1, "join_voice": "Music"},
        {"user": "alice", "guild": 1, "command": "play", "options": {"query": "tone:440:2"}},
        {"user": "alice", "guild": 1, "command": "play", "options": {"query": "a 550 hz tone"}},
        {"user": "alice", "guild": 1, "command": "play", "options": {"query": "page:660:2"}},
        {"user": "bob", "guild": 2, "join_voice": "Music"},
        {"user": "bob", "guild": 2, "command": "play", "options": {"query": "tone:880:3"}},
        {"user": "alice", "guild": 1, "command": "queue"},
        {"sleep": 2.3},
        {"expect_audio": {"guild": 1, "dominant_hz": 440, "min_seconds": 1.8}},
        {"user": "alice", "guild": 1, "command": "nowplaying"},
        {"user": "alice", "guild": 1, "command": "skip"},
        {"sleep": 2.3},
        {"expect_audio": {"guild": 1, "dominant_hz": 660, "min_seconds": 1.8}},
        {"expect_audio": {"guild": 2, "dominant_hz": 880, "min_seconds": 2.5}},
        {"user": "carol", "guild": 1, "join_voice": "Music"},
        {
            "user": "carol",
            "guild": 1,
            "command": "play",
            "options": {"query": "missing"},
            "expect_refusal": True,
        },
        {"user": "alice", "guild": 1, "command": "leave"},
        {"user": "bob", "guild": 2, "command": "leave"},
    ],
}
"""Two guilds: a queue of a link, a search and a page; /queue, /nowplaying, /skip; a dead link
(refused privately, the music plays on); both leave."""

BUILTIN_SHARDED_SCENARIO: dict[str, Any] = {
    "guilds": 2,
    "steps": [
        {"user": "alice", "guild": 1, "join_voice": "Music"},
        {"user": "alice", "guild": 1, "command": "play", "options": {"query": "tone:440:3"}},
        {"user": "bob", "guild": 2, "join_voice": "Music"},
        {"user": "bob", "guild": 2, "command": "play", "options": {"query": "tone:880:3"}},
        {"user": "boss", "guild": 1, "admin": True, "command": "resources"},
        {"user": "boss", "guild": 2, "admin": True, "command": "resources"},
        {"sleep": 3.5},
        {"expect_audio": {"guild": 1, "dominant_hz": 440, "min_seconds": 2.5}},
        {"expect_audio": {"guild": 2, "dominant_hz": 880, "min_seconds": 2.5}},
        {"user": "bob", "guild": 2, "command": "play", "options": {"query": "tone:440:3"}},
        {"sleep": 3.3},
        {"expect_audio": {"guild": 2, "dominant_hz": 440, "min_seconds": 2.5}},
        {"user": "boss", "guild": 2, "admin": True, "command": "resources"},
        {"user": "alice", "guild": 1, "command": "leave"},
        {"user": "bob", "guild": 2, "command": "leave"},
    ],
}
"""For `--shards 2`: two guilds, each on its own shard and so served by its own process.
/resources in each says which process and shard answered; the song guild 1's process played
to its end (and stored) then plays in guild 2 from the shared store, and guild 2's /resources
counts the store hit. No searches: the processes' yt-dlp cannot search the media server."""

PRIVATE_REPORTS = frozenset({"resources"})
"""Commands whose answer is private by design: a private answer with an embed is their success."""
SHARD_STARTUP_TIMEOUT = 60.0
"""Seconds for the processes to log in: cold processes on a busy machine, all at once."""
SHARD_STOP_TIMEOUT = 10.0
"""Seconds a process has to exit after SIGTERM before it is killed (it promises 5)."""
MAX_SHARD_PROCESSES = 8

HZ_TOLERANCE = 5.0
_TONE = re.compile(r"^(tone|page):(\d+):(\d+(?:\.\d+)?)$")


class ScenarioError(ConfigError):
    """The scenario file is not what docs/demo.md describes."""


@attrs.define
class StepResult:
    index: int
    what: str
    ok: bool
    command: str | None = None
    content: str = ""
    embeds: list[dict[str, Any]] = attrs.Factory(list)
    ephemeral: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "command": self.command,
            "ok": self.ok,
            "content": self.content,
            "embeds": self.embeds,
            "ephemeral": self.ephemeral,
        }


def load_scenario(path: str | None) -> dict[str, Any]:
    if path is None:
        return BUILTIN_SCENARIO
    try:
        scenario = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"scenario file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"scenario file {path} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"scenario file {path} is not valid JSON: {exc}") from None
    if not isinstance(scenario, dict) or not isinstance(scenario.get("steps"), list):
        raise ScenarioError(f"scenario file {path} needs an object with a list of 'steps'")
    if not isinstance(scenario.get("guilds", 1), int) or scenario.get("guilds", 1) < 1:
        raise ScenarioError("'guilds' must be a whole number of at least 1")
    return scenario


def _embed_json(embed: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"title": embed.title, "description": embed.description}
    if embed.fields:
        data["fields"] = {field.name: field.value for field in embed.fields}
    if embed.footer:
        data["footer"] = embed.footer
    return data


def _audio_json(report: Any) -> dict[str, Any]:
    return {
        "packets": report.packets,
        "seconds": round(report.seconds, 2),
        "dominant_hz": None if report.dominant_hz is None else round(report.dominant_hz, 1),
        "rms": None if math.isinf(report.rms_dbfs) else round(report.rms_dbfs, 1),
        "late_p99_ms": round(report.lateness_p99_ms, 2),
    }


class ScenarioRunner:
    """Plays the steps of a scenario against a running loopback bot."""

    def __init__(self, env: Any, echo: bool) -> None:
        self.env = env
        self.echo = echo
        self.members: dict[tuple[int, str], Any] = {}
        self.audio_marks: dict[int, int] = {}

    def say(self, text: str) -> None:
        if self.echo:
            print(text, flush=True)

    def member(self, step: dict[str, Any]) -> Any:
        guild, name = int(step.get("guild", 1)), str(step["user"])
        key = (guild, name)
        if key not in self.members:
            self.members[key] = self.env.discord.member(
                guild=guild, name=name, admin=bool(step.get("admin", False))
            )
        return self.members[key]

    def query(self, value: str) -> str:
        media = self.env.media
        match = _TONE.match(value)
        if match:
            kind, freq, seconds = match.group(1), int(match.group(2)), float(match.group(3))
            return str(
                media.tone_url(freq, seconds) if kind == "tone" else media.page_url(freq, seconds)
            )
        if value == "missing":
            return str(media.not_found_url())
        return value

    async def run(self, index: int, step: dict[str, Any]) -> StepResult | None:
        if "sleep" in step:
            seconds = float(step["sleep"])
            self.say(f"[{index}] (wait {seconds:g} s)")
            await trio.sleep(seconds)
            return None
        if "expect_audio" in step:
            return self.expect_audio(index, step["expect_audio"])
        who = f"{step.get('user')}@guild{step.get('guild', 1)}"
        if "join_voice" in step:
            member = self.member(step)
            channel = step["join_voice"]
            if channel is None:
                await member.leave_voice()
                self.say(f"[{index}] {who} leaves voice")
            else:
                await member.join_voice(channel)
                self.say(f"[{index}] {who} joins voice channel {channel}")
            return None
        if "command" in step:
            return await self.command(index, who, step)
        if "press" in step:
            return await self.press(index, who, step)
        raise ScenarioError(f"step {index} is not a step docs/demo.md describes: {step!r}")

    async def command(self, index: int, who: str, step: dict[str, Any]) -> StepResult:
        from musicbot.testing.harness import reply_to

        name = str(step["command"])
        options = {
            k: self.query(v) if k == "query" else v for k, v in step.get("options", {}).items()
        }
        shown = " ".join(f"{k}={v}" for k, v in step.get("options", {}).items())
        self.say(f"[{index}] {who}: /{name} {shown}".rstrip())
        result = StepResult(index, f"/{name}", ok=False, command=name)
        if name not in self.env.discord.commands:
            result.content = f"the bot has no /{name} command"
            self.say(f"    !! {result.content}")
            return result
        try:
            interaction = await self.member(step).slash(name, **options)
            message = await reply_to(interaction)
        except (ValueError, LookupError) as exc:
            result.content = f"Discord would refuse these options: {exc}"
        except trio.TooSlowError:
            result.content = "no answer in time"
        else:
            result.content = message.content or ""
            result.embeds = [_embed_json(embed) for embed in message.embeds]
            result.ephemeral = message.ephemeral
            private_report = name in PRIVATE_REPORTS and bool(message.embeds)
            result.ok = not message.ephemeral or private_report or bool(step.get("expect_refusal"))
        self._show_answer(result)
        return result

    async def press(self, index: int, who: str, step: dict[str, Any]) -> StepResult:

        custom_id = str(step["press"])
        guild = int(step.get("guild", 1))
        self.say(f"[{index}] {who} presses [{custom_id}]")
        result = StepResult(index, f"press {custom_id}", ok=False, command=f"press:{custom_id}")
        messages = self.env.discord.channel_messages(guild=guild, include_answers=True)
        target = next(
            (m for m in reversed(messages) if any(c.custom_id == custom_id for c in m.components)),
            None,
        )
        if target is None:
            result.content = f"no message with a {custom_id!r} button"
        else:
            interaction = await self.member(step).press(target, custom_id)
            await interaction.wait_for_answer()
            message = interaction.followups[-1] if interaction.followups else interaction.message
            result.ok = True
            if message is not None:
                result.content = message.content or ""
                result.embeds = [_embed_json(embed) for embed in message.embeds]
                result.ephemeral = message.ephemeral
        self._show_answer(result)
        return result

    def expect_audio(self, index: int, expected: dict[str, Any]) -> StepResult:
        guild = int(expected.get("guild", 1))
        mark = self.audio_marks.get(guild, 0)
        packets = self.env.discord.rtp_packets(guild)
        self.audio_marks[guild] = len(packets)
        report = self.env.discord.audio(guild=guild, packets=slice(mark, None))
        problems = []
        want_hz = expected.get("dominant_hz")
        heard_hz = report.dominant_hz
        if want_hz is not None and (heard_hz is None or abs(heard_hz - want_hz) > HZ_TOLERANCE):
            problems.append(f"expected {want_hz} Hz, heard {heard_hz}")
        min_seconds = expected.get("min_seconds")
        if min_seconds is not None and report.seconds < float(min_seconds):
            problems.append(f"expected at least {min_seconds} s, heard {report.seconds:.2f} s")
        heard = _describe_audio(report)
        result = StepResult(index, f"expect audio in guild {guild}", ok=not problems)
        result.content = "; ".join(problems) if problems else f"heard {heard}"
        self.say(f"[{index}] guild {guild} heard {heard}: {'ok' if result.ok else 'NOT OK'}")
        for problem in problems:
            self.say(f"    !! {problem}")
        return result

    def _show_answer(self, result: StepResult) -> None:
        private = " (only you can see this)" if result.ephemeral else ""
        if result.content:
            self.say(f"    -> {result.content}{private}")
        for embed in result.embeds:
            self.say(f"    -> [{embed.get('title')}] {embed.get('description') or ''}{private}")
            for name, value in embed.get("fields", {}).items():
                self.say(f"       {name}: {value}".replace("\n", "\n         "))


def _describe_audio(report: Any) -> str:
    hz = "no tone" if report.dominant_hz is None else f"{report.dominant_hz:.1f} Hz"
    return (
        f"{report.seconds:.2f} s, {report.packets} packets, {hz}, "
        f"{report.rms_dbfs:.1f} dBFS, late p50 {report.lateness_p50_ms:.2f} ms "
        f"p99 {report.lateness_p99_ms:.2f} ms"
    )


async def run_scenario(scenario: dict[str, Any], *, echo: bool) -> dict[str, Any]:
    from musicbot.testing.harness import open_loopback_bot

    guilds = int(scenario.get("guilds", 1))
    settings = dict(scenario.get("settings", {}))
    async with open_loopback_bot(guilds=guilds, **settings) as env:
        runner = ScenarioRunner(env, echo)
        runner.say(
            f"musicbot demo: the real bot in {guilds} guild(s) of the loopback Discord "
            f"at {env.discord.api_base}"
        )
        results = await _play_steps(runner, scenario)
        audio = _audio_heard(env.discord, guilds)
    ok = all(result.ok for result in results)
    return {"ok": ok, "steps": [r.as_json() for r in results], "audio": audio}


async def _play_steps(runner: ScenarioRunner, scenario: dict[str, Any]) -> list[StepResult]:
    results = []
    for index, step in enumerate(scenario["steps"], start=1):
        result = await runner.run(index, step)
        if result is not None:
            results.append(result)
    return results


def _audio_heard(discord: Any, guilds: int) -> dict[str, dict[str, Any]]:
    return {
        str(g): _audio_json(discord.audio(guild=g))
        for g in range(1, guilds + 1)
        if discord.rtp_packets(g)
    }


# --- the bot as sharded processes ------------------------------------------------------------


class ShardedDemoError(Exception):
    """A `musicbot run` process of the sharded demo could not start."""


@attrs.frozen
class ShardProcess:
    """One `musicbot run --shard-count N --shard-ids I` child of the sharded demo."""

    shard: int
    process: Any  # trio.Process
    log_path: Path | None
    """Its stderr, when not shown as it comes (--verbose)."""

    def failure(self) -> str:
        """Why it stopped, in its own words (its `musicbot: ...` line), or its last line."""
        if self.log_path is None:
            return "see its log above"
        lines = self.log_path.read_text(errors="replace").splitlines()
        said = [line.removeprefix("musicbot: ") for line in lines if line.startswith("musicbot: ")]
        return (said or lines or ["no output"])[-1]


@attrs.frozen
class ShardedWorld:
    """What the scenario runner drives: the loopback Discord, the media server, and the bot as
    processes (each running one gateway shard), all sharing one song store."""

    discord: Any
    media: Any
    processes: tuple[ShardProcess, ...]
    shard_count: int

    def shard_of(self, guild: int) -> int:
        from musicbot.testing.loopback.snowflakes import shard_of

        return shard_of(self.discord.guild(guild).id, self.shard_count)

    def process_of(self, guild: int) -> ShardProcess:
        return self.processes[self.shard_of(guild)]


def _environment_values(settings: Mapping[str, Any]) -> dict[str, str]:
    """A scenario's `settings` as `musicbot run` reads them from the environment."""

    def text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (list, tuple)):
            return ",".join(str(item) for item in value)
        return str(value)

    return {f"MUSICBOT_{name.upper()}": text(value) for name, value in settings.items()}


async def _start_shard_process(
    discord: Any,
    shard: int,
    shards: int,
    scratch: Path,
    settings: Mapping[str, Any],
    *,
    verbose: bool,
) -> ShardProcess:
    from musicbot.testing.harness import process_environment

    env = process_environment(
        discord,
        cache_dir=scratch / "cache",  # the same for every process: one shared song store
        MUSICBOT_LOG_LEVEL="INFO" if verbose else "WARNING",
        **_environment_values(settings),
    )
    command = [sys.executable, "-m", "musicbot", "run", "--shard-count", str(shards)]
    command += ["--shard-ids", str(shard)]
    log_path = None if verbose else scratch / f"shard-{shard}.log"
    log: IO[bytes] | None = None if log_path is None else log_path.open("wb")
    try:
        process = await trio.lowlevel.open_process(command, env=env, stderr=log)
    finally:
        if log is not None:
            log.close()  # the child has its own copy
    return ShardProcess(shard, process, log_path)


async def _stop_shard_process(child: ShardProcess) -> None:
    """SIGTERM, then SIGKILL if it has not exited in time; reaped either way."""
    process = child.process
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(SHARD_STOP_TIMEOUT):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _wait_serving(world: ShardedWorld) -> None:
    """Until every guild's shard is READY; ShardedDemoError if a process exits first, or if
    they take longer than SHARD_STARTUP_TIMEOUT."""
    discord = world.discord
    failures: list[str] = []

    async def watch(child: ShardProcess) -> None:
        code = await child.process.wait()
        failures.append(
            f"the process for shard {child.shard} of {world.shard_count} exited ({code}) "
            f"while starting: {child.failure()}"
        )
        watchers.cancel_scope.cancel()

    async with trio.open_nursery() as watchers:
        for child in world.processes:
            watchers.start_soon(watch, child)
        try:
            with trio.fail_after(SHARD_STARTUP_TIMEOUT):
                await discord.wait_for(lambda: "play" in discord.commands, what="the commands")
                await discord.wait_ready()
        except trio.TooSlowError:
            failures.append(f"the bot did not log in within {SHARD_STARTUP_TIMEOUT:g} s")
        watchers.cancel_scope.cancel()
    if failures:
        raise ShardedDemoError(failures[0])


@asynccontextmanager
async def open_sharded_world(
    guilds: int, shards: int, settings: Mapping[str, Any], *, verbose: bool
) -> AsyncIterator[ShardedWorld]:
    """The loopback Discord (recommending `shards` shards) and media server, and `shards`
    `musicbot run` processes logged into it, each running one shard, on one cache_dir."""
    import trio_asyncio

    from musicbot.testing.loopback import open_fake_discord
    from musicbot.testing.media import open_media_server

    async with (
        trio_asyncio.open_loop(),
        open_media_server() as media,
        open_fake_discord(
            guilds=guilds,
            shards=shards,
            identify_concurrency=shards,
            # Cold processes: their first answers get the start-up allowance.
            wait_timeout=SHARD_STARTUP_TIMEOUT,
        ) as discord,
    ):
        with tempfile.TemporaryDirectory(prefix="musicbot-demo-") as scratch:
            processes: list[ShardProcess] = []
            try:
                for shard in range(shards):
                    processes.append(
                        await _start_shard_process(
                            discord, shard, shards, Path(scratch), settings, verbose=verbose
                        )
                    )
                world = ShardedWorld(discord, media, tuple(processes), shards)
                await _wait_serving(world)
                yield world
            finally:
                async with trio.open_nursery() as stopping:  # all at once, each bounded
                    for child in processes:
                        stopping.start_soon(_stop_shard_process, child)


async def run_sharded_scenario(
    scenario: dict[str, Any], *, shards: int, echo: bool, verbose: bool = False
) -> dict[str, Any]:
    """The scenario against the bot run as `shards` `musicbot run` processes of one shard each.
    The transcript says which process (pid) and shard served each guild."""
    guilds = int(scenario.get("guilds", 1))
    settings = dict(scenario.get("settings", {}))
    async with open_sharded_world(guilds, shards, settings, verbose=verbose) as world:
        runner = ScenarioRunner(world, echo)
        runner.say(
            f"musicbot demo: the real bot as {shards} `musicbot run` process(es), one gateway "
            f"shard each, sharing one song store, in {guilds} guild(s) of the loopback Discord "
            f"at {world.discord.api_base}"
        )
        served_by = {
            str(guild): {
                "pid": world.process_of(guild).process.pid,
                "shard": world.shard_of(guild),
            }
            for guild in range(1, guilds + 1)
        }
        for child in world.processes:
            mine = [g for g in range(1, guilds + 1) if world.shard_of(g) == child.shard]
            runner.say(
                f"  process pid {child.process.pid}: shard {child.shard} of {shards}, "
                f"guild(s) {', '.join(map(str, mine)) or 'none'}"
            )
        results = await _play_steps(runner, scenario)
        audio = _audio_heard(world.discord, guilds)
    ok = all(result.ok for result in results)
    return {
        "ok": ok,
        "steps": [r.as_json() for r in results],
        "audio": audio,
        "served_by": served_by,
    }


def demo_command(
    scenario_path: str | None, *, as_json: bool, verbose: bool, shards: int | None = None
) -> int:
    """`shards`: run the bot as that many `musicbot run` processes, one gateway shard each,
    instead of inside this process."""
    try:
        from musicbot.testing.harness import open_loopback_bot  # noqa: F401 - needs the extra
    except ImportError as exc:
        print(
            f"musicbot: the demo needs the loopback extra ({exc.name} is missing): "
            "pip install 'musicbot[loopback]'",
            file=sys.stderr,
        )
        return 2
    if shards is None:
        scenario = load_scenario(scenario_path)
    else:
        scenario = (
            BUILTIN_SHARDED_SCENARIO if scenario_path is None else load_scenario(scenario_path)
        )
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if shards is None:
        transcript = trio.run(lambda: run_scenario(scenario, echo=not as_json))
    else:
        try:
            transcript = trio.run(
                lambda: run_sharded_scenario(
                    scenario, shards=shards, echo=not as_json, verbose=verbose
                )
            )
        except BaseException as exc:
            problem = find_exception(exc, ShardedDemoError)
            if problem is None:
                raise
            print(f"musicbot: {problem}", file=sys.stderr)
            return 1
    served_by = transcript.get("served_by", {})
    if as_json:
        print(json.dumps(transcript))
    else:
        print("\nAudio heard (whole run):")
        for guild, audio in transcript["audio"].items():
            where = served_by.get(guild)
            by = f" (shard {where['shard']}, process pid {where['pid']})" if where else ""
            print(f"  guild {guild}{by}: {audio}")
        failed = [step for step in transcript["steps"] if not step["ok"]]
        verdict = "everything worked" if not failed else f"{len(failed)} step(s) did not work"
        print(f"\nResult: {verdict}.")
    return 0 if transcript["ok"] else 1
