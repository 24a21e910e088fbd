"""`musicbot cache stats | list | verify | clear | warm FILE`: the song store, for operators.

Each opens the store directly. All but `clear` share it with running bots (the store's locks
keep a song being played from being deleted, and give each song one writer); `clear` needs the
store to itself, so it refuses, in one line, while a bot has the cache directory open.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import attrs
import trio

from musicbot.app import frame_source_for, open_song_store, resolver_for
from musicbot.audio.store import ProcessedSongStore, StoreLocked, open_store
from musicbot.audio.stored import open_store_backed_source
from musicbot.config import Settings, StartupError
from musicbot.core.ports import ResolveError
from musicbot.dpy.render import format_duration

BAR = 30


def add_cache_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cache = commands.add_parser("cache", help="inspect and manage the processed-song store")
    cache.add_argument("--config", metavar="FILE", help="a TOML settings file")
    actions = cache.add_subparsers(dest="action", required=True)
    actions.add_parser("stats", help="entries, bytes, hits and failures, as JSON")
    actions.add_parser("list", help="the stored songs, most recently played first")
    actions.add_parser("verify", help="check every file's checksum; drop damaged ones")
    actions.add_parser("clear", help="delete every stored song (with no bot running on it)")
    warm = actions.add_parser("warm", help="resolve and store the songs listed in a file")
    warm.add_argument("file", help="one query or URL per line ('#' starts a comment)")


def cache_command(settings: Settings, args: argparse.Namespace) -> int:
    actions: dict[str, Callable[[ProcessedSongStore], Awaitable[int]]] = {
        "stats": _stats,
        "list": _list,
        "verify": _verify,
    }
    if args.action == "warm":
        listing = Path(args.file)
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            print(f"musicbot: cannot read {listing}: {exc.strerror}", file=sys.stderr)
            return 2
        queries = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        return trio.run(_warm, settings, queries)
    if args.action == "clear":
        return trio.run(_clear, settings)
    action = actions[args.action]

    async def run() -> int:
        async with open_song_store(settings) as store:
            return await action(store)

    return trio.run(run)


@asynccontextmanager
async def _store_to_ourselves(settings: Settings) -> AsyncIterator[ProcessedSongStore]:
    """The store with no other process on it (the store's lock, exclusively)."""
    store = open_store(
        settings.cache_dir,
        max_bytes=settings.store_max_bytes,
        max_track_seconds=settings.store_max_track_duration,
        exclusive=True,
    )
    async with AsyncExitStack() as stack:
        try:  # only opening: nothing the body raises is about the lock
            opened = await stack.enter_async_context(store)
        except StoreLocked:
            raise StartupError(
                f"another musicbot is using the cache directory {settings.cache_dir}: stop it"
                " first (`musicbot cache clear` needs the store to itself)"
            ) from None
        yield opened


async def _stats(store: ProcessedSongStore) -> int:
    print(json.dumps(attrs.asdict(store.statistics()), indent=2))
    return 0


async def _list(store: ProcessedSongStore) -> int:
    songs = list(reversed(await store.songs()))
    for song in songs:
        print(
            f"{format_duration(song.duration):>8}  {song.size / 2**20:7.2f} MiB  "
            f"{song.play_count:4} plays  {song.title}  [{song.key}]"
        )
    total = sum(song.size for song in songs)
    print(f"{len(songs)} songs, {total / 2**20:.1f} MiB")
    return 0


async def _verify(store: ProcessedSongStore) -> int:
    rebuilt = store.rebuilt  # opening the store rebuilt a damaged index
    if rebuilt is not None:
        print(
            f"the index was damaged: rebuilt from the song files ({rebuilt.songs} kept,"
            f" {rebuilt.unreadable} unreadable deleted); the damaged one is {rebuilt.damaged_copy}"
        )
    report = await store.verify_all()  # drops the damaged songs that no bot is playing
    kept = {song.key for song in await store.songs()}
    for key in report.corrupt:
        if key in kept:
            print(f"damaged, in use by a bot (dropped at its next lookup): {key}")
        else:
            print(f"damaged, dropped: {key}")
    print(f"{report.checked} checked, {len(report.corrupt)} damaged")
    return 1 if report.corrupt or rebuilt is not None else 0


async def _clear(settings: Settings) -> int:
    async with _store_to_ourselves(settings) as store:
        songs = await store.songs()
        for song in songs:
            await store.drop(song.key)
    print(f"deleted {len(songs)} songs")
    return 0


def _progress(done: int, total: int, label: str) -> None:
    filled = BAR * done // max(total, 1)
    line = f"\r[{'#' * filled}{'-' * (BAR - filled)}] {done}/{total} {label[:40]:<40}"
    print(line, end="", file=sys.stderr, flush=True)


async def _warm(settings: Settings, queries: list[str]) -> int:
    resolver = resolver_for(settings)
    stored = failed = 0
    async with (
        open_song_store(settings) as store,
        open_store_backed_source(frame_source_for(settings), store) as source,
    ):
        for done, query in enumerate(queries):
            _progress(done, len(queries), query)
            try:
                resolved = await resolver.resolve(query)
            except ResolveError as exc:
                failed += 1
                print(f"\n{query}: {exc}", file=sys.stderr)
                continue
            for track in resolved.tracks:
                _progress(done, len(queries), track.title)
                before = source.statistics().warmed
                await source.warm(track)
                stored += source.statistics().warmed - before
        _progress(len(queries), len(queries), "done")
        print(file=sys.stderr)
    print(f"{stored} songs stored, {failed} queries failed")
    return 1 if failed else 0
