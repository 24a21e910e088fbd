"""Rebuilding a damaged index from the song files.

Each stored file says what it is: its OpusTags carry `MUSICBOT_KEY` and `TITLE`, its name is
`song_name(key)`, and reading it all back (`check_file`) gives its size, packets, length and
SHA-256. So a damaged `index.sqlite3` costs nothing but play counts and the resolved-query
cache: the rows are written into a fresh database beside it, the damaged one is moved aside
(`index.sqlite3.damaged`, for whoever wants to look at it) and the fresh one renamed into
place. Until that rename the damaged index stays where it was, so a rebuild cut short (a
crash, a shutdown) is simply done again at the next open. Other processes sharing the store
may have the damaged index open: the store swaps holding the index gate exclusively (so none
writes to it or closes it meanwhile), and they open the fresh one at their next index call
(see locks.py and docs/store.md).

All synchronous and blocking: the store calls these from worker threads, one file at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

from musicbot.audio.ogg import OggError
from musicbot.audio.store import files
from musicbot.audio.store.index import SongIndex
from musicbot.audio.store.oggcheck import check_file, read_comments
from musicbot.audio.store.values import StoredSong

log = logging.getLogger(__name__)

REBUILT_SUFFIX = ".rebuilt"
DAMAGED_SUFFIX = ".damaged"
_SIDE_FILES = ("-wal", "-shm", "-journal")


def song_from_file(path: Path) -> StoredSong | None:
    """The index row `path` stands for, read from the file itself; None (and a warning) if it
    fails a check or is not the file of the key it names. The commit time is the file's
    modification time, which also counts as its only play."""
    try:
        comments = read_comments(path)
        check = check_file(path)
        modified = path.stat().st_mtime
    except (OSError, OggError) as exc:
        log.warning("store: %s cannot be indexed again: %s", path.name, exc)
        return None
    key = comments.get("MUSICBOT_KEY", "")
    if not key or files.song_name(key) != path.name:
        log.warning("store: %s does not hold the song its tags name (%r)", path.name, key)
        return None
    return check.song(key, path, title=comments.get("TITLE", ""), at=modified)


def replace_index(
    index_path: Path, songs_dir: Path, songs: list[StoredSong], damaged: SongIndex | None
) -> tuple[SongIndex, Path | None]:
    """Write `songs` into a fresh index, close `damaged` (if open), move the damaged file aside
    and the fresh one into its place; returns the fresh index, open, and where the damaged
    file went (None if there was none)."""
    fresh = index_path.with_name(index_path.name + REBUILT_SUFFIX)
    _remove_with_side_files(fresh)
    building = SongIndex.open(fresh, songs_dir)
    try:
        if songs:
            building.put(*songs)
    finally:
        building.close()  # the last connection: SQLite folds the WAL into the file
    if damaged is not None:
        with contextlib.suppress(sqlite3.Error):  # closing may try to checkpoint into it
            damaged.close()
    aside = index_path.with_name(index_path.name + DAMAGED_SUFFIX)
    moved: Path | None = None
    if index_path.exists():
        _remove_with_side_files(aside)
        os.replace(index_path, aside)
        moved = aside
    for suffix in _SIDE_FILES:  # the damaged index's journal is no use to the fresh one
        side = index_path.with_name(index_path.name + suffix)
        if moved is not None and suffix == "-wal" and side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
        else:
            files.remove(side)
    os.replace(fresh, index_path)
    files.fsync_directory(index_path.parent)
    return SongIndex.open(index_path, songs_dir), moved


def _remove_with_side_files(path: Path) -> None:
    files.remove(path)
    for suffix in _SIDE_FILES:
        files.remove(path.with_name(path.name + suffix))
