"""Slash commands, answers, follow-ups, ephemeral replies, embeds, buttons and autocomplete,
round-tripped through real discord.py."""

from __future__ import annotations

import discord
import pytest
import trio
from discord import app_commands

from musicbot.testing.loopback import FakeDiscord

Tree = app_commands.CommandTree  # type: ignore[type-arg]


class Controls(discord.ui.View):
    def __init__(self, presses: list[str]) -> None:
        super().__init__(timeout=None)
        self.presses = presses

    @discord.ui.button(label="Skip", custom_id="skip", style=discord.ButtonStyle.primary)
    async def skip(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:  # type: ignore[type-arg]
        self.presses.append(f"skip by {interaction.user.name}")
        await interaction.response.edit_message(content="Skipped", view=None)

    @discord.ui.button(label="Stop", custom_id="stop", style=discord.ButtonStyle.danger)
    async def stop_(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:  # type: ignore[type-arg]
        self.presses.append("stop")
        await interaction.response.send_message("Stopped", ephemeral=True)


def music_commands(presses: list[str], seen: dict[str, object]) -> object:
    def add(tree: Tree) -> None:
        @tree.command(name="ping", description="Answer at once")
        async def ping(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("pong")

        @tree.command(name="slow", description="Defer, then follow up")
        async def slow(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            await interaction.followup.send("done thinking")
            await interaction.followup.send("and one more")

        @tree.command(name="oops", description="Defer, then answer privately instead")
        async def oops(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            await interaction.delete_original_response()
            await interaction.followup.send("only you see this error", ephemeral=True)

        @tree.command(name="secret", description="Only you see this")
        async def secret(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("psst", ephemeral=True)

        @tree.command(name="panel", description="Now playing with buttons")
        async def panel(interaction: discord.Interaction) -> None:
            embed = discord.Embed(title="Now playing", description="A 440 Hz tone")
            embed.add_field(name="Length", value="1:00")
            await interaction.response.send_message(embed=embed, view=Controls(presses))

        @tree.command(name="echo", description="Typed options")
        async def echo(
            interaction: discord.Interaction,
            text: str,
            count: int,
            ratio: float,
            loud: bool = False,
        ) -> None:
            seen.update(text=text, count=count, ratio=ratio, loud=loud)
            seen.update(
                user=interaction.user.name,
                guild=interaction.guild_id,
                channel=getattr(interaction.channel, "name", None),
                admin=interaction.permissions.administrator,
                manage_guild=interaction.permissions.manage_guild,
                bot_can_speak=interaction.app_permissions.speak,
                roles=sorted(r.name for r in getattr(interaction.user, "roles", [])),
            )
            await interaction.response.send_message(f"{text}/{count}/{ratio}/{loud}")

        @tree.command(name="fix", description="Answer, then edit the answer")
        async def fix(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("typo")
            await interaction.edit_original_response(content="fixed")

        @tree.command(name="long", description="Too long an answer")
        async def long(interaction: discord.Interaction) -> None:
            try:
                await interaction.response.send_message("x" * 2001)
            except discord.HTTPException as exc:
                seen["long"] = exc.status
                await interaction.response.send_message("shortened")

        async def complete(
            interaction: discord.Interaction, current: str
        ) -> list[app_commands.Choice[str]]:
            titles = ["Lofi beats", "Lullaby", "Rock anthem"]
            return [
                app_commands.Choice(name=t, value=t.lower())
                for t in titles
                if current.lower() in t.lower()
            ]

        @tree.command(name="play", description="Play something")
        @app_commands.autocomplete(query=complete)
        async def play(interaction: discord.Interaction, query: str) -> None:
            await interaction.response.send_message(f"playing {query}")

        queue = app_commands.Group(name="queue", description="The queue")

        @queue.command(name="remove", description="Remove a track")
        async def remove(interaction: discord.Interaction, position: int) -> None:
            await interaction.response.send_message(f"removed {position}")

        tree.add_command(queue)

    return add


async def test_immediate_deferred_and_ephemeral_answers(
    fake_discord: FakeDiscord, run_client
) -> None:
    presses: list[str] = []
    async with run_client(music_commands(presses, {})):
        alice = fake_discord.member(guild=1, name="alice")

        reply = await alice.slash("ping")
        assert (reply.callback_type, reply.content, reply.ephemeral) == (4, "pong", False)
        assert reply.message is not None and reply.message.interaction_id == reply.id

        slow = await alice.slash("slow")
        assert slow.deferred and slow.callback_type == 5
        first = await slow.wait_for_followup()
        assert first.content == "done thinking" and not first.loading
        assert slow.message is not None and slow.message.id == first.id  # replaced the placeholder
        second = await slow.wait_for_followup(2)
        assert second.content == "and one more" and second.id != first.id
        assert slow.content == "done thinking"

        # Once the public "thinking..." placeholder is deleted, a follow-up is a new message
        # with its own flags: the way to turn a deferred answer into a private one.
        oops = await alice.slash("oops")
        private = await oops.wait_for_followup()
        assert (private.content, private.ephemeral) == ("only you see this error", True)
        assert oops.message is not None and oops.message.deleted and private.id != oops.message.id

        secret = await alice.slash("secret")
        assert secret.ephemeral and secret.content == "psst"

        fix = await alice.slash("fix")
        fixed = await fix.wait_for_edit()
        assert fixed.content == "fixed" and fix.content == "fixed" and fix.edits == 1

        # Interaction answers are not "posted in the channel" unless asked for.
        assert fake_discord.channel_messages(guild=1) == ()
        shown = fake_discord.channel_messages(guild=1, include_answers=True)
        assert "psst" not in [m.content for m in shown] and "pong" in [m.content for m in shown]


async def test_embed_buttons_and_a_press_reaching_the_view(
    fake_discord: FakeDiscord, run_client
) -> None:
    presses: list[str] = []
    async with run_client(music_commands(presses, {})):
        bob = fake_discord.member(guild=2, name="bob")
        reply = await bob.slash("panel")
        (embed,) = reply.embeds
        assert (embed.title, embed.description) == ("Now playing", "A 440 Hz tone")
        assert [(f.name, f.value) for f in embed.fields] == [("Length", "1:00")]
        assert [(b.custom_id, b.label) for b in reply.components] == [
            ("skip", "Skip"),
            ("stop", "Stop"),
        ]
        assert reply.message is not None

        stop = await bob.press(reply.message, "stop")
        assert stop.kind == "component" and stop.ephemeral and stop.content == "Stopped"

        skip = await bob.press(reply.message, "skip")
        assert skip.callback_type == 7
        assert presses == ["stop", "skip by bob"]
        assert skip.message is not None and skip.message.id == reply.message.id
        assert reply.content == "Skipped" and reply.components == ()
        with pytest.raises(LookupError):
            await bob.press(reply.message, "skip")  # the edit removed the buttons


async def test_typed_options_member_and_permissions(fake_discord: FakeDiscord, run_client) -> None:
    seen: dict[str, object] = {}
    async with run_client(music_commands([], seen)):
        carol = fake_discord.member(
            guild=1, name="carol", permissions=["manage_guild"], roles=["DJ"]
        )
        reply = await carol.slash("echo", text="hi", count=3, ratio=0.5)
        assert reply.content == "hi/3/0.5/False"
        assert seen["text"] == "hi" and seen["count"] == 3 and seen["ratio"] == 0.5
        assert seen["user"] == "carol" and seen["guild"] == fake_discord.guild(1).id
        assert seen["channel"] == "general"
        assert (
            seen["admin"] is False
            and seen["manage_guild"] is True
            and seen["bot_can_speak"] is True
        )
        assert "DJ" in seen["roles"]  # type: ignore[operator]

        admin = fake_discord.member(guild=1, name="dave", admin=True)
        await admin.slash("echo", text="x", count=1, ratio=1, loud=True)
        assert seen["admin"] is True and seen["loud"] is True

        assert (await carol.slash("queue remove", position=2)).content == "removed 2"

        with pytest.raises(TypeError):
            await carol.slash("echo", text="x", count="3", ratio=1.0)
        with pytest.raises(ValueError, match="needs option"):
            await carol.slash("echo", text="x")
        with pytest.raises(LookupError, match="no slash command /nope"):
            await carol.slash("nope")
        with pytest.raises(ValueError, match="exists with roles"):
            fake_discord.member(guild=1, name="carol")


async def test_autocomplete(fake_discord: FakeDiscord, run_client) -> None:
    async with run_client(music_commands([], {})):
        erin = fake_discord.member(guild=1, name="erin")
        choices = await erin.autocomplete("play", "query", query="lu")
        assert [(c.name, c.value) for c in choices] == [("Lullaby", "lullaby")]


@pytest.mark.rejections_expected
async def test_discord_limits_are_enforced(fake_discord: FakeDiscord, run_client) -> None:
    seen: dict[str, object] = {}
    async with run_client(music_commands([], seen)):
        reply = await fake_discord.member(name="frank").slash("long")
        assert seen["long"] == 400 and reply.content == "shortened"
        (rejected,) = fake_discord.errors
        assert rejected.status == 400 and "2001 characters" in rejected.reason


@pytest.mark.fake_options(answer_timeout=0.3)
async def test_unanswered_interaction_times_out(fake_discord: FakeDiscord, run_client) -> None:
    def add(tree: Tree) -> None:
        @tree.command(name="mute", description="Never answers")
        async def mute(interaction: discord.Interaction) -> None:
            pass

    async with run_client(add):
        grace = fake_discord.member(name="grace")
        interaction = await grace.slash("mute", wait=False)
        with pytest.raises(trio.TooSlowError, match="did not answer"):
            await interaction.wait_for_answer()  # Discord's deadline, here 0.3 s
        assert not interaction.answered
        assert trio.current_time() - interaction.created_at == pytest.approx(0.3, abs=0.1)
