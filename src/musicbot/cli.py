"""`musicbot run | demo | check-config`: one clear line and a non-zero exit for every startup
problem, never a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import TypeVar

from musicbot.config import TOKEN_ENV, ConfigError, StartupError, load_settings

EXIT_USAGE = 2
"""Exit status for a problem in the command line or configuration."""
EXIT_STARTUP = 1
"""Exit status when the bot could not start as configured (ffmpeg, cache directory, token)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicbot", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the bot against Discord")
    run.add_argument("--config", metavar="FILE", help="a TOML settings file")
    _add_shard_options(run)

    demo = commands.add_parser(
        "demo", help="run the bot offline against the loopback Discord with simulated users"
    )
    demo.add_argument("--scenario", metavar="FILE", help="a JSON scenario (see docs/demo.md)")
    demo.add_argument("--json", action="store_true", help="print the transcript as JSON")
    demo.add_argument("--verbose", action="store_true", help="show the bot's log too")
    demo.add_argument(
        "--shards",
        metavar="N",
        type=_demo_shards,
        help="run the bot as N `musicbot run` processes, one gateway shard each, sharing one "
        "song store (see docs/demo.md)",
    )

    check = commands.add_parser("check-config", help="validate settings and print them")
    check.add_argument("--config", metavar="FILE", help="a TOML settings file")
    _add_shard_options(check)

    from musicbot.cache_cli import add_cache_commands

    add_cache_commands(commands)
    return parser


def _demo_shards(text: str) -> int:
    from musicbot.demo import MAX_SHARD_PROCESSES

    try:
        shards = int(text)
    except ValueError:
        shards = 0
    if not 1 <= shards <= MAX_SHARD_PROCESSES:
        raise argparse.ArgumentTypeError(
            f"a whole number of processes from 1 to {MAX_SHARD_PROCESSES}, not {text!r}"
        )
    return shards


def _add_shard_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--shard-count",
        metavar="N",
        help="gateway shards across all of the bot's processes (default: Discord's advice)",
    )
    command.add_argument(
        "--shard-ids",
        metavar="IDS",
        help="the shards this process runs, e.g. 0-3 or 0,2,5-7 (default: all of them)",
    )


def _shard_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The command line's shard options, as settings' raw values: they override the config
    file and the environment, and are checked the same way."""
    given = {"shard_count": args.shard_count, "shard_ids": args.shard_ids}
    return {name: value for name, value in given.items() if value is not None}


def _fail(message: str, status: int = EXIT_USAGE) -> int:
    print(f"musicbot: {message}", file=sys.stderr)
    return status


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_command(config: str | None, overrides: Mapping[str, str] | None = None) -> int:
    settings = load_settings(config, command_line=overrides)
    if not settings.token:
        return _fail(
            f"no bot token: set {TOKEN_ENV}=<token> in the environment "
            "(or `token` in the config file), or try `musicbot demo` to run offline"
        )
    _configure_logging(settings.log_level)
    import trio

    from musicbot.app import serve

    try:
        trio.run(serve, settings)
    except BaseException as exc:
        startup = _startup_error(exc)
        if startup is None:
            raise
        return _fail(str(startup), EXIT_STARTUP)
    return 0


E = TypeVar("E", bound=BaseException)


def find_exception(exc: BaseException, kind: type[E]) -> E | None:
    """The `kind` exception that is `exc` or inside it, however deep in exception groups
    (nurseries wrap what they raise)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_exception(inner, kind)
            if found is not None:
                return found
    return None


def _startup_error(exc: BaseException) -> StartupError | None:
    return find_exception(exc, StartupError)


def check_config_command(config: str | None, overrides: Mapping[str, str] | None = None) -> int:
    settings = load_settings(config, command_line=overrides)
    print(json.dumps(settings.masked(), indent=2, default=list, ensure_ascii=False))
    if not settings.token:
        print(f"note: no token set; `musicbot run` needs {TOKEN_ENV}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return run_command(args.config, _shard_overrides(args))
        if args.command == "check-config":
            return check_config_command(args.config, _shard_overrides(args))
        if args.command == "cache":
            from musicbot.cache_cli import cache_command

            try:
                return cache_command(load_settings(args.config), args)
            except BaseException as exc:
                startup = _startup_error(exc)
                if startup is None:
                    raise
                return _fail(str(startup), EXIT_STARTUP)
        from musicbot.demo import demo_command

        return demo_command(
            args.scenario, as_json=args.json, verbose=args.verbose, shards=args.shards
        )
    except ConfigError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    sys.exit(main())
