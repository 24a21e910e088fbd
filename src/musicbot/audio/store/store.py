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

The Trio face of three blocking parts: the SQLite index (`index.py`: one worker thread writes,
one reads), file I/O (worker threads, at most `io_threads` at once) and the song files. A commit
is atomic (temporary file, fsync, rename, then the index row); opening the store reconciles the
index with the files, so a crash at any point leaves no half-written song; past `max_bytes`, the
least recently played songs are evicted, never one being read. See docs/store.md.

The index is bookkeeping, never a reason for a song not to play: an index call that fails (a
lock another process holds, a damaged file, an I/O error) is logged (once a minute at most) and
counted, and the caller gets a miss, a refused writer, a play not counted. A damaged index is
rebuilt from the song files (`rebuild.py`): at open before anything else, and while running in
the store's own background task, lookups answering misses meanwhile.
"""

from __future__ import annotations

import collections
import json
import logging
import math
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
from musicbot.audio.store.errors import IndexDamaged, StoredSongError
from musicbot.audio.store.index import SongIndex, is_damaged
from musicbot.audio.store.keys import track_key
from musicbot.audio.store.oggcheck import FileCheck, check_file
from musicbot.audio.store.oggwrite import DEFAULT_PRE_SKIP, OPUS_SAMPLE_RATE, OggOpusWriter
from musicbot.audio.store.reader import StoredStream, open_stored_stream
from musicbot.audio.store.rebuild import replace_index, song_from_file
from musicbot.audio.store.values import (
    RebuildReport,
    ReconcileReport,
    ResolvedEntry,
    StoredSong,
    StoreStatistics,
    VerifyReport,
)
from musicbot.audio.store.writer import Filing, Outcome, SongWriter, WriterLimits, open_writer
from musicbot.core.messages import Track
from musicbot.core.services import open_service_nursery

log = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

DEFAULT_MAX_BYTES = 2 * 2**30
DEFAULT_MAX_TRACK_SECONDS = 3600.0

TROUBLE_LOG_INTERVAL = 60.0
"""Seconds between warnings about the index failing (the rest log at debug level)."""


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
        async with open_service_nursery("song store closing") as housekeeping:
            store._housekeeping = housekeeping
            yield store
    finally:
        store._housekeeping = None
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
        self._index_path = directory / files.INDEX_NAME
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(1)
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
        self._housekeeping: trio.Nursery | None = None
        """Where a damaged index is rebuilt while the store runs."""
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
        self.rebuilt: RebuildReport | None = None
        """What the last rebuild of a damaged index found (None: no rebuild yet)."""
        self._index_damaged = False
        """The index was found damaged and is not rebuilt yet: everything is a miss."""
        self._index_errors = self._rebuilds = 0
        self._next_trouble_warning = -math.inf
        self._entries = self._bytes = 0
        self._hits = self._misses = 0
        self._committed = self._abandoned = self._failures = 0
        self._disk_full = False
        self._evictions = self._corrupt_dropped = 0

    # --- opening and closing -------------------------------------------------------------------

    async def _open(self) -> None:
        self._lock_fd = await trio.to_thread.run_sync(self._lock_directory)
        try:
            try:
                self._index = await trio.to_thread.run_sync(
                    SongIndex.open, self._index_path, self.songs_dir
                )
                self.reconciled = await self._write(self._reconcile)
            except sqlite3.Error as exc:
                if not is_damaged(exc):
                    raise
                log.error("store: the index is damaged (%s): rebuilding it from the songs", exc)
                await self._rebuild()
                self.reconciled = await self._write(self._reconcile)
            self._entries, self._bytes = await self._read(SongIndex.totals)
            if self.reconciled != ReconcileReport(0, 0, 0):
                log.info("store %s: cleaned up at startup: %s", self.directory, self.reconciled)
            async with self._mutating:
                await self._evict(keep=None)
        except BaseException:
            # Shielded, with no deadline: virtual clocks jump while threads work.
            with trio.CancelScope(shield=True):
                await self._close()
            raise

    def _lock_directory(self) -> int:
        self.songs_dir.mkdir(parents=True, exist_ok=True)
        return files.lock_directory(self.directory)

    async def _close(self) -> None:
        index, self._index = self._index, None
        if index is not None:
            await trio.to_thread.run_sync(index.close, limiter=self._write_limiter)
        lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None:
            files.unlock(lock_fd)

    def _reconcile(self, index: SongIndex) -> ReconcileReport:
        """Make the index and the songs directory agree (blocking; at open)."""
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
        # A whole song without its row (a crash between the rename and the row, an index that
        # lost rows or was emptied) is indexed again; anything else that is not ours goes.
        found = [
            song_from_file(self.songs_dir / name) for name in listing.songs if name not in named
        ]
        adopted = [song for song in found if song is not None]
        if adopted:
            index.put(*adopted)
            named.update(song.path.name for song in adopted)
            log.info("store: indexed %d song files that had no row again", len(adopted))
        orphans = [name for name in listing.songs if name not in named] + list(listing.other)
        for name in orphans:
            files.remove(self.songs_dir / name)
        return ReconcileReport(len(orphans), orphan_rows, len(listing.temporary), len(adopted))

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
        if key in self._writing or key in self._doomed or self._index_damaged:
            self._misses += 1
            return None
        try:
            # One trip to a worker thread for both: each costs a /play from the store 0.1-0.3 ms.
            song, size = await self._read(self._entry_and_size, key)
        except sqlite3.Error as exc:
            self._index_failed(exc, f"look up {key!r}")
            self._misses += 1
            return None
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

    @staticmethod
    def _entry_and_size(index: SongIndex, key: str) -> tuple[StoredSong | None, int | None]:
        song = index.get(key)
        return song, None if song is None else _size_of(song.path)

    async def songs(self) -> list[StoredSong]:
        """Every stored song, least recently played first; none while the index cannot be
        read (logged and counted)."""
        if self._index_damaged:
            return []
        try:
            return await self._read(SongIndex.songs)
        except sqlite3.Error as exc:
            self._index_failed(exc, "list the stored songs")
            return []

    async def mark_played(self, key: str) -> bool:
        """Record one more play of `key`, now; False if it is not stored, or the index could
        not record it (logged and counted: a play count is not worth an error)."""
        if self._index_damaged:
            return False
        try:
            return await self._write(SongIndex.mark_played, key, self._clock())
        except sqlite3.Error as exc:
            self._index_failed(exc, f"count a play of {key!r}")
            return False

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
        if self._index_damaged:
            yield SongWriter(key, reason="the store's index is being rebuilt")
            return
        self._writing.add(key)  # before the await: two writers must not both pass the check
        refusal = None
        try:
            if await self._read(SongIndex.get, key) is not None:
                refusal = "already stored"
        except sqlite3.Error as exc:
            self._index_failed(exc, f"check whether {key!r} is stored")
            refusal = f"the store's index cannot be read: {exc}"
        except BaseException:
            self._writing.discard(key)
            raise
        if refusal is not None:
            self._writing.discard(key)
            yield SongWriter(key, reason=refusal)
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
            # Rename, then the row: a crash in between leaves a whole file without its row, which
            # the next open indexes again. Shielded so a cancellation cannot stop in between.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(
                    _move_into_place, temporary, song.path, limiter=self._io_limiter
                )
                try:
                    self._entries, self._bytes = await self._write(self._put, song)
                except sqlite3.Error as exc:
                    await trio.to_thread.run_sync(files.remove, song.path, limiter=self._io_limiter)
                    self._index_error(exc)  # the writer reports the failure itself
                    raise
        return song

    async def _after_commit(self, key: str) -> None:
        async with self._mutating:
            await self._evict(keep=key)

    @staticmethod
    def _put(index: SongIndex, song: StoredSong) -> tuple[int, int]:
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
        song = await self._read(SongIndex.get, key)
        return song is not None and await self._verify(song) == "intact"

    async def verify_all(self) -> VerifyReport:
        """`verify` every entry, one file at a time; the corrupt ones are dropped."""
        songs = await self._read(SongIndex.songs)
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
            try:
                dropped, totals = await self._write(self._delete, key, only)
            except sqlite3.Error as exc:  # still suspect: the next lookup tries again
                self._index_failed(exc, f"drop {key!r}")
                return False
            self._entries, self._bytes = totals
            self._suspect.discard(key)
        if dropped is not None:
            if corrupt:
                self._corrupt_dropped += 1
                log.warning("store: dropped %r: %s", key, reason)
            else:
                log.info("store: dropped %r: %s", key, reason)
        return dropped is not None

    @staticmethod
    def _delete(
        index: SongIndex, key: str, only: StoredSong | None
    ) -> tuple[StoredSong | None, tuple[int, int]]:
        """Delete the row, then the file: a crash in between leaves a file without its row,
        which the next open indexes again if it reads back whole (and evicts again if need be),
        or deletes."""
        deleted = index.delete(key, only=only)
        if deleted is not None:
            files.remove(deleted.path)
        return deleted, index.totals()

    async def _evict(self, *, keep: str | None) -> None:
        """Delete least recently played entries until the bytes fit in max_bytes, skipping `keep`
        and songs being read. Call holding `_mutating`."""
        if self._bytes <= self.max_bytes:
            return
        try:
            await self._evict_least_played(keep)
        except sqlite3.Error as exc:  # the next commit tries again
            self._index_failed(exc, "evict songs")

    async def _evict_least_played(self, keep: str | None) -> None:
        excess = self._bytes - self.max_bytes
        victims = []
        for song in await self._read(SongIndex.songs):
            if excess <= 0:
                break
            if song.key == keep or song.key in self._reading or song.key in self._writing:
                continue
            victims.append(song)
            excess -= song.size
        self._doomed.update(song.key for song in victims)
        try:
            for song in victims:
                dropped, (self._entries, self._bytes) = await self._write(
                    self._delete, song.key, song
                )
                if dropped is not None:
                    self._evictions += 1
                    log.info("store: evicted %r (%d bytes)", song.key, song.size)
        finally:
            self._doomed.difference_update(song.key for song in victims)
        if self._bytes > self.max_bytes:
            log.info("store: %d bytes over max_bytes: the rest is being read", excess)

    # --- the resolved-metadata cache -----------------------------------------------------------

    # Like the play counts, a cache: when the index fails, an entry is not kept or not found
    # (logged and counted), and the query is resolved again.

    async def put_resolved(self, query: str, data: object) -> None:
        """Keep what `query` resolved to (JSON-serialisable `data`), stamped now."""
        blob = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        if self._index_damaged:
            return
        try:
            await self._write(SongIndex.put_resolved, query, blob, self._clock())
        except sqlite3.Error as exc:
            self._index_failed(exc, "keep a resolved query")

    async def get_resolved(
        self, query: str, *, max_age: float | None = None
    ) -> ResolvedEntry | None:
        """The entry for `query`, unless there is none or it is older than `max_age` seconds."""
        if self._index_damaged:
            return None
        try:
            found = await self._read(SongIndex.get_resolved, query)
            if found is None:
                return None
            blob, stored_at = found
            if max_age is not None and stored_at < self._clock() - max_age:
                return None
            return ResolvedEntry(query, json.loads(blob), stored_at)
        except (sqlite3.Error, ValueError) as exc:
            self._index_failed(exc, "read a resolved query")
            return None

    async def all_resolved(self, *, max_age: float | None = None) -> list[ResolvedEntry]:
        """Every entry no older than `max_age` seconds, oldest first: to warm a cache at start."""
        since = -float("inf") if max_age is None else self._clock() - max_age
        if self._index_damaged:
            return []
        try:
            rows = await self._read(SongIndex.all_resolved, since)
            return [ResolvedEntry(query, json.loads(blob), at) for query, blob, at in rows]
        except (sqlite3.Error, ValueError) as exc:
            self._index_failed(exc, "read the resolved queries")
            return []

    async def purge_resolved(self, *, max_age: float) -> int:
        """Delete the entries older than `max_age` seconds; return how many."""
        if self._index_damaged:
            return 0
        try:
            return await self._write(SongIndex.purge_resolved, self._clock() - max_age)
        except sqlite3.Error as exc:
            self._index_failed(exc, "purge old resolved queries")
            return 0

    # --- index trouble -------------------------------------------------------------------------

    def _index_failed(self, error: BaseException, doing: str) -> None:
        """An index call failed and the caller carries on without it: say so (a warning a minute
        at most), count it, and rebuild the index if it is damaged."""
        now = time.monotonic()
        level = logging.DEBUG
        if now >= self._next_trouble_warning:
            self._next_trouble_warning = now + TROUBLE_LOG_INTERVAL
            level = logging.WARNING
        log.log(level, "store: could not %s, carrying on without it: %s", doing, error)
        self._index_error(error)

    def _index_error(self, error: BaseException) -> None:
        self._index_errors += 1
        if not is_damaged(error) or self._index_damaged:
            return
        self._index_damaged = True
        if self._housekeeping is not None:  # (while opening, `_open` rebuilds it)
            self._housekeeping.start_soon(self._rebuild_while_running, name="rebuild store index")

    async def _rebuild_while_running(self) -> None:
        log.error(
            "store: the index %s is damaged: rebuilding it from the song files; songs play from"
            " the network meanwhile",
            self._index_path,
        )
        try:
            async with self._mutating:  # no commit, drop or eviction while the files are listed
                await self._rebuild()
        except (OSError, sqlite3.Error) as exc:
            log.error(
                "store: could not rebuild the index (%s): songs play from the network until the"
                " next start",
                exc,
            )
            return
        self._suspect.clear()  # every file kept was read back in full
        self._index_damaged = False

    async def _rebuild(self) -> RebuildReport:
        """Index the song files again into a fresh index, which replaces the damaged one.
        Files that fail a check are deleted. Each file is read in a worker thread of its own, so
        a cancellation stops between files and leaves the damaged index in place."""
        listing = await trio.to_thread.run_sync(
            files.list_songs, self.songs_dir, limiter=self._io_limiter
        )
        songs = []
        for name in sorted(listing.songs):
            path = self.songs_dir / name
            song = await trio.to_thread.run_sync(song_from_file, path, limiter=self._io_limiter)
            if song is None:
                await trio.to_thread.run_sync(files.remove, path, limiter=self._io_limiter)
            else:
                songs.append(song)
        # The damaged index is closed and the fresh one opened together, with no index call
        # in flight: shielded, so that a cancellation cannot leave the store without either.
        with trio.CancelScope(shield=True):
            async with self._write_limiter, self._read_limiter:
                damaged, self._index = self._index, None
                fresh, aside = await trio.to_thread.run_sync(
                    replace_index, self._index_path, self.songs_dir, songs, damaged
                )
                self._index = fresh
                self._entries, self._bytes = await trio.to_thread.run_sync(fresh.totals)
        self._rebuilds += 1
        self.rebuilt = RebuildReport(len(songs), len(listing.songs) - len(songs), aside)
        log.warning(
            "store: index rebuilt from the song files: %d songs kept, %d unreadable deleted%s",
            self.rebuilt.songs,
            self.rebuilt.unreadable,
            f"; the damaged index is now {aside}" if aside is not None else "",
        )
        return self.rebuilt

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
            index_errors=self._index_errors,
            index_damaged=self._index_damaged,
            index_rebuilds=self._rebuilds,
        )

    # --- plumbing ------------------------------------------------------------------------------

    @property
    def _live_index(self) -> SongIndex:
        if self._index is None:
            if self._lock_fd is not None:  # open, but a rebuild failed half-way
                raise IndexDamaged(f"the index in {self.directory} could not be rebuilt")
            raise RuntimeError(f"the store in {self.directory} is closed")
        return self._index

    async def _write(self, function: Callable[[SongIndex, Unpack[Ts]], T], *args: *Ts) -> T:
        """Run `function(index, *args)` in the index writer's worker thread (one at a time)."""
        return await trio.to_thread.run_sync(
            self._on_index, function, *args, limiter=self._write_limiter
        )

    async def _read(self, function: Callable[[SongIndex, Unpack[Ts]], T], *args: *Ts) -> T:
        """Run `function(index, *args)` in the index reader's worker thread (one at a time; in
        WAL mode it never waits for a write)."""
        return await trio.to_thread.run_sync(
            self._on_index, function, *args, limiter=self._read_limiter
        )

    def _on_index(self, function: Callable[[SongIndex, Unpack[Ts]], T], *args: *Ts) -> T:
        # The index is looked up in the thread: a rebuild may have replaced it meanwhile.
        return function(self._live_index, *args)


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
