"""Discord permission bits (names as discord.py's `Permissions` attributes) and how a member's
guild-level permissions add up. Channel overwrites are not modelled: every channel is open.
"""

from __future__ import annotations

from collections.abc import Iterable

BITS: dict[str, int] = {
    "create_instant_invite": 1 << 0,
    "kick_members": 1 << 1,
    "ban_members": 1 << 2,
    "administrator": 1 << 3,
    "manage_channels": 1 << 4,
    "manage_guild": 1 << 5,
    "add_reactions": 1 << 6,
    "view_audit_log": 1 << 7,
    "priority_speaker": 1 << 8,
    "stream": 1 << 9,
    "view_channel": 1 << 10,
    "send_messages": 1 << 11,
    "send_tts_messages": 1 << 12,
    "manage_messages": 1 << 13,
    "embed_links": 1 << 14,
    "attach_files": 1 << 15,
    "read_message_history": 1 << 16,
    "mention_everyone": 1 << 17,
    "external_emojis": 1 << 18,
    "view_guild_insights": 1 << 19,
    "connect": 1 << 20,
    "speak": 1 << 21,
    "mute_members": 1 << 22,
    "deafen_members": 1 << 23,
    "move_members": 1 << 24,
    "use_voice_activation": 1 << 25,
    "change_nickname": 1 << 26,
    "manage_nicknames": 1 << 27,
    "manage_roles": 1 << 28,
    "manage_webhooks": 1 << 29,
    "manage_expressions": 1 << 30,
    "use_application_commands": 1 << 31,
    "request_to_speak": 1 << 32,
    "manage_events": 1 << 33,
    "manage_threads": 1 << 34,
    "create_public_threads": 1 << 35,
    "create_private_threads": 1 << 36,
    "external_stickers": 1 << 37,
    "send_messages_in_threads": 1 << 38,
    "use_embedded_activities": 1 << 39,
    "moderate_members": 1 << 40,
}

ALL = 0
for _bit in BITS.values():
    ALL |= _bit

# What @everyone may do in a fresh guild (a subset of Discord's default, enough for a music bot).
EVERYONE_DEFAULT = (
    BITS["create_instant_invite"]
    | BITS["add_reactions"]
    | BITS["stream"]
    | BITS["view_channel"]
    | BITS["send_messages"]
    | BITS["embed_links"]
    | BITS["attach_files"]
    | BITS["read_message_history"]
    | BITS["mention_everyone"]
    | BITS["external_emojis"]
    | BITS["connect"]
    | BITS["speak"]
    | BITS["use_voice_activation"]
    | BITS["change_nickname"]
    | BITS["use_application_commands"]
    | BITS["send_messages_in_threads"]
)


def from_names(names: Iterable[str]) -> int:
    """OR together permission names, e.g. `from_names(["manage_guild"])`."""
    value = 0
    for name in names:
        try:
            value |= BITS[name]
        except KeyError:
            raise ValueError(f"unknown permission {name!r}; known: {', '.join(BITS)}") from None
    return value


def effective(role_permissions: Iterable[int], *, owner: bool = False) -> int:
    """Guild-level permissions from @everyone's and the member's roles' permissions."""
    value = 0
    for permissions in role_permissions:
        value |= permissions
    if owner or value & BITS["administrator"]:
        return ALL
    return value
