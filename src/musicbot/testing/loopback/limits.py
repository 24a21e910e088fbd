"""Discord's limits on messages, checked the way the API checks them (it answers 400 with
code 50035, or 50006 for an empty message). A bot that lists a long queue meets these first.
"""

from __future__ import annotations

from collections.abc import Iterable

from musicbot.testing.loopback.records import JSON

COMPONENTS_V2 = 1 << 15


def message_problems(payload: JSON, *, creating: bool, attachments: int = 0) -> list[str]:
    problems: list[str] = []
    content = payload.get("content") or ""
    if not isinstance(content, str):
        problems.append("content must be a string")
        content = str(content)
    if len(content) > 2000:
        problems.append(f"content is {len(content)} characters, more than 2000")
    embeds = payload.get("embeds") or []
    if len(embeds) > 10:
        problems.append(f"{len(embeds)} embeds, more than 10")
    total = 0
    for index, embed in enumerate(embeds):
        total += _embed_problems(index, embed, problems)
    if total > 6000:
        problems.append(f"embeds hold {total} characters, more than 6000")
    components = payload.get("components") or []
    v2 = bool(int(payload.get("flags") or 0) & COMPONENTS_V2)
    if not v2:
        _component_problems(components, problems)
    if creating and not (content or embeds or components or attachments or payload.get("poll")):
        problems.append("Cannot send an empty message")
    return problems


def _limit(problems: list[str], what: str, value: object, limit: int) -> int:
    text = value if isinstance(value, str) else ""
    if len(text) > limit:
        problems.append(f"{what} is {len(text)} characters, more than {limit}")
    return len(text)


def _embed_problems(index: int, embed: JSON, problems: list[str]) -> int:
    where = f"embeds[{index}]"
    size = _limit(problems, f"{where}.title", embed.get("title"), 256)
    size += _limit(problems, f"{where}.description", embed.get("description"), 4096)
    fields = embed.get("fields") or []
    if len(fields) > 25:
        problems.append(f"{where} has {len(fields)} fields, more than 25")
    for number, field in enumerate(fields):
        size += _limit(problems, f"{where}.fields[{number}].name", field.get("name"), 256)
        size += _limit(problems, f"{where}.fields[{number}].value", field.get("value"), 1024)
        if not field.get("name") or not field.get("value"):
            problems.append(f"{where}.fields[{number}] needs a name and a value")
    footer = embed.get("footer") or {}
    size += _limit(problems, f"{where}.footer.text", footer.get("text"), 2048)
    author = embed.get("author") or {}
    size += _limit(problems, f"{where}.author.name", author.get("name"), 256)
    return size


def _component_problems(rows: Iterable[JSON], problems: list[str]) -> None:
    rows = list(rows)
    if len(rows) > 5:
        problems.append(f"{len(rows)} action rows, more than 5")
    custom_ids: set[str] = set()
    for number, row in enumerate(rows):
        if row.get("type") != 1:
            problems.append(f"components[{number}] is not an action row")
            continue
        items = row.get("components") or []
        buttons = [i for i in items if i.get("type") == 2]
        if len(buttons) > 5 or (len(items) > 1 and len(buttons) != len(items)):
            problems.append(f"components[{number}] holds more than 5 buttons or a select and more")
        for item in items:
            _limit(problems, "a button label", item.get("label"), 80)
            custom_id = item.get("custom_id")
            if item.get("type") == 2 and item.get("style") == 5:
                if not item.get("url") or custom_id:
                    problems.append("a link button needs a url and no custom_id")
                continue
            if not custom_id or len(custom_id) > 100:
                problems.append(f"custom_id {custom_id!r} must be 1 to 100 characters")
            elif custom_id in custom_ids:
                problems.append(f"custom_id {custom_id!r} is used twice in one message")
            else:
                custom_ids.add(custom_id)
            options = item.get("options") or []
            if len(options) > 25:
                problems.append(f"a select has {len(options)} options, more than 25")
