"""Application commands: what a bulk sync registers, and the `data.options` a Discord client
would send for a member's invocation, checked against the registered schema.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from musicbot.testing.loopback.records import JSON, AppCommand, CommandOption

SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
STRING, INTEGER, BOOLEAN, NUMBER = 3, 4, 5, 10
NAME = re.compile(r"^[-_\w]{1,32}$")

OptionValue = str | int | float | bool


def parse_sync(payload: object, *, guild_id: int | None, ids: Sequence[int]) -> list[AppCommand]:
    """The commands a bulk overwrite (PUT) registers; raises ValueError like a 400 would."""
    if not isinstance(payload, list):
        raise ValueError("a bulk overwrite takes a JSON array of commands")
    if len(payload) > 100:
        raise ValueError(f"{len(payload)} commands, more than 100")
    commands: list[AppCommand] = []
    seen: set[tuple[str, int]] = set()
    for raw, command_id in zip(payload, ids, strict=False):
        kind = int(raw.get("type", 1))
        name = raw.get("name", "")
        if kind == 1:
            _check_named(name, raw.get("description", ""), f"/{name}")
            _check_options(raw.get("options") or [], f"/{name}")
        if (name, kind) in seen:
            raise ValueError(f"command {name!r} is registered twice")
        seen.add((name, kind))
        commands.append(
            AppCommand(
                id=command_id,
                name=name,
                description=raw.get("description", ""),
                type=kind,
                options=tuple(CommandOption.from_json(o) for o in raw.get("options") or ()),
                guild_id=guild_id,
                default_member_permissions=raw.get("default_member_permissions"),
                raw=raw,
            )
        )
    return commands


def _check_named(name: str, description: str, where: str) -> None:
    if not NAME.match(name) or name != name.lower():
        raise ValueError(f"{where}: name must be 1-32 lowercase letters, digits, - or _")
    if not 1 <= len(description) <= 100:
        raise ValueError(f"{where}: description must be 1-100 characters")


def _check_options(options: list[JSON], where: str) -> None:
    if len(options) > 25:
        raise ValueError(f"{where}: {len(options)} options, more than 25")
    optional_seen = False
    for option in options:
        _check_named(
            option.get("name", ""), option.get("description", ""), f"{where} {option.get('name')}"
        )
        if int(option["type"]) in (SUB_COMMAND, SUB_COMMAND_GROUP):
            _check_options(option.get("options") or [], f"{where} {option['name']}")
            continue
        if option.get("required"):
            if optional_seen:
                raise ValueError(f"{where}: required options must come before optional ones")
        else:
            optional_seen = True
        if len(option.get("choices") or ()) > 25:
            raise ValueError(f"{where} {option['name']}: more than 25 choices")


def registered_json(command: AppCommand, *, application_id: int) -> JSON:
    """A registered command as the API returns it."""
    data: JSON = {
        **command.raw,
        "id": str(command.id),
        "application_id": str(application_id),
        "version": str(command.id),
        "type": command.type,
        "default_member_permissions": command.default_member_permissions,
        "nsfw": bool(command.raw.get("nsfw", False)),
    }
    if command.guild_id is not None:
        data["guild_id"] = str(command.guild_id)
    return data


def invocation(
    command: AppCommand,
    path: Sequence[str],
    values: Mapping[str, OptionValue],
    *,
    focused: str | None = None,
    checked: bool = True,
) -> tuple[JSON, CommandOption | None]:
    """`data` of an INTERACTION_CREATE for `/command path... name=value...`.

    With `focused`, builds an autocomplete (type 4) payload: every value is sent as typed text
    and the focused option carries `focused: true`. Returns the data and the focused option.
    With `checked=False` values go out as given (any range, choice or length), the way an API
    client that is not Discord's own could send them; names and required options still count.
    """
    schema: Sequence[CommandOption] = command.options
    where = f"/{command.name}"
    nest: list[tuple[str, int]] = []
    for part in path:
        group = next((o for o in schema if o.name == part and o.type in (1, 2)), None)
        if group is None:
            subs = [o.name for o in schema if o.type in (1, 2)]
            raise LookupError(f"{where} has no subcommand {part!r}; it has {subs}")
        nest.append((part, group.type))
        schema = group.options
        where = f"{where} {part}"
    if any(o.type in (1, 2) for o in schema):
        subs = [o.name for o in schema if o.type in (1, 2)]
        raise LookupError(f"{where} needs a subcommand, one of {subs}")

    leaf: list[JSON] = []
    focused_option: CommandOption | None = None
    by_name = {o.name: o for o in schema}
    for name in values:
        if name not in by_name:
            raise LookupError(f"{where} has no option {name!r}; it has {list(by_name)}")
    for option in schema:
        if option.name not in values:
            if option.required and focused is None:
                raise ValueError(f"{where} needs option {option.name!r}")
            continue
        value = values[option.name]
        if option.name == focused:
            focused_option = option
            leaf.append(
                {"name": option.name, "type": option.type, "value": str(value), "focused": True}
            )
        else:
            sent = _checked(option, value, where) if checked else value
            leaf.append({"name": option.name, "type": option.type, "value": sent})
    if focused is not None and focused_option is None:
        raise LookupError(f"{where}: focused option {focused!r} must be given a value")

    options = leaf
    for name, kind in reversed(nest):
        options = [{"name": name, "type": kind, "options": options}]
    data: JSON = {"id": str(command.id), "name": command.name, "type": 1}
    if options:
        data["options"] = options
    if command.guild_id is not None:
        data["guild_id"] = str(command.guild_id)
    return data, focused_option


def _checked(option: CommandOption, value: OptionValue, where: str) -> OptionValue:
    what = f"{where} {option.name}"
    if option.type == STRING:
        if not isinstance(value, str):
            raise TypeError(f"{what} takes a string, not {value!r}")
        if option.min_length is not None and len(value) < option.min_length:
            raise ValueError(f"{what} must be at least {option.min_length} characters")
        if option.max_length is not None and len(value) > option.max_length:
            raise ValueError(f"{what} must be at most {option.max_length} characters")
    elif option.type == INTEGER:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{what} takes an integer, not {value!r}")
    elif option.type == NUMBER:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{what} takes a number, not {value!r}")
    elif option.type == BOOLEAN:
        if not isinstance(value, bool):
            raise TypeError(f"{what} takes a boolean, not {value!r}")
    else:
        raise TypeError(f"{what}: option type {option.type} is not supported by the fake")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if option.min_value is not None and value < option.min_value:
            raise ValueError(f"{what} must be >= {option.min_value}")
        if option.max_value is not None and value > option.max_value:
            raise ValueError(f"{what} must be <= {option.max_value}")
    if option.choices and value not in [c.value for c in option.choices]:
        raise ValueError(f"{what} must be one of {[c.value for c in option.choices]}")
    return value
