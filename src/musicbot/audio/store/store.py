"""ProcessedSongStore: transcoded songs kept on disk as Ogg Opus, so no song is processed twice.

    async with open_store(directory, max_bytes=2 * 2**30) as store:
        key = store.key_for(track)                    # None: live, too long, no identity
        song = await store.lookup(key) if key else None
        if song is not None:                          # a hit: no ffmpeg at all
            async with store.open_stored(song) as frames:
                ...
            await store.mark_played(song.key)
        else:                                         # a miss: transcode, and keep the packets
            async with store.writer(key, title=track.title, duration=track.duration) as writer:
                ... writer.add(packet) for each packet sent ...
                await writer.commit()                 # only once the whole track went through

The Trio face of three blocking parts: the SQLite index (`index.py`, one worker thread at a
time), file I/O (worker threads, at most `io_threads` at once) and the song files. A commit is
atomic (temporary file, fsync, rename, then the index row); opening the store reconciles the
index with the files, so a crash at any point leaves no half-written song; past `max_bytes`, the
least recently played songs are evicted, never one being read. See docs/store.md.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import sqlite3
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Literal, TypeVar, TypeVarTuple, Unpack

import trio

from musicbot.audio.ogg import OggError
from musicbot.audio.store import files
from musicbot.audio.store.errors import StoredSongError
from musicbot.audio.store.index import SongIndex
from musicbot.audio.store.keys import track_key
from musicbot.audio.store.oggcheck import FileCheck, check_file
from musicbot.audio.store.oggwrite import DEFAULT_PRE_SKIP, OPUS_SAMPLE_RATE, OggOpusWriter
from musicbot.audio.store.reader import StoredStream, open_stored_stream
from musicbot.audio.store.values import (
    ReconcileReport,
    ResolvedEntry,
    StoredSong,
    StoreStatistics,
    VerifyReport,
)
from musicbot.audio.store.writer import Filing, Outcome, SongWriter, WriterLimits, open_writer
from musicbot.core.messages import Track

log = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

DEFAULT_MAX_BYTES = 2 * 2**30
DEFAULT_MAX_TRACK_SECONDS = 3600.0


@asynccontextmanager
async def open_store(
    directory: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_track_seconds: float = DEFAULT_MAX_TRACK_SECONDS,
    clock: Callable[[], float] = time.time,
    io_threads: int = 4,
) -> AsyncIterator[ProcessedSongStore]:
    """Open (creating it if needed) the store in `directory` for the life of the context.

    Takes the directory's lock (StoreLocked if another process has it), opens the index,
    reconciles it with the files (`store.reconciled` says what was cleaned up) and evicts down
    to `max_bytes`. `clock` gives the wall-clock seconds recorded as created and last played.
    """
    store = ProcessedSongStore(
        Path(directory),
        max_bytes=max_bytes,
        max_track_seconds=max_track_seconds,
        clock=clock,
        io_threads=io_threads,
    )
    await store._open()
    try:
        yield store
    finally:
        # Shielded, with no deadline: virtual clocks jump while threads work.
        with trio.CancelScope(shield=True):
            await store._close()


class ProcessedSongStore:
    """See the module docstring. Made by `open_store`."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        max_track_seconds: float,
        clock: Callable[[], float],
        io_threads: int,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if not max_track_seconds > 0:
            raise ValueError(f"max_track_seconds must be positive, got {max_track_seconds}")
        self.directory = directory
        self.songs_dir = directory / files.SONGS_DIR
        self.max_bytes = max_bytes
        self.max_track_seconds = max_track_seconds
        self._clock = clock
        self._db_limiter = trio.CapacityLimiter(1)
        self._io_limiter = trio.CapacityLimiter(io_threads)
        self._filing = Filing(
            WriterLimits(max_seconds=max_track_seconds, max_bytes=max_bytes),
            self._io_limiter,
            self._publish,
            self._report,
            self._after_commit,
        )
        self._index: SongIndex | None = None
        self._lock_fd: int | None = None
        self._mutating = trio.Lock()
        """Held while the set of entries changes (commit, drop, eviction)."""
        self._writing: set[str] = set()
        self._reading: collections.Counter[str] = collections.Counter()
        self._doomed: set[str] = set()
        """Keys being deleted: looked up as misses, refused to readers."""
        self._suspect: set[str] = set()
        """Keys whose file a reader found bad: dropped by the next lookup or drop."""
        self._failing = False
        """A write failed and none has committed since: further failures log quietly."""
        self.reconciled = ReconcileReport(0, 0, 0)
        self._entries = self._bytes = 0
        self._hits = self._misses = 0
        self._committed = self._abandoned = self._failures = 0
        self._disk_full = False
        self._evictions = self._corrupt_dropped = 0

    # --- opening and closing -------------------------------------------------------------------

    async def _open(self) -> None:
        self._index = await self._db(self._open_index)
        try:
            self.reconciled = await self._db(self._reconcile)
            self._entries, self._bytes = await self._db(self._index.totals)
            if self.reconciled != ReconcileReport(0, 0, 0):
                log.info("store %s: cleaned up at startup: %s", self.directory, self.reconciled)
            async with self._mutating:
                await self._evict(keep=None)
        except BaseException:
            # Shielded, with no deadline: virtual clocks jump while threads work.
            with trio.CancelScope(shield=True):
                await self._close()
            raise

    def _open_index(self) -> SongIndex:
        self.songs_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = files.lock_directory(self.directory)
        try:
            index = SongIndex.open(self.directory / files.INDEX_NAME, self.songs_dir)
        except BaseException:
            files.unlock(lock_fd)
            raise
        self._lock_fd = lock_fd
        return index

    async def _close(self) -> None:
        index, self._index = self._index, None
        if index is not None:
            await self._db(index.close)
        lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None:
            files.unlock(lock_fd)

    def _reconcile(self) -> ReconcileReport:
        """Make the index and the songs directory agree (blocking; at open)."""
        index = self._live_index
        listing = files.list_songs(self.songs_dir)
        for name in listing.temporary:
            files.remove(self.songs_dir / name)
        orphan_rows = 0
        named: set[str] = set()
        for song in index.songs():
            named.add(song.path.name)
            size = listing.songs.get(song.path.name)
            if size == song.size:
                continue
            log.warning(
                "store: dropping %r: its file %s is %s",
                song.key,
                song.path.name,
                "missing" if size is None else f"{size} bytes, not {song.size}",
            )
            index.delete(song.key)
            files.remove(song.path)
            orphan_rows += 1
        orphans = [name for name in listing.songs if name not in named] + list(listing.other)
        for name in orphans:
            files.remove(self.songs_dir / name)
        return ReconcileReport(len(orphans), orphan_rows, len(listing.temporary))

    # --- keys and lookups ----------------------------------------------------------------------

    def key_for(self, track: Track) -> str | None:
        """The key to store `track` under, or None when it is never stored: a live stream, a
        track longer than max_track_seconds, or one without a stable identity."""
        if track.live:
            return None
        if track.duration is not None and track.duration > self.max_track_seconds:
            return None
        return track_key(track)

    async def lookup(self, key: str) -> StoredSong | None:
        """The stored song of `key`, checked cheaply (its file exists and has the recorded
        size; `verify` reads it all); None on a miss. An entry failing the check is dropped."""
        if key in self._writing or key in self._doomed:
            self._misses += 1
            return None
        # One trip to a worker thread for both: each costs a /play from the store 0.1-0.3 ms.
        song, size = await self._db(self._entry_and_size, key)
        if song is not None and key in self._suspect:
            await self._drop(key, only=song, reason="a reader found it damaged")
            song = None
        if song is not None and size != song.size:
            found = "missing" if size is None else f"{size} bytes, not {song.size}"
            await self._drop(key, only=song, reason=f"its file is {found}", corrupt=True)
            song = None
        if song is None:
            self._misses += 1
        else:
            self._hits += 1
        return song

    def _entry_and_size(self, key: str) -> tuple[StoredSong | None, int | None]:
        song = self._live_index.get(key)
        return song, None if song is None else _size_of(song.path)

    async def songs(self) -> list[StoredSong]:
        """Every stored song, least recently played first."""
        return await self._db(self._live_index.songs)

    async def mark_played(self, key: str) -> bool:
        """Record one more play of `key`, now; False if it is not stored."""
        return await self._db(self._live_index.mark_played, key, self._clock())

    # --- writing -------------------------------------------------------------------------------

    def writer(
        self,
        key: str | None,
        *,
        title: str = "",
        duration: float | None = None,
        pre_skip: int = DEFAULT_PRE_SKIP,
    ) -> AbstractAsyncContextManager[SongWriter]:
        """A writer for the song of `key` (see `SongWriter`), for the life of the context.

        It is a refused writer (taking packets and doing nothing) when `key` is None, the song
        is known to be too long, already stored, or being written by another writer. A song
        `duration` (what the source announced) that ends more than 2 s short of it is not kept.
        `pre_skip` is the OpusHead pre-skip of the stream the packets come from (ffmpeg: 312).
        The packets must be the whole song, from 0 s, at 100 % volume.
        """
        return self._writer(key, title, duration, pre_skip)

    @asynccontextmanager
    async def _writer(
        self, key: str | None, title: str, duration: float | None, pre_skip: int
    ) -> AsyncIterator[SongWriter]:
        if key is None:
            yield SongWriter("", reason="the track has no key")
            return
        if duration is not None and duration > self.max_track_seconds:
            yield SongWriter(key, reason=f"longer than {self.max_track_seconds:g} s")
            return
        if key in self._writing:
            yield SongWriter(key, reason="another writer is writing it")
            return
        self._writing.add(key)  # before the await: two writers must not both pass the check
        try:
            stored = await self._db(self._live_index.get, key) is not None
        except BaseException:
            self._writing.discard(key)
            raise
        if stored:
            self._writing.discard(key)
            yield SongWriter(key, reason="already stored")
            return
        try:
            tags = [("TITLE", title)] if title else []
            ogg = OggOpusWriter(
                serial=zlib.crc32(key.encode()),
                pre_skip=pre_skip,
                tags=[*tags, ("MUSICBOT_KEY", key)],
            )
            writer = SongWriter(key, title=title, duration=duration, ogg=ogg, filing=self._filing)
            async with open_writer(writer, self.songs_dir, files.temp_name(key)) as running:
                yield running
        finally:
            self._writing.discard(key)

    async def _publish(self, key: str, temporary: Path, check: FileCheck, title: str) -> StoredSong:
        """Move a verified file into place and index it."""
        async with self._mutating:
            now = self._clock()
            song = StoredSong(
                key=key,
                path=self.songs_dir / files.song_name(key),
                title=title,
                duration=check.samples / OPUS_SAMPLE_RATE,
                size=check.size,
                packets=check.packets,
                created=now,
                last_played=now,
                play_count=1,
                checksum=check.sha256,
            )
            # Rename, then the row: a crash in between leaves an orphan file, deleted at the next
            # open. Shielded so a cancellation cannot stop between the two either.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(
                    _move_into_place, temporary, song.path, limiter=self._io_limiter
                )
                try:
                    self._entries, self._bytes = await self._db(self._put, song)
                except sqlite3.Error:
                    await trio.to_thread.run_sync(files.remove, song.path, limiter=self._io_limiter)
                    raise
        return song

    async def _after_commit(self, key: str) -> None:
        async with self._mutating:
            await self._evict(keep=key)

    def _put(self, song: StoredSong) -> tuple[int, int]:
        index = self._live_index
        index.put(song)
        return index.totals()

    def _report(self, key: str, outcome: Outcome, reason: str, error: BaseException | None) -> None:
        if outcome is Outcome.COMMITTED:
            self._committed += 1
            self._disk_full = self._failing = False
            log.debug("store: committed %r", key)
        elif outcome is Outcome.ABANDONED:
            self._abandoned += 1
            log.debug("store: not keeping %r: %s", key, reason)
        else:
            self._failures += 1
            self._disk_full = _is_disk_full(error)
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "store: cannot keep %r, playing on without it: %s", key, reason)
            self._failing = True

    # --- reading -------------------------------------------------------------------------------

    def open_stored(
        self, song: StoredSong, *, start: float = 0.0
    ) -> AbstractAsyncContextManager[StoredStream]:
        """The Opus packets of `song` from `start` seconds, read ahead in worker threads.

        Raises StoredSongError (on open, or from the iteration) when the file is missing,
        truncated or corrupt: drop the entry (`await store.drop(song.key)`) and fetch again.
        While the context is open the song is never evicted.
        """
        return self._open_stored(song, start)

    @asynccontextmanager
    async def _open_stored(self, song: StoredSong, start: float) -> AsyncIterator[StoredStream]:
        if song.key in self._doomed:
            raise StoredSongError(song.key, "it is being deleted")
        self._reading[song.key] += 1
        try:
            async with open_stored_stream(
                song, start=start, limiter=self._io_limiter, on_error=self._found_damaged
            ) as stream:
                yield stream
        finally:
            self._reading[song.key] -= 1
            if not self._reading[song.key]:
                del self._reading[song.key]

    def _found_damaged(self, error: StoredSongError) -> None:
        if error.key not in self._suspect:
            log.warning("store: %s", error.reason)
        self._suspect.add(error.key)

    # --- dropping, verifying, evicting ---------------------------------------------------------

    async def drop(self, key: str) -> bool:
        """Delete the entry of `key` and its file; False if there was none. Counted as a corrupt
        entry dropped when a reader found its file damaged."""
        return await self._drop(key, reason="dropped")

    async def verify(self, key: str) -> bool:
        """Read the whole file of `key`: Ogg structure, CRCs, packet count and SHA-256 against
        the index. A file that fails is dropped. False if it failed or is not stored."""
        song = await self._db(self._live_index.get, key)
        return song is not None and await self._verify(song) == "intact"

    async def verify_all(self) -> VerifyReport:
        """`verify` every entry, one file at a time; the corrupt ones are dropped."""
        songs = await self._db(self._live_index.songs)
        corrupt = [song.key for song in songs if await self._verify(song) == "corrupt"]
        return VerifyReport(len(songs), tuple(corrupt))

    async def _verify(self, song: StoredSong) -> Literal["intact", "corrupt", "gone"]:
        try:
            check = await trio.to_thread.run_sync(check_file, song.path, limiter=self._io_limiter)
        except (OSError, OggError) as exc:
            problem = str(exc)
        else:
            found = (check.size, check.packets, check.sha256)
            if found == (song.size, song.packets, song.checksum):
                return "intact"
            problem = f"{check.size} bytes, {check.packets} packets, sha256 {check.sha256[:12]}"
        reason = f"verification failed: {problem}"
        # Not dropped: evicted or dropped meanwhile, so its file went away while being read.
        dropped = await self._drop(song.key, only=song, reason=reason, corrupt=True)
        return "corrupt" if dropped else "gone"

    async def _drop(
        self, key: str, *, only: StoredSong | None = None, reason: str, corrupt: bool = False
    ) -> bool:
        """Delete `key`'s row and file (only if the row is still `only`, when given)."""
        corrupt = corrupt or key in self._suspect
        async with self._mutating:
            dropped, totals = await self._db(self._delete, key, only)
            self._entries, self._bytes = totals
            self._suspect.discard(key)
        if dropped is not None:
            if corrupt:
                self._corrupt_dropped += 1
                log.warning("store: dropped %r: %s", key, reason)
            else:
                log.info("store: dropped %r: %s", key, reason)
        return dropped is not None

    def _delete(
        self, key: str, only: StoredSong | None
    ) -> tuple[StoredSong | None, tuple[int, int]]:
        """Delete the row, then the file: a crash in between leaves an orphan file, which the next
        open deletes."""
        index = self._live_index
        current = index.get(key)
        if current is None or (only is not None and current != only):
            return None, index.totals()
        index.delete(key)
        files.remove(current.path)
        return current, index.totals()

    async def _evict(self, *, keep: str | None) -> None:
        """Delete least recently played entries until the bytes fit in max_bytes, skipping `keep`
        and songs being read. Call holding `_mutating`."""
        if self._bytes <= self.max_bytes:
            return
        excess = self._bytes - self.max_bytes
        victims = []
        for song in await self._db(self._live_index.songs):
            if excess <= 0:
                break
            if song.key == keep or song.key in self._reading or song.key in self._writing:
                continue
            victims.append(song)
            excess -= song.size
        self._doomed.update(song.key for song in victims)
        try:
            for song in victims:
                dropped, (self._entries, self._bytes) = await self._db(self._delete, song.key, song)
                if dropped is not None:
                    self._evictions += 1
                    log.info("store: evicted %r (%d bytes)", song.key, song.size)
        finally:
            self._doomed.difference_update(song.key for song in victims)
        if self._bytes > self.max_bytes:
            log.info("store: %d bytes over max_bytes: the rest is being read", excess)

    # --- the resolved-metadata cache -----------------------------------------------------------

    async def put_resolved(self, query: str, data: object) -> None:
        """Keep what `query` resolved to (JSON-serialisable `data`), stamped now."""
        blob = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        await self._db(self._live_index.put_resolved, query, blob, self._clock())

    async def get_resolved(
        self, query: str, *, max_age: float | None = None
    ) -> ResolvedEntry | None:
        """The entry for `query`, unless there is none or it is older than `max_age` seconds."""
        found = await self._db(self._live_index.get_resolved, query)
        if found is None:
            return None
        blob, stored_at = found
        if max_age is not None and stored_at < self._clock() - max_age:
            return None
        return ResolvedEntry(query, json.loads(blob), stored_at)

    async def all_resolved(self, *, max_age: float | None = None) -> list[ResolvedEntry]:
        """Every entry no older than `max_age` seconds, oldest first: to warm a cache at start."""
        since = -float("inf") if max_age is None else self._clock() - max_age
        rows = await self._db(self._live_index.all_resolved, since)
        return [ResolvedEntry(query, json.loads(blob), at) for query, blob, at in rows]

    async def purge_resolved(self, *, max_age: float) -> int:
        """Delete the entries older than `max_age` seconds; return how many."""
        return await self._db(self._live_index.purge_resolved, self._clock() - max_age)

    # --- statistics ----------------------------------------------------------------------------

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            entries=self._entries,
            bytes=self._bytes,
            max_bytes=self.max_bytes,
            hits=self._hits,
            misses=self._misses,
            writes_committed=self._committed,
            writes_abandoned=self._abandoned,
            write_failures=self._failures,
            disk_full=self._disk_full,
            evictions=self._evictions,
            corrupt_dropped=self._corrupt_dropped,
            writing=len(self._writing),
            reading=sum(self._reading.values()),
        )

    # --- plumbing ------------------------------------------------------------------------------

    @property
    def _live_index(self) -> SongIndex:
        if self._index is None:
            raise RuntimeError(f"the store in {self.directory} is closed")
        return self._index

    async def _db(self, function: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """Run an index call in the index's worker thread (one at a time)."""
        return await trio.to_thread.run_sync(function, *args, limiter=self._db_limiter)


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _move_into_place(temporary: Path, final: Path) -> None:
    os.replace(temporary, final)
    try:
        files.fsync_directory(final.parent)
    except OSError:
        files.remove(final)
        raise


def _is_disk_full(error: BaseException | None) -> bool:
    if isinstance(error, OSError):
        return error.errno in files.DISK_FULL_ERRNOS
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return False
