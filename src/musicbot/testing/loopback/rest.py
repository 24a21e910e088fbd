"""The REST API under /api/v10 (asyncio side, aiohttp handlers).

Bot routes check `Authorization: Bot <token>`; interaction callbacks and interaction webhooks
are authorised by their token, as on Discord. Every JSON answer carries exactly
`Content-Type: application/json` (discord.py treats `...; charset=utf-8` as text). Requests the fake
refuses are answered the way Discord would (4xx with a JSON error) and kept in `State.rejected`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from aiohttp import web

from musicbot.testing.loopback import commands, limits, payloads
from musicbot.testing.loopback.gateway import Gateway
from musicbot.testing.loopback.records import (
    EPHEMERAL,
    JSON,
    LOADING,
    Callback,
    Choice,
    CommandSync,
    Message,
)
from musicbot.testing.loopback.state import TEXT, Channel, Guild, InteractionModel, State

API = "/api/v10"

Handler = Callable[[web.Request], Awaitable[web.Response]]

# Callback types each interaction type accepts: command, component, autocomplete.
ALLOWED_CALLBACKS = {2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 4: {8}}


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str, *reasons: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.reasons = status, code, message, list(reasons)


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json"
    )


def no_content() -> web.Response:
    return web.Response(status=204)


class Rest:
    def __init__(self, state: State, gateway: Gateway) -> None:
        self._state = state
        self._gateway = gateway

    def add_routes(self, app: web.Application) -> None:
        bot = self._bot_route
        open_ = self._open_route
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/gateway", open_(self.get_gateway)),
            ("GET", "/gateway/bot", bot(self.get_gateway_bot)),
            ("GET", "/users/@me", bot(self.get_me)),
            ("GET", "/oauth2/applications/@me", bot(self.get_application)),
            ("GET", "/applications/@me", bot(self.get_application)),
            ("GET", "/applications/{app}/commands", bot(self.get_commands)),
            ("PUT", "/applications/{app}/commands", bot(self.put_commands)),
            ("GET", "/applications/{app}/guilds/{guild}/commands", bot(self.get_commands)),
            ("PUT", "/applications/{app}/guilds/{guild}/commands", bot(self.put_commands)),
            ("GET", "/guilds/{guild}", bot(self.get_guild)),
            ("GET", "/guilds/{guild}/channels", bot(self.get_guild_channels)),
            ("GET", "/guilds/{guild}/roles", bot(self.get_guild_roles)),
            ("GET", "/guilds/{guild}/members/{user}", bot(self.get_guild_member)),
            ("GET", "/channels/{channel}", bot(self.get_channel)),
            ("POST", "/channels/{channel}/typing", bot(self.post_typing)),
            ("GET", "/channels/{channel}/messages", bot(self.get_messages)),
            ("POST", "/channels/{channel}/messages", bot(self.post_message)),
            ("GET", "/channels/{channel}/messages/{message}", bot(self.get_message)),
            ("PATCH", "/channels/{channel}/messages/{message}", bot(self.patch_message)),
            ("DELETE", "/channels/{channel}/messages/{message}", bot(self.delete_message)),
            ("POST", "/interactions/{id}/{token}/callback", open_(self.post_callback)),
            ("POST", "/webhooks/{app}/{token}", open_(self.post_followup)),
            ("GET", "/webhooks/{app}/{token}/messages/{message}", open_(self.get_webhook_message)),
            (
                "PATCH",
                "/webhooks/{app}/{token}/messages/{message}",
                open_(self.patch_webhook_message),
            ),
            (
                "DELETE",
                "/webhooks/{app}/{token}/messages/{message}",
                open_(self.delete_webhook_message),
            ),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, API + path, handler)
        app.router.add_route("*", API + "/{tail:.*}", open_(self.unknown))

    # -- plumbing -----------------------------------------------------------------------------

    def _open_route(self, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.Response:
            self._state.rest_requests += 1
            try:
                return await handler(request)
            except ApiError as error:
                where = f"{request.method} {request.path}"
                self._state.reject(where, error.status, "; ".join([error.message, *error.reasons]))
                return json_response(
                    payloads.error(error.code, error.message, error.reasons), error.status
                )
            except Exception as exc:  # a bug of the fake: show it in `errors`
                where = f"{request.method} {request.path}"
                self._state.reject(where, 500, f"fake Discord failed: {exc!r}")
                return json_response(payloads.error(0, "500: Internal Server Error"), 500)

        return wrapped

    def _bot_route(self, handler: Handler) -> Handler:
        async def authorised(request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != f"Bot {self._state.token}":
                raise ApiError(401, 0, "401: Unauthorized")
            return await handler(request)

        return self._open_route(authorised)

    async def unknown(self, request: web.Request) -> web.Response:
        raise ApiError(404, 0, "404: Not Found", "route not served by the fake Discord")

    @staticmethod
    async def _body(request: web.Request) -> tuple[Any, tuple[str, ...]]:
        """The JSON body, from a plain JSON request or a multipart one (payload_json + files)."""
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            files = tuple(
                str(getattr(value, "filename", ""))
                for key, value in form.items()
                if key != "payload_json"
            )
            raw = form.get("payload_json")
            return (json.loads(str(raw)) if raw is not None else {}), files
        if not request.can_read_body:
            return {}, ()
        return await request.json(), ()

    async def _object(self, request: web.Request) -> tuple[JSON, tuple[str, ...]]:
        """A body that must be a JSON object, and the names of the files sent with it."""
        body, files = await self._body(request)
        if not isinstance(body, dict):
            raise ApiError(400, 50109, "The request body contains invalid JSON.")
        return body, files

    def _int(self, request: web.Request, key: str) -> int:
        try:
            return int(request.match_info[key])
        except ValueError:
            raise ApiError(404, 0, f"404: invalid {key}") from None

    def _text_channel(self, request: web.Request) -> Channel:
        channel = self._state.channel(self._int(request, "channel"))
        if channel is None:
            raise ApiError(404, 10003, "Unknown Channel")
        return channel

    def _check_message(self, payload: JSON, *, creating: bool, files: int = 0) -> None:
        problems = limits.message_problems(payload, creating=creating, attachments=files)
        if problems == ["Cannot send an empty message"]:
            raise ApiError(400, 50006, "Cannot send an empty message")
        if problems:
            raise ApiError(400, 50035, "Invalid Form Body", *problems)

    def _announce(self, message: Message, event: str) -> None:
        """MESSAGE_CREATE/UPDATE/DELETE for a message everyone in the channel sees."""
        if message.ephemeral:
            return
        if event == "MESSAGE_DELETE":
            data: JSON = {
                "id": str(message.id),
                "channel_id": str(message.channel_id),
                "guild_id": str(message.guild_id),
            }
        else:
            data = payloads.message(self._state, message)
            guild = self._state.guild_by_id(message.guild_id)
            if guild is not None:
                bot_member = payloads.member(guild, guild.members[self._state.bot.id])
                data["member"] = {k: v for k, v in bot_member.items() if k != "user"}
        self._gateway.dispatch_guild(message.guild_id, event, data)

    # -- login and gateway ----------------------------------------------------------------------

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": f"ws://{request.host}/"})

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        limit = {
            "total": 1000,
            "remaining": 1000 - self._state.identifies,
            "reset_after": 86_400_000,
            "max_concurrency": self._gateway.identify_concurrency,
        }
        return json_response(
            {
                "url": f"ws://{request.host}/",
                "shards": self._gateway.recommended_shards,
                "session_start_limit": limit,
            }
        )

    async def get_me(self, request: web.Request) -> web.Response:
        return json_response(payloads.me(self._state))

    async def get_application(self, request: web.Request) -> web.Response:
        return json_response(payloads.application(self._state))

    # -- application commands --------------------------------------------------------------------

    def _command_scope(self, request: web.Request) -> int | None:
        if self._int(request, "app") != self._state.application_id:
            raise ApiError(403, 50001, "Missing Access", "commands of another application")
        if "guild" not in request.match_info:
            return None
        guild = self._state.guild_by_id(self._int(request, "guild"))
        if guild is None:
            raise ApiError(403, 50001, "Missing Access", "the bot is not in that guild")
        return guild.id

    async def get_commands(self, request: web.Request) -> web.Response:
        state = self._state
        guild_id = self._command_scope(request)
        registered = (
            state.global_commands if guild_id is None else state.guild_commands.get(guild_id, {})
        )
        return json_response(
            [
                commands.registered_json(c, application_id=state.application_id)
                for c in registered.values()
            ]
        )

    async def put_commands(self, request: web.Request) -> web.Response:
        state = self._state
        guild_id = self._command_scope(request)
        body, _ = await self._body(request)
        existing = (
            state.global_commands if guild_id is None else state.guild_commands.get(guild_id, {})
        )
        raw_list = body if isinstance(body, list) else []
        ids = [
            existing[c["name"]].id if c.get("name") in existing else state.ids.next()
            for c in raw_list
        ]
        try:
            synced = commands.parse_sync(body, guild_id=guild_id, ids=ids)
        except ValueError as exc:
            raise ApiError(400, 50035, "Invalid Form Body", str(exc)) from None
        table = {c.name: c for c in synced}
        if guild_id is None:
            state.global_commands = table
        else:
            state.guild_commands[guild_id] = table
        state.command_syncs.append(CommandSync(trio.current_time(), guild_id, tuple(table)))
        state.changes.notify()
        return json_response(
            [commands.registered_json(c, application_id=state.application_id) for c in synced]
        )

    # -- guilds and channels ----------------------------------------------------------------------

    def _guild(self, request: web.Request) -> Guild:
        guild = self._state.guild_by_id(self._int(request, "guild"))
        if guild is None:
            raise ApiError(404, 10004, "Unknown Guild")
        return guild

    async def get_guild(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        return json_response(
            {**payloads.guild_base(guild), "approximate_member_count": len(guild.members)}
        )

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        return json_response([payloads.channel(c) for c in self._guild(request).channels.values()])

    async def get_guild_roles(self, request: web.Request) -> web.Response:
        return json_response([payloads.role(r) for r in self._guild(request).roles.values()])

    async def get_guild_member(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        member = guild.members.get(self._int(request, "user"))
        if member is None:
            raise ApiError(404, 10007, "Unknown Member")
        return json_response(payloads.member(guild, member))

    async def get_channel(self, request: web.Request) -> web.Response:
        return json_response(payloads.channel(self._text_channel(request)))

    async def post_typing(self, request: web.Request) -> web.Response:
        self._text_channel(request)
        return no_content()

    # -- channel messages -------------------------------------------------------------------------

    def _channel_message(self, request: web.Request, channel: Channel) -> Message:
        message = self._state.messages.get(self._int(request, "message"))
        if (
            message is None
            or message.deleted
            or message.channel_id != channel.id
            or message.ephemeral
        ):
            raise ApiError(404, 10008, "Unknown Message")
        return message

    async def get_messages(self, request: web.Request) -> web.Response:
        state = self._state
        channel = self._text_channel(request)
        limit = int(request.query.get("limit", "50"))
        before = int(request.query.get("before", "0")) or None
        ids = [
            i for i in state.channel_messages.get(channel.id, []) if before is None or i < before
        ]
        visible = [state.messages[i] for i in reversed(ids) if not state.messages[i].deleted]
        visible = [m for m in visible if not m.ephemeral][:limit]
        return json_response([payloads.message(state, m) for m in visible])

    async def post_message(self, request: web.Request) -> web.Response:
        state = self._state
        channel = self._text_channel(request)
        guild = state.guild_by_id(channel.guild_id)
        assert guild is not None
        if channel.type != TEXT:
            raise ApiError(400, 50008, "Cannot send messages in a non-text channel")
        allowed = guild.permissions_of(state.bot.id)
        need = 1 << 10 | 1 << 11  # view_channel, send_messages
        if allowed & need != need:
            raise ApiError(403, 50013, "Missing Permissions")
        body, files = await self._object(request)
        self._check_message(body, creating=True, files=len(files))
        message = state.new_message(channel, body, author_id=state.bot.id, attachments=files)
        self._announce(message, "MESSAGE_CREATE")
        return json_response(payloads.message(state, message))

    async def get_message(self, request: web.Request) -> web.Response:
        channel = self._text_channel(request)
        return json_response(payloads.message(self._state, self._channel_message(request, channel)))

    async def patch_message(self, request: web.Request) -> web.Response:
        state = self._state
        channel = self._text_channel(request)
        message = self._channel_message(request, channel)
        if message.author_id != state.bot.id:
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        body, _ = await self._object(request)
        self._check_message(body, creating=False)
        edited = state.edit_message(message.id, body)
        self._announce(edited, "MESSAGE_UPDATE")
        return json_response(payloads.message(state, edited))

    async def delete_message(self, request: web.Request) -> web.Response:
        channel = self._text_channel(request)
        message = self._channel_message(request, channel)
        self._announce(self._state.delete_message(message.id), "MESSAGE_DELETE")
        return no_content()

    # -- interactions ----------------------------------------------------------------------------

    async def post_callback(self, request: web.Request) -> web.Response:
        state = self._state
        model = state.interactions.get(self._int(request, "id"))
        if model is None or model.token != request.match_info["token"]:
            raise ApiError(404, 10062, "Unknown interaction")
        now = trio.current_time()
        if model.callback is not None:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        if now > model.answer_deadline:
            late = now - model.created_at
            raise ApiError(
                404, 10062, "Unknown interaction", f"answered {late:.2f} s after it was created"
            )
        body, files = await self._object(request)
        kind = int(body.get("type", 0))
        data: JSON = body.get("data") or {}
        if kind not in ALLOWED_CALLBACKS[model.type]:
            raise ApiError(
                400,
                50035,
                "Invalid Form Body",
                f"callback type {kind} for interaction type {model.type}",
            )
        channel = state.channel(model.channel_id)
        assert channel is not None
        message: Message | None = None
        if kind == 4:
            self._check_message(data, creating=True, files=len(files))
            message = state.new_message(
                channel, data, author_id=state.bot.id, interaction_id=model.id, attachments=files
            )
            model.original_message_id = message.id
            self._announce(message, "MESSAGE_CREATE")
        elif kind == 5:
            placeholder = {"content": "", "flags": int(data.get("flags") or 0) & EPHEMERAL}
            message = state.new_message(
                channel,
                placeholder,
                author_id=state.bot.id,
                interaction_id=model.id,
                extra_flags=LOADING,
            )
            model.original_message_id = message.id
            self._announce(message, "MESSAGE_CREATE")
        elif kind in (6, 7):
            assert model.component_message_id is not None
            model.original_message_id = model.component_message_id
            message = state.messages[model.component_message_id]
            if kind == 7:
                self._check_message(data, creating=False)
                message = state.edit_message(message.id, data)
                self._announce(message, "MESSAGE_UPDATE")
        elif kind == 8:
            choices = data.get("choices") or []
            if len(choices) > 25:
                raise ApiError(
                    400, 50035, "Invalid Form Body", f"{len(choices)} choices, more than 25"
                )
            model.choices = tuple(Choice(str(c["name"]), c["value"]) for c in choices)
        model.callback = Callback(kind, now, data)
        state.changes.notify()
        if request.query.get("with_response") not in ("1", "true", "True"):
            return no_content()
        resource: JSON = {"type": kind}
        if message is not None and kind != 6:
            resource["message"] = payloads.message(state, message)
        return json_response(
            {
                "interaction": {
                    "id": str(model.id),
                    "type": model.type,
                    "activity_instance_id": None,
                    "response_message_id": None if message is None else str(message.id),
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": bool(message and message.ephemeral),
                },
                "resource": resource,
            }
        )

    def _interaction_of_webhook(self, request: web.Request) -> InteractionModel:
        model = self._state.interactions_by_token.get(request.match_info["token"])
        if model is None or self._int(request, "app") != self._state.application_id:
            raise ApiError(404, 10015, "Unknown Webhook")
        if model.callback is None:
            raise ApiError(
                404, 10015, "Unknown Webhook", "the interaction has not been answered yet"
            )
        return model

    def _webhook_target(self, request: web.Request, model: InteractionModel) -> Message:
        key = request.match_info["message"]
        if key == "@original":
            target = model.original_message_id
        else:
            target = self._int(request, "message")
            if target != model.original_message_id and target not in model.followup_ids:
                target = None
        message = None if target is None else self._state.messages.get(target)
        if message is None or message.deleted:
            raise ApiError(404, 10008, "Unknown Message")
        return message

    async def post_followup(self, request: web.Request) -> web.Response:
        state = self._state
        model = self._interaction_of_webhook(request)
        body, files = await self._object(request)
        self._check_message(body, creating=True, files=len(files))
        original = state.messages.get(model.original_message_id or 0)
        if (
            original is not None
            and original.loading
            and not original.deleted
            and not model.followup_ids
        ):
            # The first follow-up after a deferred answer replaces the "thinking..." message;
            # once that placeholder is deleted, a follow-up is a message of its own.
            message = state.edit_message(original.id, body, clear_flags=LOADING)
            self._announce(message, "MESSAGE_UPDATE")
        else:
            channel = state.channel(model.channel_id)
            assert channel is not None
            message = state.new_message(
                channel, body, author_id=state.bot.id, interaction_id=model.id, attachments=files
            )
            self._announce(message, "MESSAGE_CREATE")
        model.followup_ids.append(message.id)
        state.changes.notify()
        if request.query.get("wait") not in ("1", "true", "True"):
            return no_content()
        return json_response(payloads.message(state, message))

    async def get_webhook_message(self, request: web.Request) -> web.Response:
        model = self._interaction_of_webhook(request)
        return json_response(payloads.message(self._state, self._webhook_target(request, model)))

    async def patch_webhook_message(self, request: web.Request) -> web.Response:
        state = self._state
        model = self._interaction_of_webhook(request)
        message = self._webhook_target(request, model)
        body, _ = await self._object(request)
        self._check_message(body, creating=False)
        edited = state.edit_message(message.id, body, clear_flags=LOADING)
        if message.id == model.original_message_id:
            model.edits += 1
        self._announce(edited, "MESSAGE_UPDATE")
        state.changes.notify()
        return json_response(payloads.message(state, edited))

    async def delete_webhook_message(self, request: web.Request) -> web.Response:
        model = self._interaction_of_webhook(request)
        message = self._webhook_target(request, model)
        self._announce(self._state.delete_message(message.id), "MESSAGE_DELETE")
        return no_content()
