"""One answer for every interaction, errors included: refusals privately, bugs logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import discord
from discord import app_commands

from musicbot.core.messages import Refused
from musicbot.dpy.checks import CommandRefused

log = logging.getLogger(__name__)

SORRY = "Something went wrong on my side; the error was logged. Please try again."


def explain(error: BaseException, what: str) -> str:
    """The text for the user; anything unexpected is logged with its traceback."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, CommandRefused):
        return str(error)
    if isinstance(error, Refused):
        text = str(error)
        return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")
    if isinstance(error, app_commands.CheckFailure):
        return str(error) or "You cannot use that here."
    log.error("%s failed", what, exc_info=error)
    return SORRY


async def answer_privately(interaction: discord.Interaction, text: str) -> None:
    """Answer `text` so only the invoker sees it, whether or not the answer was deferred."""
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=True)
            return
        if interaction.response.type in (discord.InteractionResponseType.deferred_channel_message,):
            # A deferred ("thinking") answer is public: replace it with a private one.
            await interaction.delete_original_response()
        await interaction.followup.send(text, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not answer interaction %s: %s", interaction.id, exc)


async def answering(interaction: discord.Interaction, work: Awaitable[None], what: str) -> None:
    """Run `work` (which answers on success); on any failure answer privately instead.

    discord.py only logs exceptions from component callbacks, so buttons go through this.
    """
    try:
        await work
    except Exception as error:
        await answer_privately(interaction, explain(error, what))


class Thinking:
    """The "thinking..." answer on its way to Discord (what `thinking()` gives its body)."""

    def __init__(self, deferral: asyncio.Future[Any]) -> None:
        self._deferral = deferral

    async def shown(self) -> None:
        """Wait until Discord has it. Call this before slow work (a yt-dlp lookup): that work
        runs in threads that compete with the event loop for the GIL, and 200 /play at once
        starved their deferrals past Discord's 3 s deadline ("did not respond")."""
        await asyncio.shield(self._deferral)


@asynccontextmanager
async def thinking(interaction: discord.Interaction) -> AsyncIterator[Thinking]:
    """Show "thinking..." while the body works, without waiting for Discord to confirm it.

    The deferral is one HTTP round trip to Discord (tens of milliseconds or more); a /play
    whose song is stored needs less than that to start the audio, so it starts the audio
    first (a body about to do slow work waits with `shown()`). Leaving the block waits for
    the deferral, so answers (follow-ups) and refusals always come after it.
    """
    deferral = asyncio.ensure_future(interaction.response.defer(thinking=True))
    try:
        yield Thinking(deferral)
    finally:
        await deferral
