"""JSON payloads in Discord's API v10 shapes, built from the model (pure functions).

Snowflakes are strings and permissions are decimal strings, as on the real wire.
"""

from __future__ import annotations

import datetime

from musicbot.testing.loopback.records import JSON, Message
from musicbot.testing.loopback.snowflakes import DISCORD_EPOCH_MS
from musicbot.testing.loopback.state import (
    TEXT,
    Channel,
    Guild,
    InteractionModel,
    Member,
    Role,
    State,
    User,
    VoiceState,
    iso_now,
)

ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024


def timestamp_of(snowflake: int) -> str:
    ms = (snowflake >> 22) + DISCORD_EPOCH_MS
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat()


def user(u: User) -> JSON:
    return {
        "id": str(u.id),
        "username": u.name,
        "discriminator": "0",
        "global_name": None if u.bot else u.name.capitalize(),
        "avatar": None,
        "bot": u.bot,
        "system": False,
        "public_flags": 0,
    }


def me(state: State) -> JSON:
    """GET /users/@me"""
    return {
        **user(state.bot),
        "verified": True,
        "mfa_enabled": False,
        "flags": 0,
        "locale": "en-US",
        "email": None,
    }


def application(state: State) -> JSON:
    """GET /oauth2/applications/@me"""
    return {
        "id": str(state.application_id),
        "name": state.bot.name,
        "description": "A fake Discord's bot",
        "icon": None,
        "bot_public": False,
        "bot_require_code_grant": False,
        "owner": user(state.owner),
        "team": None,
        "verify_key": "0" * 64,
        "flags": 0,
        "interactions_endpoint_url": None,
        "redirect_uris": [],
        "tags": [],
        "bot": user(state.bot),
    }


def role(r: Role) -> JSON:
    return {
        "id": str(r.id),
        "name": r.name,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "position": r.position,
        "permissions": str(r.permissions),
        "managed": r.managed,
        "mentionable": False,
        "flags": 0,
    }


def channel(c: Channel) -> JSON:
    data: JSON = {
        "id": str(c.id),
        "type": c.type,
        "guild_id": str(c.guild_id),
        "name": c.name,
        "position": c.position,
        "permission_overwrites": [],
        "parent_id": None,
        "nsfw": False,
        "flags": 0,
    }
    if c.type == TEXT:
        data.update(topic=None, last_message_id=None, rate_limit_per_user=0)
    else:
        data.update(bitrate=64000, user_limit=0, rtc_region=None, last_message_id=None)
    return data


def member(guild: Guild, m: Member, *, with_permissions: bool = False) -> JSON:
    data: JSON = {
        "user": user(m.user),
        "nick": None,
        "avatar": None,
        "roles": [str(r) for r in m.role_ids],
        "joined_at": m.joined_at,
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
        "communication_disabled_until": None,
    }
    if with_permissions:
        data["permissions"] = str(guild.permissions_of(m.user.id))
    return data


def voice_state(guild: Guild, vs: VoiceState, *, in_guild_create: bool = False) -> JSON:
    data: JSON = {
        "user_id": str(vs.user_id),
        "channel_id": str(vs.channel_id),
        "session_id": vs.session_id,
        "deaf": False,
        "mute": False,
        "self_deaf": vs.self_deaf,
        "self_mute": vs.self_mute,
        "self_video": False,
        "self_stream": False,
        "suppress": False,
        "request_to_speak_timestamp": None,
    }
    if not in_guild_create:
        data["guild_id"] = str(guild.id)
        data["member"] = member(guild, guild.members[vs.user_id])
    return data


def left_voice(guild: Guild, user_id: int, session_id: str) -> JSON:
    """VOICE_STATE_UPDATE for someone who left voice."""
    return {
        "guild_id": str(guild.id),
        "channel_id": None,
        "user_id": str(user_id),
        "session_id": session_id,
        "member": member(guild, guild.members[user_id]),
        "deaf": False,
        "mute": False,
        "self_deaf": False,
        "self_mute": False,
        "self_video": False,
        "self_stream": False,
        "suppress": False,
        "request_to_speak_timestamp": None,
    }


def guild_base(guild: Guild) -> JSON:
    return {
        "id": str(guild.id),
        "name": guild.name,
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "owner_id": str(guild.owner_id),
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "roles": [role(r) for r in guild.roles.values()],
        "emojis": [],
        "stickers": [],
        "features": [],
        "mfa_level": 0,
        "system_channel_id": None,
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "safety_alerts_channel_id": None,
        "preferred_locale": "en-US",
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "premium_progress_bar_enabled": False,
        "nsfw_level": 0,
        "vanity_url_code": None,
        "description": None,
        "banner": None,
        "max_members": 500000,
        "max_video_channel_users": 25,
    }


def guild_create(guild: Guild, *, all_members: bool) -> JSON:
    """GUILD_CREATE. Without the presences intent Discord sends only the bot and the members
    in voice, and so does the fake."""
    in_voice = set(guild.voice_states)
    members = [
        member(guild, m)
        for m in guild.members.values()
        if all_members or m.user.bot or m.user.id in in_voice
    ]
    return {
        **guild_base(guild),
        "joined_at": next(m.joined_at for m in guild.members.values() if m.user.bot),
        "large": False,
        "unavailable": False,
        "member_count": len(guild.members),
        "voice_states": [
            voice_state(guild, vs, in_guild_create=True) for vs in guild.voice_states.values()
        ],
        "members": members,
        "channels": [channel(c) for c in guild.channels.values()],
        "threads": [],
        "presences": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
    }


def message(state: State, m: Message) -> JSON:
    interaction = state.interactions.get(m.interaction_id) if m.interaction_id else None
    data: JSON = {
        "id": str(m.id),
        "channel_id": str(m.channel_id),
        "guild_id": str(m.guild_id),
        "author": user(state.bot),
        "content": m.content,
        "timestamp": timestamp_of(m.id),
        "edited_timestamp": None if m.edited_at is None else iso_now(),
        "tts": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": [
            {
                "id": str(m.id + index + 1),
                "filename": name,
                "size": 0,
                "url": f"https://cdn.invalid/{m.id}/{name}",
                "proxy_url": f"https://cdn.invalid/{m.id}/{name}",
            }
            for index, name in enumerate(m.attachments)
        ],
        "embeds": [{"type": "rich", **e.raw} for e in m.embeds],
        "components": list(m.raw_components),
        "pinned": False,
        "type": 0,
        "flags": m.flags,
    }
    if interaction is not None:
        guild = state.guild_by_id(interaction.guild_id)
        invoker = state.users[interaction.user_id]
        data["type"] = 20 if interaction.type == 2 else 0
        data["webhook_id"] = str(state.application_id)
        data["application_id"] = str(state.application_id)
        data["interaction_metadata"] = {
            "id": str(interaction.id),
            "type": interaction.type,
            "user": user(invoker),
            "authorizing_integration_owners": {"0": str(guild.id if guild else 0)},
            **({"name": interaction.name} if interaction.type == 2 else {}),
        }
    return data


def interaction(
    state: State,
    model: InteractionModel,
    *,
    data: JSON,
    message_json: JSON | None = None,
) -> JSON:
    guild = state.guild_by_id(model.guild_id)
    assert guild is not None
    chan = guild.channels[model.channel_id]
    payload: JSON = {
        "id": str(model.id),
        "application_id": str(state.application_id),
        "type": model.type,
        "data": data,
        "guild_id": str(guild.id),
        "guild": {"id": str(guild.id), "locale": "en-US", "features": []},
        "channel_id": str(chan.id),
        "channel": {**channel(chan), "permissions": str(guild.permissions_of(model.user_id))},
        "member": member(guild, guild.members[model.user_id], with_permissions=True),
        "token": model.token,
        "version": 1,
        "app_permissions": str(guild.permissions_of(state.bot.id)),
        "locale": "en-US",
        "guild_locale": "en-US",
        "entitlements": [],
        "entitlement_sku_ids": [],
        "authorizing_integration_owners": {"0": str(guild.id)},
        "context": 0,
        "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
    }
    if message_json is not None:
        payload["message"] = message_json
    return payload


def error(code: int, message: str, reasons: list[str] | None = None) -> JSON:
    data: JSON = {"code": code, "message": message}
    if reasons:
        data["errors"] = {"_errors": [{"code": "INVALID", "message": reason} for reason in reasons]}
    return data
