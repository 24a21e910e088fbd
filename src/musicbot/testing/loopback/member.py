"""A guild member driven by a test: joins voice, runs slash commands, presses buttons."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import trio

from musicbot.testing.loopback import commands, payloads
from musicbot.testing.loopback.commands import OptionValue
from musicbot.testing.loopback.interaction import Interaction
from musicbot.testing.loopback.records import AppCommand, Choice, Message
from musicbot.testing.loopback.state import TEXT, VOICE, Guild, InteractionModel, Member, VoiceState
from musicbot.testing.loopback.world import World


class FakeMember:
    def __init__(self, world: World, guild: Guild, member: Member) -> None:
        self._world = world
        self._guild = guild
        self._member = member

    def __repr__(self) -> str:
        return f"<FakeMember {self.name!r} of guild {self.guild}>"

    @property
    def id(self) -> int:
        return self._member.user.id

    @property
    def name(self) -> str:
        return self._member.user.name

    @property
    def guild(self) -> int:
        """The guild's index (1-based), as `FakeDiscord.guild(index)` takes it."""
        return self._guild.index

    @property
    def guild_id(self) -> int:
        return self._guild.id

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self._guild.roles[r].name for r in self._member.role_ids)

    @property
    def permissions(self) -> int:
        """Guild-level permission bits, as sent in an interaction's `member.permissions`."""
        return self._guild.permissions_of(self.id)

    @property
    def voice_channel(self) -> str | None:
        state = self._guild.voice_states.get(self.id)
        return None if state is None else self._guild.channels[state.channel_id].name

    # -- voice ----------------------------------------------------------------------------------

    async def join_voice(self, channel: str) -> None:
        """Join (or move to) a voice channel; returns once the bot's gateway was sent the
        VOICE_STATE_UPDATE (if the bot is connected and has the voice states intent)."""
        target = self._guild.channel_named(channel, type=VOICE)
        before = self._guild.voice_states.get(self.id)
        session_id = before.session_id if before is not None else secrets.token_hex(16)
        self._guild.voice_states[self.id] = VoiceState(self.id, target.id, session_id)
        written = self._world.gateway.member_voice_changed(self._guild, self.id, None)
        await self._world.written(written, what=f"{self.name} joining {channel}")

    async def leave_voice(self) -> None:
        before = self._guild.voice_states.pop(self.id, None)
        if before is None:
            return
        written = self._world.gateway.member_voice_changed(self._guild, self.id, before.session_id)
        await self._world.written(written, what=f"{self.name} leaving voice")

    # -- interactions ---------------------------------------------------------------------------

    async def slash(
        self,
        command: str,
        /,
        *,
        channel: str | None = None,
        wait: bool = True,
        checked: bool = True,
        **options: OptionValue,
    ) -> Interaction:
        """Run `/command` ("queue remove" for a subcommand) with typed options, checked against
        the schema the bot registered (`checked=False`: values out of range, off the choices or
        too long go out anyway, as an API client could send them). With `wait`, returns once
        the bot answered (within Discord's 3 s) and raises trio.TooSlowError if it did not."""
        name, *path = command.split()
        registered = self._command(name)
        data, _ = commands.invocation(registered, path, options, checked=checked)
        interaction = self._dispatch(2, name, data, self._text_channel(channel))
        if wait:
            await interaction.wait_for_answer()
        return interaction

    async def autocomplete(
        self,
        command: str,
        focused: str,
        /,
        *,
        channel: str | None = None,
        **options: OptionValue,
    ) -> tuple[Choice, ...]:
        """Type into option `focused` of `/command` and return the bot's suggestions."""
        name, *path = command.split()
        data, option = commands.invocation(self._command(name), path, options, focused=focused)
        if option is not None and not option.autocomplete:
            raise ValueError(f"/{command} {focused} does not have autocomplete")
        interaction = self._dispatch(4, name, data, self._text_channel(channel))
        await interaction.wait_for_answer()
        return interaction.choices

    async def press(self, message: Message, custom_id: str, *, wait: bool = True) -> Interaction:
        """Press the button `custom_id` on the current version of `message`."""
        current = self._visible(message)
        button = current.component(custom_id)
        if not button.is_button:
            raise ValueError(f"component {custom_id!r} is not a button (type {button.type})")
        return await self._use_component(current, custom_id, {"component_type": 2}, wait=wait)

    async def select(
        self, message: Message, custom_id: str, values: Sequence[str], *, wait: bool = True
    ) -> Interaction:
        """Pick `values` in the string select `custom_id` on the current version of `message`."""
        current = self._visible(message)
        menu = current.component(custom_id)
        if menu.type != 3:
            raise ValueError(f"component {custom_id!r} is not a string select (type {menu.type})")
        unknown = [v for v in values if v not in menu.options]
        if unknown:
            raise ValueError(
                f"select {custom_id!r} has no options {unknown}; it has {menu.options}"
            )
        data = {"component_type": 3, "values": list(values)}
        return await self._use_component(current, custom_id, data, wait=wait)

    async def _use_component(
        self, message: Message, custom_id: str, extra: dict[str, object], *, wait: bool
    ) -> Interaction:
        if message.component(custom_id).disabled:
            raise ValueError(f"component {custom_id!r} is disabled")
        data = {"custom_id": custom_id, **extra}
        channel = self._guild.channels[message.channel_id]
        interaction = self._dispatch(3, custom_id, data, channel.id, message=message)
        if wait:
            await interaction.wait_for_answer()
        return interaction

    def _visible(self, message: Message) -> Message:
        state = self._world.state
        current = state.messages.get(message.id)
        if current is None or current.deleted:
            raise LookupError(f"message {message.id} does not exist (any more)")
        invoker = (
            None if current.interaction_id is None else state.interactions[current.interaction_id]
        )
        if current.ephemeral and invoker is not None and invoker.user_id != self.id:
            raise PermissionError(f"message {message.id} is ephemeral: only its invoker sees it")
        return current

    def _command(self, name: str) -> AppCommand:
        state = self._world.state
        registered = state.guild_commands.get(self._guild.id, {}).get(
            name
        ) or state.global_commands.get(name)
        if registered is None or registered.type != 1:
            known = sorted({*state.global_commands, *state.guild_commands.get(self._guild.id, {})})
            raise LookupError(
                f"no slash command /{name} registered for guild {self.guild}; registered: {known}"
            )
        return registered

    def _text_channel(self, name: str | None) -> int:
        if name is None:
            return next(c.id for c in self._guild.channels.values() if c.type == TEXT)
        return self._guild.channel_named(name, type=TEXT).id

    def _dispatch(
        self,
        kind: int,
        name: str,
        data: dict[str, object],
        channel_id: int,
        *,
        message: Message | None = None,
    ) -> Interaction:
        state = self._world.state
        now = trio.current_time()
        model = InteractionModel(
            id=state.ids.next(),
            token=f"aW50ZXJhY3Rpb246{secrets.token_urlsafe(96)}",
            type=kind,
            name=name,
            guild_id=self._guild.id,
            channel_id=channel_id,
            user_id=self.id,
            created_at=now,
            answer_deadline=now + state.answer_timeout,
            component_message_id=None if message is None else message.id,
        )
        message_json = None if message is None else payloads.message(state, message)
        payload = payloads.interaction(state, model, data=data, message_json=message_json)
        if self._world.gateway.session_for(self._guild.id) is None:
            raise RuntimeError(f"no bot is identified on the gateway for guild {self.guild}")
        state.interactions[model.id] = model
        state.interactions_by_token[model.token] = model
        self._world.gateway.dispatch_guild(self._guild.id, "INTERACTION_CREATE", payload)
        state.changes.notify()
        return Interaction(self._world, model)
