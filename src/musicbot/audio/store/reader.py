"""StoredStream: a stored song's Opus packets, read ahead from disk by a task of its own.

A read-ahead task reads the file `chunk_size` bytes at a time in a worker thread, checks and
demuxes each chunk there (`VerifyingDemuxer`: CRCs, page order, a proper end), and queues the
packets, staying at most three chunks (about 12 s at 128 kbps) ahead. The consumer takes packets
from memory: the 20 ms loop never waits on the disk, except for the first chunk, which
`open_stored_stream` reads before it yields. A file found missing, unreadable, corrupt or
truncated raises StoredSongError from the iteration (or from the open, if it is bad from the
start) after the packets before the fault.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import trio

from musicbot.audio.ogg import OggError
from musicbot.audio.store import locks
from musicbot.audio.store.errors import StoredSongError
from musicbot.audio.store.oggcheck import CHUNK_SIZE, VerifyingDemuxer
from musicbot.audio.store.oggwrite import OPUS_SAMPLE_RATE
from musicbot.audio.store.toc import packet_samples
from musicbot.audio.store.values import StoredSong
from musicbot.core.services import open_service_nursery

_Item = list[bytes] | StoredSongError


class StoredStream:
    """`async for packet in stream: ...` Packets queued in memory are handed out without a
    checkpoint, like OpusStream: a consumer that never sleeps should checkpoint itself."""

    def __init__(
        self,
        key: str,
        packets_rx: trio.MemoryReceiveChannel[_Item],
        on_error: Callable[[StoredSongError], None],
    ) -> None:
        self.key = key
        self._packets_rx = packets_rx
        self._on_error = on_error
        self._ready: deque[bytes] = deque()
        self._ended = False
        self.packets = 0
        """Packets handed out so far."""

    def __aiter__(self) -> StoredStream:
        return self

    async def __anext__(self) -> bytes:
        ready = self._ready
        while not ready:
            if self._ended:
                raise StopAsyncIteration
            await self._fill()
        self.packets += 1
        return ready.popleft()

    async def wait_first(self) -> bool:
        """Wait until a packet is queued (True) or the song ended without one (False)."""
        while not self._ready and not self._ended:
            await self._fill()
        return bool(self._ready)

    async def _fill(self) -> None:
        try:
            item = await self._packets_rx.receive()
        except trio.EndOfChannel:
            self._ended = True
            return
        if isinstance(item, StoredSongError):
            self._ended = True
            self._on_error(item)
            raise item
        self._ready.extend(item)


def _read_chunk(fd: int, demuxer: VerifyingDemuxer, size: int) -> tuple[list[bytes], bool]:
    """Read and demux the next chunk (blocking): (packets, whether the file ended)."""
    data = os.read(fd, size)
    if not data:
        demuxer.finish()
        return [], True
    return demuxer.feed(data), False


async def _read_ahead(
    fd: int,
    song: StoredSong,
    packets_tx: trio.MemorySendChannel[_Item],
    *,
    start_samples: int,
    limiter: trio.CapacityLimiter,
    chunk_size: int,
) -> None:
    demuxer = VerifyingDemuxer()
    skipped = 0
    async with packets_tx:
        while True:
            try:
                packets, ended = await trio.to_thread.run_sync(
                    _read_chunk, fd, demuxer, chunk_size, limiter=limiter
                )
            except (OSError, OggError) as exc:
                await packets_tx.send(StoredSongError(song.key, f"{song.path.name}: {exc}"))
                return
            if ended and demuxer.demuxer.packets != song.packets:
                reason = f"{demuxer.demuxer.packets} packets, the index says {song.packets}"
                await packets_tx.send(StoredSongError(song.key, f"{song.path.name}: {reason}"))
                return
            skip = 0
            while skip < len(packets) and skipped + packet_samples(packets[skip]) <= start_samples:
                skipped += packet_samples(packets[skip])
                skip += 1
            del packets[:skip]
            if packets:
                await packets_tx.send(packets)
            if ended:
                return


@asynccontextmanager
async def open_stored_stream(
    song: StoredSong,
    *,
    start: float = 0.0,
    limiter: trio.CapacityLimiter,
    on_error: Callable[[StoredSongError], None],
    chunk_size: int = CHUNK_SIZE,
) -> AsyncIterator[StoredStream]:
    """The packets of `song` from `start` seconds (from the packet holding that instant).

    Raises StoredSongError (after telling `on_error`) if the file cannot be read from the start,
    and (without telling) if a process is deleting it. The file is held shared (locks.py) until
    the context ends, so that no process deletes it meanwhile.
    """
    if not start >= 0:
        raise ValueError(f"start must be a number of seconds >= 0, got {start}")
    try:
        # Held shared while it is read: no process deletes a song being played.
        fd = await trio.to_thread.run_sync(locks.open_shared, song.path, limiter=limiter)
    except locks.SongBeingDeleted:  # evicted or dropped under us: not damaged
        raise StoredSongError(song.key, "it is being deleted") from None
    except OSError as exc:
        error = StoredSongError(song.key, f"cannot open {song.path}: {exc}")
        on_error(error)
        raise error from exc
    try:
        packets_tx, packets_rx = trio.open_memory_channel[_Item](1)
        stream = StoredStream(song.key, packets_rx, on_error)
        read_ahead = partial(
            _read_ahead,
            start_samples=round(start * OPUS_SAMPLE_RATE),
            limiter=limiter,
            chunk_size=chunk_size,
        )
        async with open_service_nursery("stored song closing") as readers:
            readers.start_soon(read_ahead, fd, song, packets_tx, name=f"read {song.path.name}")
            await stream.wait_first()
            yield stream
    finally:
        os.close(fd)  # (lets go of the lock) the reader's thread has returned: its task waited
