"""Admin commands: /resources and /cleanup.

Declared with default member permissions (Manage Server), so Discord hides them from others,
and checked again when run, since a server can override what Discord shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
import trio
from discord import app_commands
from discord.ext import commands

from musicbot.dpy.bridge import call_trio_from_asyncio
from musicbot.dpy.checks import CommandRefused, require_known_guild
from musicbot.dpy.resources import describe_cleanup, resources_embed, shard_placement
from musicbot.process import ProcessMonitor, ProcessStatistics

if TYPE_CHECKING:
    from musicbot.config import Settings
    from musicbot.dpy.bot import MusicBot


def is_owner(settings: Settings, user: discord.abc.User) -> bool:
    return user.id in settings.owner_ids


def may_administer(settings: Settings, interaction: discord.Interaction) -> bool:
    """Manage Server or Administrator here, a configured admin role, or a configured owner."""
    if is_owner(settings, interaction.user):
        return True
    permissions = interaction.permissions
    if permissions.manage_guild or permissions.administrator:
        return True
    roles = getattr(interaction.user, "roles", [])
    wanted = set(settings.admin_roles)
    return any(role.name in wanted or str(role.id) in wanted for role in roles)


@app_commands.guild_only()
class Admin(commands.Cog):
    def __init__(self, bot: MusicBot) -> None:
        self.bot = bot
        self.supervisor = bot.supervisor
        self.monitor = ProcessMonitor()

    def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        """Roles and permissions are read from the guild: one discord.py knows nothing of
        cannot be judged."""
        require_known_guild(interaction)
        return True

    def _require_admin(self, interaction: discord.Interaction) -> None:
        if not may_administer(self.bot.settings, interaction):
            raise CommandRefused(
                "Only people who can manage this server (or the bot's owners) can use that."
            )

    async def _process_statistics(self) -> ProcessStatistics:
        # psutil lists child processes by scanning /proc: keep it off the event loop.
        return await call_trio_from_asyncio(trio.to_thread.run_sync, self.monitor.statistics)

    @app_commands.command(description="What the bot holds: connections, cache, cleanup, memory.")
    @app_commands.default_permissions(manage_guild=True)
    async def resources(self, interaction: discord.Interaction) -> None:
        self._require_admin(interaction)
        process = await self._process_statistics()
        owner = is_owner(self.bot.settings, interaction.user)
        stats = self.supervisor.statistics()

        def guild_name(guild_id: int) -> str | None:
            guild = self.bot.get_guild(guild_id)
            return guild.name if guild else None

        embed = resources_embed(
            stats,
            process,
            guild_name=guild_name,
            visible=lambda guild_id: owner or guild_id == interaction.guild_id,
            store=self.bot.store.statistics() if self.bot.store else None,
            source=self.bot.source.statistics() if self.bot.source else None,
            placement=shard_placement(self.bot),
            guild_shard=interaction.guild.shard_id if interaction.guild else None,
        )
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(description="Run the idle sweep now.")
    @app_commands.default_permissions(manage_guild=True)
    async def cleanup(self, interaction: discord.Interaction) -> None:
        self._require_admin(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        report = await call_trio_from_asyncio(self.supervisor.cleanup)
        await interaction.followup.send(f"🧹 Swept just now: {describe_cleanup(report)}.")
