"""A live view of one interaction a member made: the bot's answer, follow-ups and edits."""

from __future__ import annotations

import trio

from musicbot.testing.loopback.records import Callback, Choice, Component, Embed, Message
from musicbot.testing.loopback.state import InteractionModel
from musicbot.testing.loopback.world import World

KINDS = {2: "command", 3: "component", 4: "autocomplete"}


class Interaction:
    """What the bot did with one interaction, as Discord saw it. Properties read the latest state.

    `message` is the interaction's "@original" message: the answer (type 4), the deferred
    placeholder (type 5) until a follow-up or an edit replaces it, or for a button press answered
    with type 6/7 the message the button is on. `content`, `embeds`, `components` and
    `ephemeral` read `message`.
    """

    def __init__(self, world: World, model: InteractionModel) -> None:
        self._world = world
        self._model = model

    def __repr__(self) -> str:
        return f"<Interaction {self.kind} {self.name!r} callback={self.callback_type}>"

    @property
    def id(self) -> int:
        return self._model.id

    @property
    def token(self) -> str:
        return self._model.token

    @property
    def kind(self) -> str:
        return KINDS[self._model.type]

    @property
    def name(self) -> str:
        """The command's name, or the pressed component's custom_id."""
        return self._model.name

    @property
    def created_at(self) -> float:
        return self._model.created_at

    @property
    def callback(self) -> Callback | None:
        return self._model.callback

    @property
    def callback_type(self) -> int | None:
        return None if self._model.callback is None else self._model.callback.type

    @property
    def answered(self) -> bool:
        return self._model.callback is not None

    @property
    def deferred(self) -> bool:
        return self._model.callback is not None and self._model.callback.deferred

    @property
    def message(self) -> Message | None:
        message_id = self._model.original_message_id
        return None if message_id is None else self._world.state.messages[message_id]

    @property
    def followups(self) -> tuple[Message, ...]:
        """Messages the follow-up webhook returned, in order (the first one after a deferred
        answer is the replaced placeholder, so it has the same id as `message`)."""
        return tuple(self._world.state.messages[i] for i in self._model.followup_ids)

    @property
    def edits(self) -> int:
        """Edits of the @original message through the interaction webhook."""
        return self._model.edits

    @property
    def content(self) -> str | None:
        return None if self.message is None else self.message.content

    @property
    def embeds(self) -> tuple[Embed, ...]:
        return () if self.message is None else self.message.embeds

    @property
    def components(self) -> tuple[Component, ...]:
        return () if self.message is None else self.message.components

    @property
    def ephemeral(self) -> bool:
        return self.message is not None and self.message.ephemeral

    @property
    def choices(self) -> tuple[Choice, ...]:
        """An autocomplete answer's choices."""
        return self._model.choices

    async def wait_for_answer(self) -> Callback:
        """Wait for the bot's first answer, at most until Discord's deadline (3 s by default):
        raises trio.TooSlowError then, as Discord would say "The application did not respond"."""
        model = self._model
        left = max(model.answer_deadline - trio.current_time(), 0.0)
        try:
            return await self._world.state.changes.wait_for(
                lambda: model.callback, within=left, what="an answer"
            )
        except trio.TooSlowError:
            raise trio.TooSlowError(
                f"the bot did not answer {self.kind} {self.name!r} within "
                f"{model.answer_deadline - model.created_at:g} s (Discord would say "
                f"'The application did not respond')"
            ) from None

    async def wait_for_followup(self, count: int = 1) -> Message:
        """Wait until the bot sent `count` follow-ups; returns the `count`-th one."""
        model = self._model
        await self._world.wait_for(
            lambda: len(model.followup_ids) >= count, what=f"follow-up #{count} of {self.name!r}"
        )
        return self._world.state.messages[model.followup_ids[count - 1]]

    async def wait_for_edit(self, count: int = 1) -> Message:
        """Wait until the bot edited @original `count` times; returns the message as it is now."""
        await self._world.wait_for(
            lambda: self._model.edits >= count, what=f"edit #{count} of {self.name!r}"
        )
        message = self.message
        assert message is not None
        return message
