"""Messages the bot posts, edits and deletes in text channels, and buttons on them."""

from __future__ import annotations

import io

import discord
import trio_asyncio

from musicbot.testing.loopback import FakeDiscord


class Announcement(discord.ui.View):
    def __init__(self, presses: list[str]) -> None:
        super().__init__(timeout=None)
        self.presses = presses

    @discord.ui.button(label="Pause", custom_id="pause")
    async def pause(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:  # type: ignore[type-arg]
        self.presses.append(interaction.user.name)
        await interaction.response.defer()


async def test_post_edit_delete_and_press(fake_discord: FakeDiscord, run_client) -> None:
    presses: list[str] = []
    async with run_client(sync=False) as client:
        general = client.get_channel(fake_discord.guild(2).channel_id("general"))
        assert isinstance(general, discord.TextChannel)

        async def announce() -> discord.Message:
            embed = discord.Embed(title="Now playing", description="Track 1")
            return await general.send("Hello", embed=embed, view=Announcement(presses))

        sent = await trio_asyncio.aio_as_trio(announce)()
        (posted,) = fake_discord.channel_messages(guild=2)
        assert posted.id == sent.id and posted.content == "Hello"
        assert (
            posted.embeds[0].title == "Now playing" and posted.author_id == fake_discord.bot_user_id
        )
        assert fake_discord.channel_messages(guild=1) == ()

        pressed = await fake_discord.member(guild=2, name="zoe").press(posted, "pause")
        assert pressed.callback_type == 6 and presses == ["zoe"]
        assert pressed.message is not None and pressed.message.id == posted.id

        await trio_asyncio.aio_as_trio(sent.edit)(content="Hello again")
        (edited,) = fake_discord.channel_messages(guild=2)
        assert (edited.content, edited.edits) == ("Hello again", 1)

        fetched = await trio_asyncio.aio_as_trio(general.fetch_message)(sent.id)
        assert fetched.content == "Hello again"

        async def upload() -> discord.Message:
            return await general.send(
                "Queue export", file=discord.File(io.BytesIO(b"1. tone"), "queue.txt")
            )

        uploaded = await trio_asyncio.aio_as_trio(upload)()
        assert fake_discord.message(uploaded.id).attachments == ("queue.txt",)
        assert [a.filename for a in uploaded.attachments] == ["queue.txt"]

        await trio_asyncio.aio_as_trio(sent.delete)()
        assert [m.id for m in fake_discord.channel_messages(guild=2)] == [uploaded.id]
        gone, _ = fake_discord.channel_messages(guild=2, include_deleted=True)
        assert gone.deleted and fake_discord.message(sent.id).deleted
