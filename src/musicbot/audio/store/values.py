"""The store's values: frozen, so a snapshot never changes under whoever holds it."""

from __future__ import annotations

from pathlib import Path

import attrs


@attrs.frozen
class StoredSong:
    """One processed song on disk, as the index records it."""

    key: str
    """The track's stable identity (see `musicbot.audio.store.keys`)."""
    path: Path
    """The Ogg Opus file; any player (ffmpeg, ffprobe, a browser) can open it."""
    title: str
    duration: float
    """Seconds of audio the packets hold."""
    size: int
    """Bytes of the file."""
    packets: int
    created: float
    """Wall-clock seconds (the store's clock) when it was committed."""
    last_played: float
    play_count: int
    checksum: str
    """SHA-256 of the file, hex."""


@attrs.frozen
class StoreStatistics:
    """A snapshot. `entries` and `bytes` are the index's, shared by every process using the
    directory, as of this process's last index write (a commit, a play, a drop, an eviction);
    everything else counts what this process did or is doing."""

    entries: int
    bytes: int
    """Bytes of the stored files together."""
    max_bytes: int
    hits: int
    """Lookups that found a usable entry."""
    misses: int
    writes_committed: int
    writes_abandoned: int
    """Writers left without a commit (a skip, a failure upstream, cancellation), or given up
    because the song ran past max_track_seconds or max_bytes."""
    write_failures: int
    """Writers that gave up because the disk refused (any OSError, SQLite's 'disk full')."""
    disk_full: bool
    """The last write failure was ENOSPC or EDQUOT and no commit has succeeded since."""
    evictions: int
    """Entries this process deleted to keep the store (every process's songs) under max_bytes,
    least recently played first."""
    corrupt_dropped: int
    """Entries dropped because their file was missing, the wrong size, or failed a check."""
    writing: int
    """Writers open now in this process."""
    reading: int
    """Stored songs this process is reading now (or holding for ffmpeg to read)."""
    index_errors: int = 0
    """Index calls that failed (locked by another process, damaged, unreadable): the song
    played on without that bookkeeping (a play count, a resolved query, a stored copy)."""
    index_damaged: bool = False
    """The index was found damaged and is not rebuilt yet: songs play from the network."""
    index_rebuilds: int = 0
    """Times the index was rebuilt from the song files (at open or while running)."""


@attrs.frozen
class ReconcileReport:
    """What opening the store cleaned up: the index and the files now agree."""

    orphan_files: int
    """Song files no index row named, deleted."""
    orphan_rows: int
    """Index rows whose file was missing or the wrong size, deleted (with the file)."""
    temporary_files: int
    """Files of writes that never committed (a crash mid-write), deleted."""
    adopted_files: int = 0
    """Whole song files without a row (a crash between rename and row, an index that lost
    rows), read back in full and indexed again."""
    left_in_use: int = 0
    """Temporary files, song files or rows that looked wrong but that a live process (another
    one sharing the directory) was working on: a write, a commit, a read, a deletion. Left
    alone; that process finishes the work."""


@attrs.frozen
class VerifyReport:
    checked: int
    corrupt: tuple[str, ...]
    """Keys whose file failed the check; they were dropped."""


@attrs.frozen
class ResolvedEntry:
    """A resolved-metadata cache entry kept across restarts: JSON `data` saved at `stored_at`."""

    query: str
    data: object
    stored_at: float


@attrs.frozen
class RebuildReport:
    """What rebuilding a damaged index from the song files found."""

    songs: int
    """Files that passed every check and were indexed again."""
    unreadable: int
    """Files that failed a check or named no key of theirs: deleted."""
    damaged_copy: Path | None
    """Where the damaged index was moved, for whoever wants to look at it."""
