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

Several processes (a bot's shard processes, `musicbot cache warm`) may have one directory open
at once: the locks in `locks.py` give each song one writer across processes, keep a song being
read anywhere from being deleted, and let one process swap in a rebuilt index under the others.
Decisions about every process's songs (eviction) are taken on the index, never on counters.

The index is bookkeeping, never a reason for a song not to play: an index call that fails (a
lock another process holds, a damaged file, an I/O error) is logged (once a minute at most) and
counted, and the caller gets a miss, a refused writer, a play not counted. A damaged index is
rebuilt from the song files (`rebuild.py`): at open before anything else, and while running in
the store's own background task, lookups answering misses meanwhile.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import json
import logging
import math
import os
import sqlite3
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Literal, TypeVar, TypeVarTuple, Unpack

import trio

from musicbot.audio.ogg import OggError
from musicbot.audio.store import files, locks
from musicbot.audio.store.errors import IndexBusy, IndexDamaged, StoredSongError
from musicbot.audio.store.index import WRITE_TIMEOUT, SongIndex, is_damaged
from musicbot.audio.store.keys import track_key
from musicbot.audio.store.oggcheck import FileCheck, check_file
from musicbot.audio.store.oggwrite import DEFAULT_PRE_SKIP, OggOpusWriter
from musicbot.audio.store.reader import StoredStream, open_stored_stream
from musicbot.audio.store.rebuild import replace_index, song_from_file
from musicbot.audio.store.reconcile import reconcile
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

CLOSE_GATE_WAIT = 10.0
"""Seconds closing the index waits for another process swapping in a rebuilt one (a swap takes
milliseconds; past this the index is closed anyway)."""


class _IndexReplaced(sqlite3.OperationalError):
    """Another process swapped in a rebuilt index since this one opened it."""


class _Removal(enum.Enum):
    DELETED = "deleted"
    GONE = "gone"
    """No such row, or not the row asked for: deleted or replaced meanwhile."""
    IN_USE = "in use"
    """Someone, in some process, is reading, writing or deleting it: left alone."""


@asynccontextmanager
async def open_store(
    directory: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_track_seconds: float = DEFAULT_MAX_TRACK_SECONDS,
    clock: Callable[[], float] = time.time,
    io_threads: int = 4,
    exclusive: bool = False,
) -> AsyncIterator[ProcessedSongStore]:
    """Open (creating it if needed) the store in `directory` for the life of the context.

    Takes the directory's lock: shared, so that other processes may use the store at the same
    time, or with `exclusive` for an operation that needs the store to itself (StoreLocked if
    that cannot be had now). Opens the index, reconciles it with the files (`store.reconciled`
    says what was cleaned up) and evicts down to `max_bytes`. `clock` gives the wall-clock
    seconds recorded as created and last played.
    """
    store = ProcessedSongStore(
        Path(directory),
        max_bytes=max_bytes,
        max_track_seconds=max_track_seconds,
        clock=clock,
        io_threads=io_threads,
        exclusive=exclusive,
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
        exclusive: bool = False,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if not max_track_seconds > 0:
            raise ValueError(f"max_track_seconds must be positive, got {max_track_seconds}")
        self.directory = directory
        self.songs_dir = directory / files.SONGS_DIR
        self.locks_dir = directory / files.LOCKS_DIR
        self.exclusive = exclusive
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
        self._index_identity: tuple[int, int] | None = None
        """Which file the open index is (see `files.identity`): another process may swap in a
        rebuilt one under the same name."""
        self._gate: locks.IndexGate | None = None
        """The index's lock across processes; used only by the holder of `_write_limiter`."""
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
            self._gate = await trio.to_thread.run_sync(locks.IndexGate.open, self.directory)
            try:
                async with self._index_gate(exclusive=self._index_is_new()):
                    await trio.to_thread.run_sync(self._open_index_file)
            except sqlite3.Error as exc:
                await self._rebuild_if_damaged(exc)
            try:
                self.reconciled = await self._reconcile()
            except sqlite3.Error as exc:
                await self._rebuild_if_damaged(exc)
                self.reconciled = await self._reconcile()
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

    async def _rebuild_if_damaged(self, error: sqlite3.Error) -> None:
        """At open: rebuild the index if `error` says it is damaged, else raise `error`."""
        if not is_damaged(error):
            raise error
        log.error("store: the index is damaged (%s): rebuilding it from the songs", error)
        await self._rebuild()

    def _lock_directory(self) -> int:
        self.songs_dir.mkdir(parents=True, exist_ok=True)
        self.locks_dir.mkdir(exist_ok=True)
        return locks.lock_store(self.directory, exclusive=self.exclusive)

    async def _close(self) -> None:
        index, gate = self._index, self._gate
        if index is not None and gate is not None:
            async with self._write_limiter, self._read_limiter:
                # Not while another process swaps in a rebuilt index: SQLite's last close deletes
                # the -wal and -shm files by name.
                held = await _wait_for(gate.try_shared, CLOSE_GATE_WAIT)
                try:
                    await trio.to_thread.run_sync(index.close)
                finally:
                    if held:
                        gate.release()
        self._index = self._gate = None
        if gate is not None:
            gate.close()
        lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None:
            os.close(lock_fd)  # lets go of the store's lock

    @asynccontextmanager
    async def _index_gate(self, *, exclusive: bool) -> AsyncIterator[None]:
        """Hold the index to this task in this process (no index call meanwhile), and the
        gate across processes: shared to open the index (no swap meanwhile), exclusive to
        create one or swap one in. Waits for whoever holds it otherwise."""
        gate = self._gate
        if gate is None:
            raise RuntimeError(f"the store in {self.directory} is closed")
        async with self._write_limiter, self._read_limiter:
            await _wait_for(gate.try_exclusive if exclusive else gate.try_shared, math.inf)
            try:
                yield
            finally:
                gate.release()

    def _index_is_new(self) -> bool:
        """Whether opening the index creates it (putting it in WAL mode needs it alone)."""
        try:
            return self._index_path.stat().st_size == 0
        except FileNotFoundError:
            return True

    def _open_index_file(self) -> None:
        """(Re)open the index at its name, closing the one open (blocking; call holding the
        index gate). Its identity is taken first: if the file cannot be opened, a
        rebuild knows it is the one to replace."""
        old, self._index = self._index, None
        if old is not None:
            with contextlib.suppress(sqlite3.Error):
                old.close()
        self._index_identity = files.identity(self._index_path)
        self._index = SongIndex.open(self._index_path, self.songs_dir)
        self._index_identity = files.identity(self._index_path)  # it may have just been made

    def _index_replaced(self) -> bool:
        return files.identity(self._index_path) != self._index_identity

    async def _reopen_index(self) -> None:
        """Open the index another process swapped in (a rebuilt one) instead of ours."""
        async with self._index_gate(exclusive=self._index_is_new()):
            if not self._index_replaced():  # another task of ours reopened it meanwhile
                return
            log.warning("store: another process rebuilt the index %s: opening it", self._index_path)
            with trio.CancelScope(shield=True):  # never left without an index
                await trio.to_thread.run_sync(self._open_index_file)

    async def _reconcile(self) -> ReconcileReport:
        """Make the index and the songs directory agree (at open). Waits while another
        process swaps in a rebuilt index (an index write that gives up says IndexBusy)."""
        while True:
            try:
                return await self._write(reconcile, self.songs_dir, self.locks_dir)
            except IndexBusy:
                await trio.sleep(locks.GATE_POLL)

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
            played, (self._entries, self._bytes) = await self._write(
                self._mark_played, key, self._clock()
            )
        except sqlite3.Error as exc:
            self._index_failed(exc, f"count a play of {key!r}")
            return False
        return played

    @staticmethod
    def _mark_played(index: SongIndex, key: str, now: float) -> tuple[bool, tuple[int, int]]:
        # The totals too (every process's songs): the statistics stay near the index's.
        return index.mark_played(key, now), index.totals()

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
        key_lock: int | None = None
        refusal = None
        try:
            key_lock = await trio.to_thread.run_sync(
                self._lock_key_to_write, key, limiter=self._io_limiter
            )
            if key_lock is None:
                # It plays from the network meanwhile: waiting could hold a song up for as
                # long as the other process takes, and the next play finds its copy.
                refusal = "another process is writing it"
            elif await self._read(SongIndex.get, key) is not None:
                refusal = "already stored"
        except OSError as exc:
            refusal = f"cannot lock it for writing: {exc}"
        except sqlite3.Error as exc:
            self._index_failed(exc, f"check whether {key!r} is stored")
            refusal = f"the store's index cannot be read: {exc}"
        except BaseException:
            await self._let_go_of_key(key, key_lock)
            raise
        if refusal is not None:
            await self._let_go_of_key(key, key_lock)
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
            # Only now: the row is in, or the temporary file is gone.
            await self._let_go_of_key(key, key_lock)

    def _lock_key_to_write(self, key: str) -> int | None:
        """Take `key`'s write lock (None: another process has it) and delete the temporary
        file a writer that died holding it may have left (blocking)."""
        stem = files.song_stem(files.song_name(key))
        fd = locks.try_lock_key(self.locks_dir, stem)
        if fd is not None:
            try:
                files.remove(self.songs_dir / files.temp_name(key))
            except BaseException:
                locks.unlock_key(self.locks_dir, stem, fd)
                raise
        return fd

    async def _let_go_of_key(self, key: str, fd: int | None) -> None:
        self._writing.discard(key)
        if fd is None:
            return
        stem = files.song_stem(files.song_name(key))
        with trio.CancelScope(shield=True):  # a lock left held would refuse this key for good
            try:
                await trio.to_thread.run_sync(
                    locks.unlock_key, self.locks_dir, stem, fd, limiter=self._io_limiter
                )
            except OSError as exc:
                log.warning("store: could not let go of the lock on %r: %s", key, exc)

    async def _publish(self, key: str, temporary: Path, check: FileCheck, title: str) -> StoredSong:
        """Move a verified file into place and index it."""
        async with self._mutating:
            now = self._clock()
            song = check.song(key, self.songs_dir / files.song_name(key), title=title, at=now)
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
        truncated or corrupt: drop the entry (`await store.drop(song.key)`) and fetch again; also
        (on open) when a process is deleting it. While the context is open no process deletes
        the song (its file is held shared).
        """
        return self._open_stored(song, start)

    @asynccontextmanager
    async def _open_stored(self, song: StoredSong, start: float) -> AsyncIterator[StoredStream]:
        if song.key in self._doomed:
            raise StoredSongError(song.key, "it is being deleted")
        with self._counted_reading(song.key):
            async with open_stored_stream(
                song, start=start, limiter=self._io_limiter, on_error=self._found_damaged
            ) as stream:
                yield stream

    def holding(self, song: StoredSong) -> AbstractAsyncContextManager[None]:
        """Keep `song`'s file from being deleted (evicted or dropped, by any process) for the
        life of the context, for a reader that opens it by its name (ffmpeg). Raises
        StoredSongError if the file is missing or a process is deleting it."""
        return self._holding(song)

    @asynccontextmanager
    async def _holding(self, song: StoredSong) -> AsyncIterator[None]:
        if song.key in self._doomed:
            raise StoredSongError(song.key, "it is being deleted")
        try:
            fd = await trio.to_thread.run_sync(
                locks.open_shared, song.path, limiter=self._io_limiter
            )
        except locks.SongBeingDeleted:
            raise StoredSongError(song.key, "it is being deleted") from None
        except OSError as exc:
            error = StoredSongError(song.key, f"cannot open {song.path}: {exc}")
            self._found_damaged(error)
            raise error from exc
        try:
            with self._counted_reading(song.key):
                yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _counted_reading(self, key: str) -> Iterator[None]:
        """Count a reader of `key` in this process: eviction here does not even try it (the
        file's lock would stop it anyway), and statistics() shows it."""
        self._reading[key] += 1
        try:
            yield
        finally:
            self._reading[key] -= 1
            if not self._reading[key]:
                del self._reading[key]

    def _found_damaged(self, error: StoredSongError) -> None:
        if error.key not in self._suspect:
            log.warning("store: %s", error.reason)
        self._suspect.add(error.key)

    # --- dropping, verifying, evicting ---------------------------------------------------------

    async def drop(self, key: str) -> bool:
        """Delete the entry of `key` and its file; False if there was none. Counted as a corrupt
        entry dropped when a reader found its file damaged."""
        return await self._drop(key, reason="dropped") is _Removal.DELETED

    async def verify(self, key: str) -> bool:
        """Read the whole file of `key`: Ogg structure, CRCs, packet count and SHA-256 against
        the index. A file that fails is dropped (if a process is reading it, by the first lookup
        after). False if it failed or is not stored."""
        song = await self._read(SongIndex.get, key)
        return song is not None and await self._verify(song) == "intact"

    async def verify_all(self) -> VerifyReport:
        """`verify` every entry, one file at a time; the corrupt ones are dropped (see
        `verify`)."""
        songs = await self._read(SongIndex.songs)
        corrupt = [song.key for song in songs if await self._verify(song) == "corrupt"]
        return VerifyReport(len(songs), tuple(corrupt))

    async def _verify(self, song: StoredSong) -> Literal["intact", "corrupt", "gone"]:
        try:
            check = await trio.to_thread.run_sync(_check_held, song.path, limiter=self._io_limiter)
        except locks.SongBeingDeleted:
            return "gone"
        except (OSError, OggError) as exc:
            problem = str(exc)
        else:
            found = (check.size, check.packets, check.sha256)
            if found == (song.size, song.packets, song.checksum):
                return "intact"
            problem = f"{check.size} bytes, {check.packets} packets, sha256 {check.sha256[:12]}"
        reason = f"verification failed: {problem}"
        # Suspect until dropped: another process may be reading it; a later lookup drops it.
        self._suspect.add(song.key)
        removal = await self._drop(song.key, only=song, reason=reason, corrupt=True)
        # Gone: evicted or dropped meanwhile, so its file went away while being read.
        return "gone" if removal is _Removal.GONE else "corrupt"

    async def _drop(
        self, key: str, *, only: StoredSong | None = None, reason: str, corrupt: bool = False
    ) -> _Removal | None:
        """Delete `key`'s row and file (only if the row is still `only`, when given). Not if
        someone (in any process) is reading or writing it (IN_USE), nor if the index fails
        (None): a suspect key stays suspect, and the next lookup or drop tries again."""
        corrupt = corrupt or key in self._suspect
        async with self._mutating:
            try:
                removal, totals = await self._write(self._delete, key, only)
            except sqlite3.Error as exc:
                self._index_failed(exc, f"drop {key!r}")
                return None
            self._entries, self._bytes = totals
            if removal is _Removal.IN_USE:
                log.info("store: not dropping %r yet (%s): it is in use", key, reason)
                return removal
            self._suspect.discard(key)
        if removal is _Removal.DELETED:
            if corrupt:
                self._corrupt_dropped += 1
                log.warning("store: dropped %r: %s", key, reason)
            else:
                log.info("store: dropped %r: %s", key, reason)
        return removal

    def _delete(
        self, index: SongIndex, key: str, only: StoredSong | None
    ) -> tuple[_Removal, tuple[int, int]]:
        """Delete the row, then the file, holding the song's write lock and its file
        exclusively; leave it if someone holds either. A crash in between leaves a file without
        its row, which the next open indexes again if it reads back whole (and evicts again if
        need be), or deletes."""
        path = self.songs_dir / files.song_name(key)
        with locks.claim_song(self.locks_dir, path) as claimed:
            if not claimed:
                removal = _Removal.IN_USE
            elif index.delete(key, only=only) is None:
                removal = _Removal.GONE
            else:
                files.remove(path)
                removal = _Removal.DELETED
        return removal, index.totals()

    async def _evict(self, *, keep: str | None) -> None:
        """Delete least recently played entries (of every process) until the bytes the index
        records fit in max_bytes, skipping `keep` and songs being read or written anywhere.
        Call holding `_mutating`."""
        try:
            await self._evict_least_played(keep)
        except sqlite3.Error as exc:  # the next commit tries again
            self._index_failed(exc, "evict songs")

    async def _evict_least_played(self, keep: str | None) -> None:
        # From the index, not from counters: other processes commit and evict too.
        self._entries, self._bytes = await self._read(SongIndex.totals)
        if self._bytes <= self.max_bytes:
            return
        in_use = 0
        for song in await self._read(SongIndex.songs):
            if self._bytes <= self.max_bytes:
                break
            if song.key == keep or song.key in self._reading or song.key in self._writing:
                in_use += 1
                continue
            self._doomed.add(song.key)
            try:
                removal, (self._entries, self._bytes) = await self._write(
                    self._delete, song.key, song
                )
            finally:
                self._doomed.discard(song.key)
            if removal is _Removal.DELETED:
                self._evictions += 1
                log.info("store: evicted %r (%d bytes)", song.key, song.size)
            elif removal is _Removal.IN_USE:  # another process is reading it: the next one
                in_use += 1
        if self._bytes > self.max_bytes:
            log.info(
                "store: %d bytes over max_bytes: the %d songs left are in use",
                self._bytes - self.max_bytes,
                in_use,
            )

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

    async def _rebuild(self) -> RebuildReport | None:
        """Index the song files again into a fresh index, which replaces the damaged one; None
        if another process did so meanwhile (this one then opens that). Files that fail a check
        are deleted. Each file is read in a worker thread of its own, so a cancellation stops
        between files and leaves the damaged index in place.

        The files are read first, while every process carries on; then, holding the index to
        ourselves (the gate, exclusively), the files that came or went meanwhile, and the swap.
        """
        found, unreadable = await self._index_song_files({})
        async with self._index_gate(exclusive=True):
            if self._index_replaced():
                log.warning("store: another process rebuilt the index: opening it")
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._open_index_file)
                return None
            found, late = await self._index_song_files(found)
            unreadable += late
            songs = sorted(found.values(), key=lambda song: song.path.name)
            # The damaged index is closed and the fresh one opened together, with no index call
            # in flight: shielded, so that a cancellation cannot leave the store without either.
            with trio.CancelScope(shield=True):
                damaged, self._index = self._index, None
                fresh, aside = await trio.to_thread.run_sync(
                    replace_index, self._index_path, self.songs_dir, songs, damaged
                )
                self._index = fresh
                self._index_identity = files.identity(self._index_path)
                self._entries, self._bytes = await trio.to_thread.run_sync(fresh.totals)
        self._rebuilds += 1
        self.rebuilt = RebuildReport(len(songs), unreadable, aside)
        log.warning(
            "store: index rebuilt from the song files: %d songs kept, %d unreadable deleted%s",
            self.rebuilt.songs,
            self.rebuilt.unreadable,
            f"; the damaged index is now {aside}" if aside is not None else "",
        )
        return self.rebuilt

    async def _index_song_files(
        self, known: dict[str, StoredSong]
    ) -> tuple[dict[str, StoredSong], int]:
        """The rows the song files stand for, by file name: those of `known` whose file is
        still there, and those of the other files, read in full. Files that fail a check are
        deleted (unless in use); returns how many too."""
        listing = await trio.to_thread.run_sync(
            files.list_songs, self.songs_dir, limiter=self._io_limiter
        )
        found = {name: song for name, song in known.items() if name in listing.songs}
        unreadable = 0
        for name in sorted(set(listing.songs) - set(found)):
            song = await trio.to_thread.run_sync(
                song_from_file, self.songs_dir / name, limiter=self._io_limiter
            )
            if song is not None:
                found[name] = song
                continue
            unreadable += 1
            await trio.to_thread.run_sync(self._remove_song_file, name, limiter=self._io_limiter)
        return found, unreadable

    def _remove_song_file(self, name: str) -> None:
        """Delete a song file that holds no song of ours, unless someone holds it (blocking)."""
        with locks.claim_song(self.locks_dir, self.songs_dir / name) as claimed:
            if claimed:
                files.remove(self.songs_dir / name)

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
            if self._lock_fd is not None:  # open, but a rebuild or a re-open failed half-way
                raise IndexDamaged(f"the index in {self.directory} could not be opened")
            raise RuntimeError(f"the store in {self.directory} is closed")
        return self._index

    async def _write(self, function: Callable[[SongIndex, Unpack[Ts]], T], *args: *Ts) -> T:
        """Run `function(index, *args)` in the index writer's worker thread (one at a time),
        holding the index gate shared: never while another process swaps the index."""
        try:
            return await trio.to_thread.run_sync(
                self._on_index, True, function, *args, limiter=self._write_limiter
            )
        except _IndexReplaced:
            await self._reopen_index()
        return await trio.to_thread.run_sync(
            self._on_index, True, function, *args, limiter=self._write_limiter
        )

    async def _read(self, function: Callable[[SongIndex, Unpack[Ts]], T], *args: *Ts) -> T:
        """Run `function(index, *args)` in the index reader's worker thread (one at a time; in
        WAL mode it never waits for a write)."""
        try:
            return await trio.to_thread.run_sync(
                self._on_index, False, function, *args, limiter=self._read_limiter
            )
        except _IndexReplaced:
            await self._reopen_index()
        return await trio.to_thread.run_sync(
            self._on_index, False, function, *args, limiter=self._read_limiter
        )

    def _on_index(
        self, writing: bool, function: Callable[[SongIndex, Unpack[Ts]], T], *args: *Ts
    ) -> T:
        if not writing:
            return self._on_current_index(function, *args)
        gate = self._gate
        if gate is None:
            raise RuntimeError(f"the store in {self.directory} is closed")
        with gate.shared(WRITE_TIMEOUT):
            return self._on_current_index(function, *args)

    def _on_current_index(self, function: Callable[[SongIndex, Unpack[Ts]], T], *args: *Ts) -> T:
        # The index is looked up in the thread: a rebuild may have replaced it meanwhile.
        index = self._live_index
        if self._index_replaced():  # a stat: about a microsecond
            raise _IndexReplaced(f"another process swapped in a new {self._index_path}")
        return function(index, *args)


async def _wait_for(attempt: Callable[[], bool], patience: float) -> bool:
    """Try `attempt` (a lock that never waits) until it succeeds (True) or `patience` seconds
    have passed (False)."""
    deadline = trio.current_time() + patience
    while not attempt():
        if trio.current_time() >= deadline:
            return False
        await trio.sleep(locks.GATE_POLL)
    return True


def _check_held(path: Path) -> FileCheck:
    """`check_file`, holding the file shared meanwhile (blocking)."""
    fd = locks.open_shared(path)
    try:
        return check_file(path)
    finally:
        os.close(fd)


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
