from musicbot.audio.store import StoreStatistics
from musicbot.audio.stored import SourceStatistics
from musicbot.core.supervisor import open_supervisor
from musicbot.dpy.resources import resources_embed
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
