"""`musicbot demo`: the real bot against the loopback Discord, driven by a scenario of simulated
users; prints a transcript of what they saw and what the voice channels heard."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

import attrs
import trio

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
            result.ok = not message.ephemeral or bool(step.get("expect_refusal"))
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
                self.say(f"       {name}: {value}")


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
        results = []
        for index, step in enumerate(scenario["steps"], start=1):
            result = await runner.run(index, step)
            if result is not None:
                results.append(result)
        audio = {
            str(g): _audio_json(env.discord.audio(guild=g))
            for g in range(1, guilds + 1)
            if env.discord.rtp_packets(g)
        }
    ok = all(result.ok for result in results)
    return {"ok": ok, "steps": [r.as_json() for r in results], "audio": audio}


def demo_command(scenario_path: str | None, *, as_json: bool, verbose: bool) -> int:
    try:
        from musicbot.testing.harness import open_loopback_bot  # noqa: F401 - needs the extra
    except ImportError as exc:
        print(
            f"musicbot: the demo needs the loopback extra ({exc.name} is missing): "
            "pip install 'musicbot[loopback]'",
            file=sys.stderr,
        )
        return 2
    scenario = load_scenario(scenario_path)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    transcript = trio.run(lambda: run_scenario(scenario, echo=not as_json))
    if as_json:
        print(json.dumps(transcript))
    else:
        print("\nAudio heard (whole run):")
        for guild, audio in transcript["audio"].items():
            print(f"  guild {guild}: {audio}")
        failed = [step for step in transcript["steps"] if not step["ok"]]
        verdict = "everything worked" if not failed else f"{len(failed)} step(s) did not work"
        print(f"\nResult: {verdict}.")
    return 0 if transcript["ok"] else 1
