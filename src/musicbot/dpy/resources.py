"""The /resources embed: what the bot holds, for the people who run it."""

from __future__ import annotations

from collections.abc import Callable

import discord

from musicbot.audio.store import StoreStatistics
from musicbot.audio.stored import SourceStatistics
from musicbot.core.supervisor import CleanupReport, SupervisorStatistics
from musicbot.dpy.render import COLOUR
from musicbot.metrics import ShardPlacement, describe_shard_ids
from musicbot.process import ProcessStatistics

FRAMES_PER_SECOND = 50
MAX_GUILD_LINES = 10


def _duration(seconds: float) -> str:
    """`42s`, `5m 03s`, `2h 05m`, `3d 4h`."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def _mib(size: int | None) -> str:
    return "?" if size is None else f"{size / 2**20:.1f} MiB"


def _known(value: object) -> str:
    return "?" if value is None else str(value)


def describe_cleanup(report: CleanupReport) -> str:
    """`reaped 1 [123 (idle 1h 02m)], expired 3 cache entries, gave back 12.0 MiB of free
    memory, took 0.4 ms`"""
    reaped = ", ".join(
        f"{r.guild_id} ({r.reason.value} {_duration(r.seconds)})" for r in report.reaped
    )
    return (
        f"reaped {len(report.reaped)}"
        + (f" [{reaped}]" if reaped else "")
        + f", expired {report.cache_expired} cache entries"
        + f", gave back {_mib(report.memory_released)} of free memory"
        + f", took {report.duration * 1000:.1f} ms"
    )


def shard_placement(client: discord.Client | None) -> ShardPlacement | None:
    """This process and the shards `client` runs; None before it has started any."""
    if not isinstance(client, discord.AutoShardedClient) or client.shard_count is None:
        return None
    shards = client.shards
    configured = client.shard_ids
    shard_ids = tuple(sorted(configured if configured is not None else shards))
    if not shard_ids:
        return None
    connected = frozenset(shard for shard, info in shards.items() if not info.is_closed())
    return ShardPlacement(shard_count=client.shard_count, shard_ids=shard_ids, connected=connected)


def describe_placement(placement: ShardPlacement, *, guild_shard: int | None = None) -> str:
    """`pid 1234 on host box · shards 0-1 of 4 · this server is on shard 1`"""
    plural = "s" if len(placement.shard_ids) > 1 else ""
    text = (
        f"pid {placement.pid} on host {discord.utils.escape_markdown(placement.host)} · "
        f"shard{plural} {describe_shard_ids(placement.shard_ids)} of {placement.shard_count}"
    )
    if guild_shard is not None:
        text += f" · this server is on shard {guild_shard}"
    down = [shard for shard in placement.shard_ids if shard not in placement.connected]
    if down:
        text += f" · **not connected: shard{'s' if len(down) > 1 else ''} "
        text += f"{describe_shard_ids(down)}**"
    return text


def resources_embed(
    stats: SupervisorStatistics,
    process: ProcessStatistics,
    *,
    guild_name: Callable[[int], str | None],
    visible: Callable[[int], bool],
    store: StoreStatistics | None = None,
    source: SourceStatistics | None = None,
    placement: ShardPlacement | None = None,
    guild_shard: int | None = None,
) -> discord.Embed:
    """`visible(guild_id)`: whether this viewer may see that guild by name (an owner sees all;
    a server's admin sees their own server, and the rest only as totals). `placement` and
    `guild_shard` (the viewer's server's shard) open the "Process" field: with the bot spread
    over processes, which one answered."""
    embed = discord.Embed(title="Resources", colour=COLOUR)
    embed.add_field(
        name="Voice connections",
        value=f"{stats.active} / {stats.max_connections} · spawns {stats.spawns} · "
        f"refused {stats.refusals} · failed joins {stats.connect_failures} · "
        f"crashes {stats.crashes}",
        inline=False,
    )
    lines = []
    hidden = 0
    for player in stats.players:
        if not visible(player.guild_id):
            hidden += 1
            continue
        name = discord.utils.escape_markdown(guild_name(player.guild_id) or str(player.guild_id))
        lines.append(
            f"**{name}**: {player.state.value}, idle {_duration(player.idle_seconds)}, "
            f"queue {player.queue_length}, frames {player.frames_sent} sent / "
            f"{player.frames_late} late"
        )
    shown = lines[:MAX_GUILD_LINES]
    if len(lines) > len(shown):
        shown.append(f"... and {len(lines) - len(shown)} more")
    if hidden:
        shown.append(f"{hidden} other server(s)")
    embed.add_field(name="Servers", value="\n".join(shown) or "none connected", inline=False)

    cache = stats.cache
    embed.add_field(
        name="Track cache",
        value=f"{cache.size} / {cache.max_size} entries · hit rate {cache.hit_rate:.0%} "
        f"({cache.hits} hits, {cache.misses} misses) · {cache.evictions} evicted · "
        f"{cache.expirations} expired · TTL {_duration(cache.ttl)}",
        inline=False,
    )
    last = stats.last_cleanup
    last_text = (
        "none yet"
        if last is None
        else f"{_duration(stats.taken_at - last.at)} ago, {describe_cleanup(last)}"
    )
    embed.add_field(
        name="Cleanup",
        value=f"{stats.cleanups} sweeps · {stats.reaped} connections reaped · last: {last_text}",
        inline=False,
    )
    if store is not None:
        looked_up = store.hits + store.misses
        hit_rate = f"{store.hits / looked_up:.0%}" if looked_up else "0%"
        warming = f" · warming {source.warming}" if source is not None else ""
        full = " · **disk full: not storing**" if store.disk_full else ""
        embed.add_field(
            name="Song store",
            value=f"{store.entries} songs · {_mib(store.bytes)} of {_mib(store.max_bytes)} · "
            f"hit rate {hit_rate} · {store.evictions} evicted · {store.corrupt_dropped} "
            f"damaged dropped{warming}{full}",
            inline=False,
        )
    cpu = "?" if process.cpu_percent is None else f"{process.cpu_percent:.1f} %"
    figures = (
        f"memory {_mib(process.resident_memory_bytes)} · CPU {cpu} · "
        f"{_known(process.open_fds)} open files · {_known(process.threads)} threads · "
        f"{_known(process.children)} child processes ({_known(process.ffmpeg_children)} ffmpeg)"
        f" · up {_duration(process.uptime_seconds or stats.uptime)}"
    )
    if placement is not None:
        figures = describe_placement(placement, guild_shard=guild_shard) + "\n" + figures
    embed.add_field(name="Process", value=figures, inline=False)
    playing = [p for p in stats.players if p.state.value == "playing"]
    sent = sum(p.frames_sent_last_minute for p in stats.players)
    missing = sum(p.frames_missing_last_minute for p in stats.players)
    expected = sent + missing
    share = f"{missing / expected:.2%}" if expected else "0%"
    worst = max((p.lateness_p99 for p in playing), default=0.0)
    embed.add_field(
        name="Pacing, last minute",
        value=f"{len(playing)} playing · {sent} frames sent · {missing} missing ({share}) "
        f"of {FRAMES_PER_SECOND} per second per playing server · worst p99 lateness "
        f"{worst * 1000:.1f} ms",
        inline=False,
    )
    return embed
