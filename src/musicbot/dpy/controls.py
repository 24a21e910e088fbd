"""Buttons: pause/resume, skip and stop on now-playing messages, and queue pages.

They are dynamic items (the state is in the custom id), so a button keeps working on any
message, across restarts; a press on a stale message gets a clear answer, not an error.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

from musicbot.core.mailbox import ActorGone
from musicbot.dpy.answers import answering
from musicbot.dpy.bridge import call_trio_from_asyncio
from musicbot.dpy.checks import CommandRefused, require_known_guild, require_same_channel
from musicbot.dpy.render import now_playing_embed, page_count, queue_embed

if TYPE_CHECKING:
    from musicbot.core.messages import NowPlaying, QueueView
    from musicbot.dpy.bot import MusicBot

Button = discord.ui.Button[Any]


def player_controls(*, paused: bool = False) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(PlayerButton("resume" if paused else "pause"))
    view.add_item(PlayerButton("skip"))
    view.add_item(PlayerButton("stop"))
    return view


def queue_controls(view: QueueView, page: int) -> discord.ui.View | None:
    pages = page_count(view)
    if pages <= 1:
        return None
    buttons = discord.ui.View(timeout=None)
    buttons.add_item(QueuePageButton(page - 1, label="◀ Previous", disabled=page <= 1))
    buttons.add_item(QueuePageButton(page + 1, label="Next ▶", disabled=page >= pages))
    return buttons


_STYLES = {
    "pause": (discord.ButtonStyle.secondary, "⏸ Pause"),
    "resume": (discord.ButtonStyle.success, "▶ Resume"),
    "skip": (discord.ButtonStyle.primary, "⏭ Skip"),
    "stop": (discord.ButtonStyle.danger, "⏹ Stop"),
}


class PlayerButton(
    discord.ui.DynamicItem[Button], template=r"musicbot:(?P<action>pause|resume|skip|stop)"
):
    def __init__(self, action: str) -> None:
        style, label = _STYLES[action]
        super().__init__(
            discord.ui.Button(style=style, label=label, custom_id=f"musicbot:{action}")
        )
        self.action = action

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> PlayerButton:
        return cls(match["action"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await answering(interaction, self._press(interaction), f"the {self.action} button")

    async def _press(self, interaction: discord.Interaction) -> None:
        bot: MusicBot = interaction.client  # type: ignore[assignment]
        guild = require_known_guild(interaction)
        # An old message's buttons outlive the player: say that first, not where to stand.
        player = bot.supervisor.find_player(guild.id)
        if player is None:
            raise CommandRefused("I am not playing here any more; start again with /play.")
        require_same_channel(interaction)
        who = interaction.user.display_name
        try:
            if self.action in ("pause", "resume"):
                if self.action == "pause":
                    await call_trio_from_asyncio(player.pause)
                else:
                    await call_trio_from_asyncio(player.resume)
                now: NowPlaying | None = await call_trio_from_asyncio(player.now_playing)
                if now is None:
                    raise CommandRefused("Nothing is playing.")
                await interaction.response.edit_message(
                    embed=now_playing_embed(now), view=player_controls(paused=now.paused)
                )
            elif self.action == "skip":
                skipped = await call_trio_from_asyncio(player.skip)
                if skipped is None:
                    raise CommandRefused("Nothing is playing.")
                title = discord.utils.escape_markdown(skipped.title)
                await interaction.response.send_message(f"⏭ {who} skipped **{title}**.")
            else:
                dropped = await call_trio_from_asyncio(player.stop)
                await interaction.response.send_message(
                    f"⏹ {who} stopped the music and cleared the queue ({dropped} tracks)."
                )
        except ActorGone:
            raise CommandRefused("I am not playing here any more.") from None


class RetiredButton(
    discord.ui.DynamicItem[Button],
    template=r"(?s)(?!musicbot:(?:pause|resume|skip|stop|queue:-?\d+)\Z).+",
):
    """Any other custom id: a button this version does not have, on a message an older one
    posted. discord.py drops a press nobody claims, and Discord then shows "This interaction
    failed"; this answers it instead. Every button of the bot is a dynamic item, so nothing
    else claims these."""

    def __init__(self, custom_id: str) -> None:
        super().__init__(discord.ui.Button(label="?", custom_id=custom_id))

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> RetiredButton:
        return cls(match[0])

    async def callback(self, interaction: discord.Interaction) -> None:
        await answering(interaction, self._explain(), "an old button")

    async def _explain(self) -> None:
        raise CommandRefused(
            "That button is from an older message and does nothing now; "
            "/nowplaying and /queue show fresh ones."
        )


class QueuePageButton(discord.ui.DynamicItem[Button], template=r"musicbot:queue:(?P<page>-?\d+)"):
    def __init__(self, page: int, *, label: str = "", disabled: bool = False) -> None:
        super().__init__(
            discord.ui.Button(
                style=discord.ButtonStyle.secondary,
                label=label or f"Page {page}",
                custom_id=f"musicbot:queue:{page}",
                disabled=disabled,
            )
        )
        self.page = page

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> QueuePageButton:
        return cls(int(match["page"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await answering(interaction, self._turn(interaction), "a queue page button")

    async def _turn(self, interaction: discord.Interaction) -> None:
        bot: MusicBot = interaction.client  # type: ignore[assignment]
        guild = require_known_guild(interaction)
        player = bot.supervisor.find_player(guild.id)
        if player is None:
            raise CommandRefused("I am not playing here any more, so there is no queue.")
        try:
            view = await call_trio_from_asyncio(player.queue)
        except ActorGone:
            raise CommandRefused("I am not playing here any more.") from None
        page = min(max(self.page, 1), page_count(view))
        await interaction.response.edit_message(
            embed=queue_embed(view, page), view=queue_controls(view, page)
        )
