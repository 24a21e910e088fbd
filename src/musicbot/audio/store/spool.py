"""Spool: bytes appended in the Trio thread, written to a temporary file from worker threads.

`append()` is synchronous and cheap (a bytearray extend); every `chunk_size` bytes it hands a
chunk to `run()`, the flusher task, over an unbounded memory channel, so the caller never waits
on the disk. The flusher writes each chunk in a worker thread and hashes it (SHA-256) as it goes.
The first OSError ends the writing: the file is deleted at once (a full disk gets its space
back), `error` keeps the exception and `on_error` hears of it; later appends are dropped.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import trio

from musicbot.audio.store import files

log = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024


class Spool:
    """One temporary file being filled. Run `run()` in a nursery for the spool's lifetime."""

    def __init__(
        self,
        path: Path,
        fd: int,
        *,
        limiter: trio.CapacityLimiter,
        on_error: Callable[[OSError], None],
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.path = path
        self._fd: int | None = fd
        self._limiter = limiter
        self._on_error = on_error
        self._chunk_size = chunk_size
        self._pending = bytearray()
        self._chunks_tx, self._chunks_rx = trio.open_memory_channel[bytes](math.inf)
        self._flushed = trio.Event()
        self._digest = hashlib.sha256()
        self.size = 0
        """Bytes appended."""
        self.written = 0
        """Bytes written to the file."""
        self.backlog = 0
        """Bytes handed to the flusher and not written yet."""
        self.error: OSError | None = None
        self._stopped = False

    @classmethod
    async def create(
        cls,
        directory: Path,
        name: str,
        *,
        limiter: trio.CapacityLimiter,
        on_error: Callable[[OSError], None],
        chunk_size: int = CHUNK_SIZE,
    ) -> Spool:
        """A new, empty temporary file `directory/name`; OSError if it cannot be made."""
        path = directory / name
        fd = await trio.to_thread.run_sync(files.create_exclusive, path, limiter=limiter)
        return cls(path, fd, limiter=limiter, on_error=on_error, chunk_size=chunk_size)

    def append(self, data: bytes) -> None:
        """Queue `data` for the file. Never blocks; does nothing once writing failed."""
        if self.error is not None or self._stopped or not data:
            return
        self._pending += data
        self.size += len(data)
        if len(self._pending) >= self._chunk_size:
            self._hand_over()

    def _hand_over(self) -> None:
        chunk = bytes(self._pending)
        self._pending.clear()
        self.backlog += len(chunk)
        self._chunks_tx.send_nowait(chunk)

    async def run(self) -> None:
        """The flusher: write chunks as they come, until `finish()` or `stop()` closes the
        queue; after a `stop()`, delete the file."""
        async with self._chunks_rx:
            async for chunk in self._chunks_rx:
                if self.error is None and not self._stopped:
                    try:
                        await trio.to_thread.run_sync(self._write, chunk, limiter=self._limiter)
                    except OSError as exc:
                        await self._failed(exc)
                self.backlog -= len(chunk)
        if self._stopped and self.error is None:
            try:
                await trio.to_thread.run_sync(self.discard, limiter=self._limiter)
            except OSError as exc:
                log.warning("could not delete %s: %s", self.path, exc)
        self._flushed.set()

    def stop(self) -> None:
        """Write nothing more; the flusher deletes the file (the song is not being kept)."""
        self._stopped = True
        self._pending.clear()
        self._chunks_tx.close()

    async def finish(self) -> str | None:
        """Write what is left, fsync and close the file. Returns the SHA-256 of the bytes
        written, or None if writing failed (then `error` says why; the file is gone)."""
        if self._stopped:
            raise RuntimeError("finish() after stop()")
        if self._pending and self.error is None:
            self._hand_over()
        self._chunks_tx.close()
        await self._flushed.wait()
        if self.error is None:
            try:
                await trio.to_thread.run_sync(self._sync_and_close, limiter=self._limiter)
            except OSError as exc:
                await self._failed(exc)
        return None if self.error is not None else self._digest.hexdigest()

    def discard(self) -> None:
        """Close and delete the file (blocking; idempotent)."""
        try:
            self._close()
        finally:
            files.remove(self.path)

    async def _failed(self, exc: OSError) -> None:
        self.error = exc
        self._pending.clear()
        self._on_error(exc)
        with trio.CancelScope(shield=True):  # give the space back even while cancelled
            try:
                await trio.to_thread.run_sync(self.discard, limiter=self._limiter)
            except OSError as cleanup:
                log.warning("could not delete %s: %s", self.path, cleanup)

    def _write(self, chunk: bytes) -> None:
        assert self._fd is not None
        files.write_all(self._fd, chunk)
        self._digest.update(chunk)
        self.written += len(chunk)

    def _sync_and_close(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        self._close()

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
