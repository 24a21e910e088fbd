"""The fake Discord's world: guilds, roles, channels, members, voice states, messages,
interactions and commands, plus `Changes`, which wakes Trio waiters when any of it changes.

No I/O here. The servers (asyncio side) and the test face (Trio side) both read and change this
model; they run in one thread (trio-asyncio runs asyncio callbacks inside a Trio task), so no locks.
"""

from __future__ import annotations

import datetime
import math
import re
import secrets
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import attrs
import trio

from musicbot.testing.loopback import permissions
from musicbot.testing.loopback.records import (
    JSON,
    AppCommand,
    Callback,
    Choice,
    CommandSync,
    Component,
    Embed,
    GuildInfo,
    Message,
    RejectedRequest,
    RtpPacket,
    SpeakingEvent,
    VoiceClose,
)
from musicbot.testing.loopback.snowflakes import Snowflakes

T = TypeVar("T")

TEXT, VOICE = 0, 2
INTERACTIVE_COMPONENTS = frozenset({2, 3, 5, 6, 7, 8})


class Changes:
    """A Trio "something changed" broadcast: `notify()` wakes every `wait_for`."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_for(self, predicate: Callable[[], T | None], *, within: float, what: str) -> T:
        """Wait until `predicate()` is truthy and return its value; raise TooSlowError if that
        takes more than `within` seconds."""
        with trio.move_on_after(within):
            while True:
                result = predicate()
                if result:
                    return result
                await self._event.wait()
        raise trio.TooSlowError(f"timed out after {within:g} s waiting for {what}")


@attrs.define
class User:
    id: int
    name: str
    bot: bool = False


@attrs.define
class Role:
    id: int
    name: str
    permissions: int
    position: int
    managed: bool = False


@attrs.define
class Channel:
    id: int
    guild_id: int
    name: str
    type: int
    position: int


@attrs.define
class Member:
    user: User
    role_ids: list[int]
    joined_at: str


@attrs.define
class VoiceState:
    user_id: int
    channel_id: int
    session_id: str
    self_mute: bool = False
    self_deaf: bool = False


@attrs.define
class Guild:
    index: int
    id: int
    name: str
    owner_id: int
    roles: dict[int, Role] = attrs.Factory(dict)
    channels: dict[int, Channel] = attrs.Factory(dict)
    members: dict[int, Member] = attrs.Factory(dict)
    voice_states: dict[int, VoiceState] = attrs.Factory(dict)

    def info(self) -> GuildInfo:
        return GuildInfo(
            index=self.index,
            id=self.id,
            name=self.name,
            text_channels={c.name: c.id for c in self.channels.values() if c.type == TEXT},
            voice_channels={c.name: c.id for c in self.channels.values() if c.type == VOICE},
        )

    def channel_named(self, name: str, *, type: int) -> Channel:
        for channel in self.channels.values():
            if channel.name == name and channel.type == type:
                return channel
        kind = "voice" if type == VOICE else "text"
        known = [c.name for c in self.channels.values() if c.type == type]
        raise KeyError(f"guild {self.index} has no {kind} channel {name!r}; it has {known}")

    def role_named(self, name: str) -> Role | None:
        return next((r for r in self.roles.values() if r.name == name), None)

    def member_named(self, name: str) -> Member | None:
        return next((m for m in self.members.values() if m.user.name == name), None)

    def permissions_of(self, user_id: int) -> int:
        member = self.members[user_id]
        role_ids = [self.id, *member.role_ids]  # @everyone's id is the guild's
        return permissions.effective(
            (self.roles[r].permissions for r in role_ids), owner=user_id == self.owner_id
        )


@attrs.define
class InteractionModel:
    id: int
    token: str
    type: int  # 2 command, 3 component, 4 autocomplete
    name: str  # command name, or the pressed component's custom_id
    guild_id: int
    channel_id: int
    user_id: int
    created_at: float
    answer_deadline: float
    component_message_id: int | None = None
    callback: Callback | None = None
    original_message_id: int | None = None
    followup_ids: list[int] = attrs.Factory(list)
    edits: int = 0
    choices: tuple[Choice, ...] = ()


@attrs.define
class BotVoice:
    """The voice side of the bot in one guild (its channel lives in `Guild.voice_states`)."""

    guild_id: int
    token: str | None = None
    ssrc: int | None = None
    secret_key: bytes | None = None
    mode: str | None = None
    websocket_open: bool = False
    described: bool = False
    sessions_opened: int = 0
    sessions_closed: int = 0
    closes: list[VoiceClose] = attrs.Factory(list)
    speaking: list[SpeakingEvent] = attrs.Factory(list)
    packets: list[RtpPacket] = attrs.Factory(list)
    udp_dropped: int = 0
    undecryptable: int = 0
    udp_drop_until: float = -math.inf
    stall_connect: bool = False
    refuse_code: int | None = None
    """The `refuse_voice` fault: every voice IDENTIFY and RESUME is closed with this code."""
    refused: int = 0


def flatten_components(raw: Iterable[JSON]) -> tuple[Component, ...]:
    """Every button and select, found through rows, containers, sections and labels."""
    found: list[Component] = []

    def walk(items: Iterable[JSON]) -> None:
        for item in items:
            kind = int(item.get("type", 0))
            if kind in INTERACTIVE_COMPONENTS:
                emoji = item.get("emoji")
                found.append(
                    Component(
                        type=kind,
                        custom_id=item.get("custom_id"),
                        label=item.get("label") or item.get("placeholder"),
                        style=item.get("style"),
                        url=item.get("url"),
                        disabled=bool(item.get("disabled", False)),
                        emoji=emoji.get("name") if isinstance(emoji, dict) else None,
                        options=tuple(str(o.get("value")) for o in item.get("options") or ()),
                    )
                )
            walk(item.get("components") or ())
            for key in ("accessory", "component"):
                if isinstance(item.get(key), dict):
                    walk([item[key]])

    walk(raw)
    return tuple(found)


_MENTION = re.compile(r"@everyone|@here|<@!?(\d+)>|<@&(\d+)>")


def pings_of(content: str, allowed_mentions: JSON | None) -> tuple[str, ...]:
    """The mentions in `content` Discord would notify under `allowed_mentions` (None: the
    default, every kind parsed)."""
    parse = (
        {"everyone", "users", "roles"}
        if allowed_mentions is None
        else set(allowed_mentions.get("parse") or ())
    )
    users = {str(u) for u in (allowed_mentions or {}).get("users") or ()}
    roles = {str(r) for r in (allowed_mentions or {}).get("roles") or ()}
    found = []
    for match in _MENTION.finditer(content):
        user, role = match.group(1), match.group(2)
        if user is not None:
            notified = "users" in parse or user in users
        elif role is not None:
            notified = "roles" in parse or role in roles
        else:
            notified = "everyone" in parse
        if notified:
            found.append(match.group(0))
    return tuple(found)


def iso_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


class State:
    """Everything the fake Discord knows."""

    def __init__(
        self,
        *,
        guilds: int,
        text_channels: Iterable[str],
        voice_channels: Iterable[str],
        answer_timeout: float,
        bot_name: str = "musicbot",
    ) -> None:
        if guilds < 1:
            raise ValueError("a fake Discord needs at least one guild")
        self.changes = Changes()
        self.ids = Snowflakes()
        self.answer_timeout = answer_timeout
        self.bot = User(self.ids.next(), bot_name, bot=True)
        self.application_id = self.bot.id  # as for every application made since 2016
        self.token = (
            f"{secrets.token_urlsafe(18)}.{secrets.token_urlsafe(5)}.{secrets.token_urlsafe(27)}"
        )
        self.owner = User(self.ids.next(), "owner")
        self.users: dict[int, User] = {self.bot.id: self.bot, self.owner.id: self.owner}
        self.guilds: list[Guild] = []
        # Guild ids first, one millisecond apart: guilds spread over shards round-robin.
        guild_ids = [self.ids.next() for _ in range(guilds)]
        for index, guild_id in enumerate(guild_ids, start=1):
            self.guilds.append(
                self._make_guild(index, guild_id, list(text_channels), list(voice_channels))
            )
        self.bot_voice = {g.id: BotVoice(g.id) for g in self.guilds}
        self.messages: dict[int, Message] = {}
        self.channel_messages: dict[int, list[int]] = {}
        self.interactions: dict[int, InteractionModel] = {}
        self.interactions_by_token: dict[str, InteractionModel] = {}
        self.global_commands: dict[str, AppCommand] = {}
        self.guild_commands: dict[int, dict[str, AppCommand]] = {}
        self.command_syncs: list[CommandSync] = []
        self.rejected: list[RejectedRequest] = []
        self.rest_requests = 0
        self.identifies = 0
        self.resumes = 0

    def _make_guild(self, index: int, guild_id: int, texts: list[str], voices: list[str]) -> Guild:
        guild = Guild(index, guild_id, f"Guild {index}", owner_id=self.owner.id)
        guild.roles[guild_id] = Role(guild_id, "@everyone", permissions.EVERYONE_DEFAULT, 0)
        bot_role = Role(
            self.ids.next(), self.bot.name, permissions.EVERYONE_DEFAULT, 1, managed=True
        )
        guild.roles[bot_role.id] = bot_role
        for position, name in enumerate(texts):
            channel = Channel(self.ids.next(), guild_id, name, TEXT, position)
            guild.channels[channel.id] = channel
        for position, name in enumerate(voices):
            channel = Channel(self.ids.next(), guild_id, name, VOICE, position)
            guild.channels[channel.id] = channel
        guild.members[self.bot.id] = Member(self.bot, [bot_role.id], iso_now())
        guild.members[self.owner.id] = Member(self.owner, [], iso_now())
        return guild

    # -- lookups -------------------------------------------------------------------------

    def guild(self, index: int) -> Guild:
        if not 1 <= index <= len(self.guilds):
            raise IndexError(f"guild index {index} out of 1..{len(self.guilds)}")
        return self.guilds[index - 1]

    def guild_by_id(self, guild_id: int) -> Guild | None:
        return next((g for g in self.guilds if g.id == guild_id), None)

    def channel(self, channel_id: int) -> Channel | None:
        for guild in self.guilds:
            if channel_id in guild.channels:
                return guild.channels[channel_id]
        return None

    def user_named(self, name: str) -> User:
        user = next((u for u in self.users.values() if u.name == name and not u.bot), None)
        if user is None:
            user = User(self.ids.next(), name)
            self.users[user.id] = user
        return user

    def role(self, guild: Guild, name: str, *, permissions: int = 0) -> Role:
        role = guild.role_named(name)
        if role is None:
            role = Role(self.ids.next(), name, permissions, len(guild.roles))
            guild.roles[role.id] = role
        elif role.permissions != permissions and permissions:
            raise ValueError(f"role {name!r} exists with other permissions")
        return role

    # -- messages -------------------------------------------------------------------------

    def new_message(
        self,
        channel: Channel,
        payload: JSON,
        *,
        author_id: int,
        interaction_id: int | None = None,
        extra_flags: int = 0,
        attachments: tuple[str, ...] = (),
    ) -> Message:
        raw_components = tuple(payload.get("components") or ())
        message = Message(
            id=self.ids.next(),
            guild_id=channel.guild_id,
            channel_id=channel.id,
            author_id=author_id,
            content=payload.get("content") or "",
            embeds=tuple(Embed.from_json(e) for e in payload.get("embeds") or ()),
            components=flatten_components(raw_components),
            flags=int(payload.get("flags") or 0) | extra_flags,
            created_at=trio.current_time(),
            interaction_id=interaction_id,
            attachments=attachments,
            raw_components=raw_components,
            pings=pings_of(payload.get("content") or "", payload.get("allowed_mentions")),
        )
        self.messages[message.id] = message
        self.channel_messages.setdefault(channel.id, []).append(message.id)
        self.changes.notify()
        return message

    def edit_message(self, message_id: int, payload: JSON, *, clear_flags: int = 0) -> Message:
        old = self.messages[message_id]
        changes: dict[str, Any] = {
            "edits": old.edits + 1,
            "edited_at": trio.current_time(),
            "flags": old.flags & ~clear_flags,
        }
        if "content" in payload:
            changes["content"] = payload["content"] or ""
            changes["pings"] = pings_of(changes["content"], payload.get("allowed_mentions"))
        if "embeds" in payload:
            changes["embeds"] = tuple(Embed.from_json(e) for e in payload["embeds"] or ())
        if "components" in payload:
            raw = tuple(payload["components"] or ())
            changes["raw_components"] = raw
            changes["components"] = flatten_components(raw)
        new = attrs.evolve(old, **changes)
        self.messages[message_id] = new
        self.changes.notify()
        return new

    def delete_message(self, message_id: int) -> Message:
        message = attrs.evolve(self.messages[message_id], deleted=True)
        self.messages[message_id] = message
        self.changes.notify()
        return message

    # -- records --------------------------------------------------------------------------

    def reject(self, where: str, status: int, reason: str) -> None:
        self.rejected.append(RejectedRequest(trio.current_time(), where, status, reason))
        self.changes.notify()
