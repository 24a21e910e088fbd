"""Start-up reconciliation: make the index and the songs directory agree again after a crash,
without touching what a live process, this one or another sharing the directory, is doing.

Every song is looked at holding its key's write lock (locks.py), which every writer holds from
before its temporary file exists until its row is in, and every deleter while it deletes. So a
song whose lock is held is someone's work under way (a write, a commit between its rename and
its row, a deletion, another process reconciling it): it is left alone. Under the lock, what
was seen before taking it is looked at again, since the holder before may have changed it.

Blocking: the store calls `reconcile` in its index writer's thread.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from musicbot.audio.store import files, locks
from musicbot.audio.store.index import SongIndex
from musicbot.audio.store.rebuild import song_from_file
from musicbot.audio.store.values import ReconcileReport, StoredSong

log = logging.getLogger(__name__)

_STEM = re.compile(r"[0-9a-f]{40}")


def reconcile(index: SongIndex, songs_dir: Path, locks_dir: Path) -> ReconcileReport:
    """Delete what dead writers left, rows without their file and files that are not ours;
    index again whole song files that lost their row."""
    listing = files.list_songs(songs_dir)  # before the rows: a commit renames, then adds a row
    temporary, busy = _remove_dead_temporary_files(songs_dir, locks_dir, listing.temporary)
    orphan_rows, kept, in_use = _check_rows(index, locks_dir, listing.songs)
    adopted, orphans, unused = _adopt_or_remove(
        index, songs_dir, locks_dir, [name for name in listing.songs if name not in kept]
    )
    others = sum(_remove(songs_dir / name) for name in listing.other)
    _remove_stale_key_locks(locks_dir)
    if adopted:
        log.info("store: indexed %d song files that had no row again", adopted)
    return ReconcileReport(
        orphan_files=orphans + others,
        orphan_rows=orphan_rows,
        temporary_files=temporary,
        adopted_files=adopted,
        left_in_use=busy + in_use + unused,
    )


def _remove_dead_temporary_files(
    songs_dir: Path, locks_dir: Path, names: tuple[str, ...]
) -> tuple[int, int]:
    """Delete the temporary files whose writer is gone: (deleted, left to a live writer)."""
    removed = busy = 0
    for name in names:
        stem = files.song_stem(name)
        if not _STEM.fullmatch(stem):  # not a name the store makes
            removed += _remove(songs_dir / name)
            continue
        key_fd = locks.try_lock_key(locks_dir, stem)
        if key_fd is None:  # its writer is alive, here or in another process
            busy += 1
            continue
        try:
            removed += _remove(songs_dir / name)
        finally:
            locks.unlock_key(locks_dir, stem, key_fd)
    return removed, busy


def _remove(path: Path) -> bool:
    """Delete `path`; False if it was gone already (another process reconciling removed it)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _check_rows(
    index: SongIndex, locks_dir: Path, sizes: dict[str, int]
) -> tuple[int, set[str], int]:
    """Delete the rows whose file is missing or is not the size they say (and that file):
    (rows deleted, file names the rows name, rows left because their song is in use)."""
    deleted = in_use = 0
    named: set[str] = set()
    for song in index.songs():
        named.add(song.path.name)
        if sizes.get(song.path.name) == song.size:
            continue
        with locks.claim_song(locks_dir, song.path) as claimed:
            if not claimed:
                in_use += 1
            elif _size_of(song.path) != song.size and _delete_row_and_file(index, song):
                deleted += 1
    return deleted, named, in_use


def _delete_row_and_file(index: SongIndex, song: StoredSong) -> bool:
    size = _size_of(song.path)
    log.warning(
        "store: dropping %r: its file %s is %s",
        song.key,
        song.path.name,
        "missing" if size is None else f"{size} bytes, not {song.size}",
    )
    if index.delete(song.key, only=song) is None:  # changed since it was read
        return False
    files.remove(song.path)
    return True


def _adopt_or_remove(
    index: SongIndex, songs_dir: Path, locks_dir: Path, names: list[str]
) -> tuple[int, int, int]:
    """Song files without a row: index each again if it reads back whole as the song its name
    says, else delete it. (adopted, deleted, left because someone holds it)."""
    adopted = removed = busy = 0
    for name in names:
        stem = files.song_stem(name)
        key_fd = locks.try_lock_key(locks_dir, stem)
        if key_fd is None:  # a writer between its rename and its row, or a deleter
            busy += 1
            continue
        try:
            # Its row came in, or another process reconciling deleted it, before our lock.
            if index.names(name) or not (songs_dir / name).exists():
                continue
            song = song_from_file(songs_dir / name)
            if song is not None:
                index.put(song)
                adopted += 1
            elif locks.remove_unless_in_use(songs_dir / name):
                removed += 1
            else:
                busy += 1
        finally:
            locks.unlock_key(locks_dir, stem, key_fd)
    return adopted, removed, busy


def _remove_stale_key_locks(locks_dir: Path) -> None:
    """Delete the key lock files that crashed holders left behind (the kernel let go of them)."""
    for path in locks_dir.glob(f"*{locks.KEY_LOCK_SUFFIX}"):
        stem = path.name.removesuffix(locks.KEY_LOCK_SUFFIX)
        key_fd = locks.try_lock_key(locks_dir, stem)
        if key_fd is not None:
            locks.unlock_key(locks_dir, stem, key_fd)


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None
