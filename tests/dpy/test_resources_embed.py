import os
import socket

import discord

from musicbot.audio.store import StoreStatistics
from musicbot.audio.stored import SourceStatistics
from musicbot.core.supervisor import open_supervisor
from musicbot.dpy.resources import resources_embed, shard_placement
from musicbot.metrics import ShardPlacement
from musicbot.process import ProcessMonitor
from musicbot.testing import FakeFrameSource, FakeVoice


async def test_the_store_field_shows_size_hit_rate_warming_and_a_full_disk() -> None:
    store = StoreStatistics(
        entries=12,
        bytes=30 * 2**20,
        max_bytes=2 * 2**30,
        hits=3,
        misses=1,
        writes_committed=12,
        writes_abandoned=2,
        write_failures=1,
        disk_full=True,
        evictions=4,
        corrupt_dropped=1,
        writing=0,
        reading=1,
    )
    source = SourceStatistics(
        played_from_store=3,
        transcoded_from_store_file=0,
        transcoded_from_network=1,
        copies_started=1,
        warmed=11,
        warm_failures=0,
        warming=2,
    )
    async with open_supervisor(make_voice=FakeVoice, frame_source=FakeFrameSource()) as sup:
        embed = resources_embed(
            sup.statistics(),
            ProcessMonitor().statistics(),
            guild_name=lambda _: None,
            visible=lambda _: True,
            store=store,
            source=source,
        )
    fields = {field.name: field.value for field in embed.fields}
    assert fields["Song store"] == (
        "12 songs · 30.0 MiB of 2048.0 MiB · hit rate 75% · 4 evicted · 1 damaged dropped"
        " · warming 2 · **disk full: not storing**"
    )


async def process_field(
    placement: ShardPlacement | None = None, guild_shard: int | None = None
) -> str:
    async with open_supervisor(make_voice=FakeVoice, frame_source=FakeFrameSource()) as sup:
        embed = resources_embed(
            sup.statistics(),
            ProcessMonitor().statistics(),
            guild_name=lambda _: None,
            visible=lambda _: True,
            placement=placement,
            guild_shard=guild_shard,
        )
    return {field.name: field.value for field in embed.fields}["Process"]


async def test_the_process_field_opens_with_the_process_and_shards_that_answered() -> None:
    placement = ShardPlacement(
        shard_count=4, shard_ids=(0, 1), connected=frozenset({0, 1}), pid=1234, host="box_1"
    )
    first, figures = (await process_field(placement=placement, guild_shard=1)).split("\n")
    assert first == r"pid 1234 on host box\_1 · shards 0-1 of 4 · this server is on shard 1"
    assert figures.startswith("memory ")


async def test_a_shard_that_is_not_connected_is_pointed_out() -> None:
    placement = ShardPlacement(
        shard_count=8, shard_ids=(3,), connected=frozenset(), pid=99, host="h"
    )
    first = (await process_field(placement=placement)).split("\n")[0]
    assert first == "pid 99 on host h · shard 3 of 8 · **not connected: shard 3**"


async def test_without_a_placement_the_process_field_is_the_figures_alone() -> None:
    assert (await process_field()).startswith("memory ")


def test_the_placement_of_a_client_is_its_configured_shards_before_it_connects() -> None:
    client = discord.AutoShardedClient(
        intents=discord.Intents.none(), shard_count=4, shard_ids=[3, 2]
    )
    placement = shard_placement(client)
    assert placement is not None
    assert (placement.shard_count, placement.shard_ids) == (4, (2, 3))
    assert placement.connected == frozenset()
    assert (placement.pid, placement.host) == (os.getpid(), socket.gethostname())


def test_no_placement_without_a_client_or_before_the_shard_count_is_known() -> None:
    assert shard_placement(None) is None
    client = discord.AutoShardedClient(intents=discord.Intents.none())
    assert shard_placement(client) is None
