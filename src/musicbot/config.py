"""Settings: one frozen value, read from a TOML file and the environment.

Precedence, lowest first: defaults, the TOML file, environment variables (`MUSICBOT_<NAME>`, and
`DISCORD_TOKEN` for the token). Real Discord is the default; tests and the demo point the base
URLs at the loopback Discord. Nothing else differs between the two.
"""

from __future__ import annotations

import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import platformdirs

ENV_PREFIX = "MUSICBOT_"
TOKEN_ENV = "DISCORD_TOKEN"


class ConfigError(Exception):
    """The configuration is invalid. The message is one line an operator can act on."""


class StartupError(Exception):
    """The bot cannot start as configured (no ffmpeg, an unwritable cache, a refused token...).
    The message is one line an operator can act on."""


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{attribute.name} must be positive, not {value!r}")


def _at_least_one(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 1:
        raise ConfigError(f"{attribute.name} must be at least 1, not {value!r}")


def _shard_ids(instance: Settings, attribute: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
    if not value:
        return
    if instance.shard_count is None:
        raise ConfigError("shard_ids needs shard_count: how many shards there are in all")
    wrong = [shard for shard in value if not 0 <= shard < instance.shard_count]
    if wrong:
        raise ConfigError(
            f"shard_ids must be between 0 and {instance.shard_count - 1} "
            f"(shard_count is {instance.shard_count}), not {wrong[0]!r}"
        )


def _log_level(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"log_level must be DEBUG, INFO, WARNING or ERROR, not {value!r}")


def _at_least_zero(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 0:
        raise ConfigError(f"{attribute.name} must not be negative, not {value!r}")


def _url(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.startswith(("http://", "https://", "ws://", "wss://")):
        raise ConfigError(f"{attribute.name} must be an http(s) or ws(s) URL, not {value!r}")


@attrs.frozen
class Settings:
    """Everything an operator can set. Times are in seconds."""

    token: str | None = attrs.field(default=None, repr=False)
    """The bot token (environment: DISCORD_TOKEN). Without it, `musicbot run` explains and exits."""

    api_base_url: str = attrs.field(default="https://discord.com/api/v10", validator=_url)
    gateway_url: str = attrs.field(default="wss://gateway.discord.gg", validator=_url)
    ca_file: str | None = None
    """Extra certificate authority (PEM) to trust for Discord connections; the loopback uses it."""
    command_guilds: tuple[int, ...] = ()
    """Register slash commands in these guilds only (instant); empty: globally."""
    guild_ready_timeout: float = attrs.field(default=2.0, validator=_positive)
    """Seconds discord.py waits for guilds to stream in after login before it reports ready."""
    shard_count: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_at_least_one)
    )
    """Gateway shards across all of the bot's processes; unset: as many as Discord recommends."""
    shard_ids: tuple[int, ...] = attrs.field(default=(), validator=_shard_ids)
    """The shards this process runs, each below shard_count; empty: all of them."""

    max_connections: int = attrs.field(default=10, validator=_at_least_one)
    idle_timeout: float = attrs.field(default=3600.0, validator=_positive)
    """Seconds with nothing playing and no command before the sweep disconnects."""
    alone_timeout: float = attrs.field(default=300.0, validator=_positive)
    """Seconds with nobody else in the voice channel before the sweep disconnects."""
    paused_timeout: float = attrs.field(default=1800.0, validator=_positive)
    """Seconds paused before the sweep disconnects."""
    cleanup_interval: float = attrs.field(default=300.0, validator=_positive)
    """Seconds between idle sweeps."""
    track_cache_size: int = attrs.field(default=500, validator=_at_least_one)
    track_cache_ttl: float = attrs.field(default=1800.0, validator=_positive)

    cache_dir: str = attrs.field(factory=lambda: platformdirs.user_cache_dir("musicbot"))
    """Where processed songs are kept; checked for writing at start-up."""
    store_max_bytes: int = attrs.field(default=2 * 2**30, validator=_at_least_one)
    """Disk the processed-song store may use; the least recently played songs go first."""
    store_max_track_duration: float = attrs.field(default=3600.0, validator=_positive)
    """Longer songs are played but never stored."""
    warm_ahead: int = attrs.field(default=2, validator=_at_least_zero)
    """Upcoming songs transcoded into the store while one plays (0: off)."""
    warm_concurrency: int = attrs.field(default=2, validator=_at_least_one)
    """Songs warmed at once, for the whole bot."""
    store_verify_on_start: int = attrs.field(default=0, validator=_at_least_zero)
    """Check this many of the most played stored songs (whole-file checksums) at start-up;
    damaged ones are dropped and fetched again when next played."""

    ffmpeg_path: str | None = None
    """ffmpeg to run; default: the binary bundled with imageio-ffmpeg."""
    opus_bitrate: int = attrs.field(default=128, validator=_at_least_one)
    """Kilobits per second of the Opus stream sent to Discord."""
    ffmpeg_read_timeout: float = attrs.field(default=10.0, validator=_positive)
    """Seconds ffmpeg waits on a silent server before it reconnects."""

    search_prefix: str = "ytsearch1:"
    """How words (not links) are searched: a yt-dlp search key and how many results to take."""
    playlist_cap: int = attrs.field(default=50, validator=_at_least_one)
    max_track_duration: float = attrs.field(default=3 * 3600.0, validator=_positive)
    max_queue_length: int = attrs.field(default=500, validator=_at_least_one)
    max_query_length: int = attrs.field(default=500, validator=_at_least_one)
    resolve_timeout: float = attrs.field(default=20.0, validator=_positive)
    resolve_concurrency: int = attrs.field(default=4, validator=_at_least_one)
    allow_live: bool = True
    allow_hosts: tuple[str, ...] = ()
    """Hosts or networks (CIDR) that may be private or loopback. By default every link must
    lead to a public address, so strangers cannot make the bot fetch the operator's network."""
    track_start_timeout: float = attrs.field(default=10.0, validator=_positive)
    """Seconds a track may take to start sending audio before it counts as failed."""
    track_stall_timeout: float = attrs.field(default=15.0, validator=_positive)
    """Seconds without audio in the middle of a track before it counts as failed."""

    owner_ids: tuple[int, ...] = ()
    """Users who may run the admin commands (/resources, /cleanup) in every server."""
    admin_roles: tuple[str, ...] = ()
    """Roles (by name or id) whose members may run the admin commands."""
    metrics_port: int | None = None
    """Serve Prometheus metrics on this port (off when unset)."""
    metrics_host: str = "127.0.0.1"

    log_level: str = attrs.field(default="INFO", validator=_log_level)

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain values, with the token masked."""
        values = attrs.asdict(self, recurse=False)
        token = values.get("token")
        if token:
            values["token"] = f"{token[:4]}…({len(token)} characters)"
        return values


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def _convert(name: str, raw: Any, kind: Any, where: str) -> Any:
    """Convert a TOML or environment value to the field's type, or say plainly what is wrong."""
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        options = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if raw is None or raw == "":
            return None
        return _convert(name, raw, options[0], where)
    try:
        if name == "shard_ids" and isinstance(raw, str):
            return parse_shard_ids(raw)
        if origin is tuple:
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            (item_kind, _) = typing.get_args(kind)
            return tuple(item_kind(str(item).strip()) for item in items if str(item).strip())
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            return {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}[
                str(raw).lower()
            ]
        if kind is int and isinstance(raw, float):
            raise ValueError
        return kind(raw)
    except (ValueError, TypeError, KeyError):
        what = SHARD_IDS_FORM if name == "shard_ids" else _describe(kind)
        raise ConfigError(f"{name} in {where} must be {what}, not {raw!r}") from None


SHARD_IDS_FORM = "shard numbers and ranges, like 0-3 or 0,2,5-7"


def parse_shard_ids(text: str) -> tuple[int, ...]:
    """`0-3`, `0,2,5-7` or `4`: shard numbers and inclusive ranges; ValueError if not."""
    shards: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, dash, last = part.partition("-")
        low = int(first)
        high = int(last) if dash else low
        if high < low:
            raise ValueError(f"{part!r} is a range backwards")
        shards.extend(range(low, high + 1))
    if len(set(shards)) != len(shards):
        raise ValueError("a shard is named twice")
    return tuple(shards)


def _describe(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        (item_kind, _) = typing.get_args(kind)
        return "a list of numbers" if item_kind is int else "a list of text"
    return {int: "a whole number", float: "a number", str: "text", bool: "true or false"}.get(
        kind, str(kind)
    )


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    command_line: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings from `path` (TOML, optional), then the environment, then `command_line` (text
    values, as the command line gives them: converted and checked like the environment's), then
    `overrides`."""
    environ = os.environ if environ is None else environ
    kinds = _field_types()
    values: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            document = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config file {file} cannot be read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
        section = document.get("musicbot", document)
        for name, raw in section.items():
            if name not in kinds:
                raise ConfigError(f"unknown setting {name!r} in {file}")
            values[name] = _convert(name, raw, kinds[name], str(file))
    for name, kind in kinds.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _convert(name, raw, kind, ENV_PREFIX + name.upper())
    if environ.get(TOKEN_ENV):
        values["token"] = environ[TOKEN_ENV]
    for name, text in (command_line or {}).items():
        values[name] = _convert(name, text, kinds[name], "the command line")
    values.update(overrides)
    return Settings(**values)
