"""Frozen values the fake Discord hands to tests: what the bot did, as Discord saw it.

Times (`at`, `created_at`, ...) are `trio.current_time()` readings taken when the fake received
or sent the thing; compare them with other `trio.current_time()` readings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

JSON = dict[str, Any]

EPHEMERAL = 1 << 6
LOADING = 1 << 7


@attrs.frozen
class GuildInfo:
    """One guild of the fake, with its channels' ids by name."""

    index: int
    id: int
    name: str
    text_channels: Mapping[str, int]
    voice_channels: Mapping[str, int]

    def channel_id(self, name: str) -> int:
        if name in self.text_channels:
            return self.text_channels[name]
        if name in self.voice_channels:
            return self.voice_channels[name]
        known = [*self.text_channels, *self.voice_channels]
        raise KeyError(f"guild {self.index} has no channel {name!r}; it has {known}")


@attrs.frozen
class Component:
    """An interactive component (button or select), wherever it sits in the message layout."""

    type: int
    custom_id: str | None
    label: str | None
    style: int | None = None
    url: str | None = None
    disabled: bool = False
    emoji: str | None = None
    options: tuple[str, ...] = ()  # a select's option values

    @property
    def is_button(self) -> bool:
        return self.type == 2


@attrs.frozen
class EmbedField:
    name: str
    value: str
    inline: bool


@attrs.frozen
class Embed:
    title: str | None
    description: str | None
    url: str | None
    color: int | None
    fields: tuple[EmbedField, ...]
    footer: str | None
    author: str | None
    image: str | None
    thumbnail: str | None
    raw: JSON = attrs.field(eq=False, repr=False)

    @classmethod
    def from_json(cls, data: JSON) -> Embed:
        def text_of(key: str, inner: str) -> str | None:
            part = data.get(key)
            return part.get(inner) if isinstance(part, dict) else None

        return cls(
            title=data.get("title"),
            description=data.get("description"),
            url=data.get("url"),
            color=data.get("color"),
            fields=tuple(
                EmbedField(str(f.get("name", "")), str(f.get("value", "")), bool(f.get("inline")))
                for f in data.get("fields", [])
            ),
            footer=text_of("footer", "text"),
            author=text_of("author", "name"),
            image=text_of("image", "url"),
            thumbnail=text_of("thumbnail", "url"),
            raw=data,
        )


@attrs.frozen
class Message:
    """A message the bot made (in a channel, or as an interaction answer), latest version."""

    id: int
    guild_id: int
    channel_id: int
    author_id: int
    content: str
    embeds: tuple[Embed, ...]
    components: tuple[Component, ...]
    flags: int
    created_at: float
    interaction_id: int | None = None
    edited_at: float | None = None
    edits: int = 0
    deleted: bool = False
    attachments: tuple[str, ...] = ()
    raw_components: tuple[JSON, ...] = attrs.field(default=(), eq=False, repr=False)
    pings: tuple[str, ...] = ()
    """The mentions in `content` that Discord would notify, as written (`@everyone`, `@here`,
    `<@id>`, `<@&id>`), after the message's `allowed_mentions` (absent: every kind). Mentions
    in embeds never notify."""

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        """A deferred answer's "thinking..." placeholder, not yet replaced."""
        return bool(self.flags & LOADING)

    @property
    def buttons(self) -> tuple[Component, ...]:
        return tuple(c for c in self.components if c.is_button)

    def component(self, custom_id: str) -> Component:
        for component in self.components:
            if component.custom_id == custom_id:
                return component
        known = [(c.custom_id, c.label) for c in self.components]
        raise LookupError(f"message {self.id} has no component {custom_id!r}; it has {known}")


@attrs.frozen
class Callback:
    """The bot's first answer to an interaction (POST /interactions/{id}/{token}/callback)."""

    type: int  # 4 message, 5 deferred, 6 deferred update, 7 update message, 8 choices, 9 modal
    at: float
    data: JSON = attrs.field(eq=False, repr=False)

    @property
    def deferred(self) -> bool:
        return self.type in (5, 6)


@attrs.frozen
class Choice:
    name: str
    value: str | int | float


@attrs.frozen
class CommandOption:
    name: str
    type: int  # 1 subcommand, 2 group, 3 string, 4 integer, 5 boolean, 10 number, ...
    description: str
    required: bool
    choices: tuple[Choice, ...]
    autocomplete: bool
    min_value: float | None
    max_value: float | None
    min_length: int | None
    max_length: int | None
    options: tuple[CommandOption, ...]

    @classmethod
    def from_json(cls, data: JSON) -> CommandOption:
        return cls(
            name=data["name"],
            type=int(data["type"]),
            description=data.get("description", ""),
            required=bool(data.get("required", False)),
            choices=tuple(Choice(c["name"], c["value"]) for c in data.get("choices") or ()),
            autocomplete=bool(data.get("autocomplete", False)),
            min_value=data.get("min_value"),
            max_value=data.get("max_value"),
            min_length=data.get("min_length"),
            max_length=data.get("max_length"),
            options=tuple(cls.from_json(o) for o in data.get("options") or ()),
        )


@attrs.frozen
class AppCommand:
    """A command the bot registered (global when `guild_id` is None)."""

    id: int
    name: str
    description: str
    type: int
    options: tuple[CommandOption, ...]
    guild_id: int | None
    default_member_permissions: str | None
    raw: JSON = attrs.field(eq=False, repr=False)

    def option(self, name: str) -> CommandOption:
        for option in self.options:
            if option.name == name:
                return option
        raise LookupError(f"/{self.name} has no option {name!r}")


@attrs.frozen
class CommandSync:
    at: float
    guild_id: int | None
    names: tuple[str, ...]


@attrs.frozen
class RtpPacket:
    """One decrypted RTP packet as it arrived on the fake's UDP voice endpoint."""

    at: float
    guild_id: int
    ssrc: int
    sequence: int
    timestamp: int
    opus: bytes = attrs.field(repr=False)


@attrs.frozen
class SpeakingEvent:
    at: float
    speaking: int  # discord.SpeakingState bits: 0 none, 1 voice, 2 soundshare, 4 priority
    ssrc: int


@attrs.frozen
class VoiceClose:
    """How one voice websocket ended: `by` is "client", "server" or "lost" (no close frame)."""

    at: float
    code: int | None
    by: str


@attrs.frozen
class VoiceStatus:
    """The bot's voice in one guild, as Discord sees it."""

    guild_id: int
    channel: str | None  # the voice channel the bot is in, by the gateway's voice state
    channel_id: int | None
    websocket_open: bool
    connected: bool  # voice websocket open and the session description (key) sent
    sessions_opened: int  # voice websockets that identified
    sessions_closed: int
    closes: tuple[VoiceClose, ...]
    speaking: tuple[SpeakingEvent, ...]
    packets: int
    udp_dropped: int
    undecryptable: int
    mode: str | None
    refused: int = 0  # voice IDENTIFYs and RESUMEs closed by the `refuse_voice` fault


@attrs.frozen
class RejectedRequest:
    """A request the fake refused, the way Discord would have (4xx), with the reason."""

    at: float
    where: str
    status: int
    reason: str


@attrs.frozen
class Statistics:
    identifies: int
    resumes: int
    gateway_connections: int  # main gateway websockets open now
    voice_websockets: int  # voice websockets open now
    interactions: int
    rest_requests: int
    rejected_requests: int
