"""StoreBackedSource: the FrameSource and Warmer that put the processed-song store to work.

- A stored song at volume 100 from its start is read straight from its Ogg file: no ffmpeg.
- With a volume or a seek, ffmpeg reads the stored file instead of the network.
- A song not yet stored is transcoded from the network, and the packets the player sends are
  copied into the store as they go; the copy is kept only if the song played to its end.
- `warm(track)` transcodes an upcoming song into the store at full speed, at a lower CPU
  priority than playback, a few at a time for the whole bot.

The store writes happen in background tasks of this source's own nursery, so the frame path
only hands each packet over (one memory-channel send) and never waits on the disk. Nor on the
index: play counts are recorded in the background too, and the store answers a miss (the song
plays from the network) when its index cannot be read.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import attrs
import trio

from musicbot.audio.ffmpeg import FfmpegSource
from musicbot.audio.store import ProcessedSongStore, StoredSong, StoredSongError
from musicbot.core.messages import Track
from musicbot.core.ports import SourceError
from musicbot.core.services import open_service_nursery

log = logging.getLogger(__name__)

WARM_NICENESS = 10
"""How much nicer than the bot a warming ffmpeg runs (playback transcodes keep priority 0)."""


@attrs.frozen
class SourceStatistics:
    played_from_store: int
    transcoded_from_store_file: int
    transcoded_from_network: int
    copies_started: int
    warmed: int
    warm_failures: int
    warming: int


class StoreBackedSource:
    """Made by `open_store_backed_source`."""

    def __init__(
        self,
        ffmpeg: FfmpegSource,
        store: ProcessedSongStore,
        copies: trio.Nursery,
        warm_limiter: trio.CapacityLimiter,
    ) -> None:
        self._ffmpeg = ffmpeg
        self._store = store
        self._copies = copies
        self._warm_limiter = warm_limiter
        self._warming: set[str] = set()
        self._from_store = self._from_store_file = self._from_network = 0
        self._copies_started = self._warmed = self._warm_failures = 0
        self._copying = 0
        self._copies_done = trio.Event()
        self._copies_done.set()

    # --- FrameSource -------------------------------------------------------------------------

    def open(
        self, track: Track, *, start: float = 0.0, volume: int = 100
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._open(track, start, volume)

    @asynccontextmanager
    async def _open(
        self, track: Track, start: float, volume: int
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        # Only songs the resolver could name are kept: a bare stream URL may never come again.
        key = self._store.key_for(track) if track.key else None
        song = await self._store.lookup(key) if key is not None else None
        if song is not None:
            async with contextlib.AsyncExitStack() as stack:
                stored = await self._open_stored(stack, song, track, start, volume)
                if stored is not None:
                    # Bookkeeping for eviction: not worth delaying the first frame for.
                    self._copies.start_soon(self._store.mark_played, song.key)
                    yield stored
                    return
        async with self._ffmpeg.open(track, start=start, volume=volume) as frames:
            self._from_network += 1
            copying = key is not None and start == 0 and volume == 100 and key not in self._warming
            if not copying or key is None:
                yield frames
                return
            copy_tx, copy_rx = trio.open_memory_channel[bytes | None](math.inf)
            self._copying += 1
            self._copies_done = trio.Event()
            self._copies.start_soon(self._keep, key, track, copy_rx)
            self._copies_started += 1
            tee = _Tee(frames, copy_tx)
            with copy_tx:
                yield tee
                if tee.complete:
                    copy_tx.send_nowait(None)

    async def _open_stored(
        self,
        stack: contextlib.AsyncExitStack,
        song: StoredSong,
        track: Track,
        start: float,
        volume: int,
    ) -> AsyncIterator[bytes] | None:
        """The frames of a stored song, open in `stack`: read straight from its file at volume
        100 from the start, else transcoded from it by ffmpeg, holding the file meanwhile. None
        if the file turned out damaged (dropped: the song plays from the network) or a process
        is deleting it."""
        try:
            if start == 0 and volume == 100:
                guarded = _Guarded()
                # Pushed first, so it runs once the file is closed: a drop skips a file in use.
                stack.push_async_callback(self._drop_if_damaged, guarded)
                guarded.packets = await stack.enter_async_context(self._store.open_stored(song))
                self._from_store += 1
                return guarded
            await stack.enter_async_context(self._store.holding(song))
        except StoredSongError as damaged:
            if damaged.key != song.key:
                raise
            await self._store.drop(song.key)  # damaged before a frame went out, or being deleted
            return None
        local = attrs.evolve(track, url=str(song.path))
        frames = await stack.enter_async_context(
            self._ffmpeg.open(local, start=start, volume=volume)
        )
        self._from_store_file += 1
        return frames

    async def _drop_if_damaged(self, guarded: _Guarded) -> None:
        if guarded.damaged_key is not None:
            self._copies.start_soon(self._store.drop, guarded.damaged_key)

    async def _keep(
        self, key: str, track: Track, packets: trio.MemoryReceiveChannel[bytes | None]
    ) -> None:
        """Write what the player sent into the store; keep it only if the song was whole."""
        try:
            writing = self._store.writer(key, title=track.title, duration=track.duration)
            async with packets, writing as writer:
                async for packet in packets:
                    if packet is None:  # the song played to its end
                        await writer.commit()
                        return
                    writer.add(packet)
        finally:
            self._copying -= 1
            if not self._copying:
                self._copies_done.set()

    async def wait_copies_done(self) -> None:
        """Until every copy being written has been kept or abandoned."""
        await self._copies_done.wait()

    # --- Warmer ------------------------------------------------------------------------------

    async def warm(self, track: Track) -> None:
        key = self._store.key_for(track) if track.key else None
        if key is None or key in self._warming or await self._store.lookup(key) is not None:
            return
        async with self._warm_limiter:
            self._warming.add(key)
            try:
                await self._transcode_into_store(key, track)
            except SourceError as exc:
                self._warm_failures += 1
                log.debug("warming %r failed: %s", track.title, exc)
            finally:
                self._warming.discard(key)

    async def _transcode_into_store(self, key: str, track: Track) -> None:
        async with self._store.writer(key, title=track.title, duration=track.duration) as writer:
            if not writer.active:
                return  # stored meanwhile, or being written by a player's copy
            async with self._ffmpeg.open(track) as frames:
                _lower_priority(frames)
                async for packet in frames:
                    writer.add(packet)
                if getattr(frames, "whole", True) is False:
                    return  # a download cut short: not the whole song, not kept
            if await writer.commit() is not None:
                self._warmed += 1

    def statistics(self) -> SourceStatistics:
        return SourceStatistics(
            played_from_store=self._from_store,
            transcoded_from_store_file=self._from_store_file,
            transcoded_from_network=self._from_network,
            copies_started=self._copies_started,
            warmed=self._warmed,
            warm_failures=self._warm_failures,
            warming=len(self._warming),
        )


class _Tee:
    """The player's frames, each also handed to the store's copy (one channel send)."""

    def __init__(
        self, frames: AsyncIterator[bytes], copy: trio.MemorySendChannel[bytes | None]
    ) -> None:
        self._frames = frames
        self._copy = copy
        self.complete = False

    def __aiter__(self) -> _Tee:
        return self

    async def __anext__(self) -> bytes:
        try:
            frame = await self._frames.__anext__()
        except StopAsyncIteration:
            # Ended, and (for ffmpeg) read to the end without an error: the whole song.
            self.complete = getattr(self._frames, "whole", True) is not False
            raise
        self._copy.send_nowait(frame)
        return frame


class _Guarded:
    """A stored song's packets; a file found damaged mid-song ends the track with a plain
    SourceError, and is dropped from the store once closed (it is fetched again next time)."""

    def __init__(self) -> None:
        self.packets: AsyncIterator[bytes] | None = None
        self.damaged_key: str | None = None

    def __aiter__(self) -> _Guarded:
        return self

    async def __anext__(self) -> bytes:
        assert self.packets is not None, "read before the stored song was opened"
        try:
            return await self.packets.__anext__()
        except StoredSongError as damaged:
            self.damaged_key = damaged.key
            raise SourceError("the stored copy of this song was damaged; play it again") from None


def _lower_priority(frames: AsyncIterator[bytes]) -> None:
    process = getattr(frames, "process", None)
    if process is None:
        return
    with contextlib.suppress(OSError, AttributeError):  # gone, or no priorities here
        os.setpriority(os.PRIO_PROCESS, process.pid, WARM_NICENESS)


@asynccontextmanager
async def open_store_backed_source(
    ffmpeg: FfmpegSource, store: ProcessedSongStore, *, warm_concurrency: int = 2
) -> AsyncIterator[StoreBackedSource]:
    """The source for the life of the context; copies still being written when it closes are
    abandoned (a song that did not finish is never kept)."""
    async with open_service_nursery("store-backed source closing") as copies:
        yield StoreBackedSource(ffmpeg, store, copies, trio.CapacityLimiter(warm_concurrency))
