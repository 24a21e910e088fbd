"""The store directory on disk: names, and the blocking file operations (call them from worker
threads).

    <directory>/
      index.sqlite3 (-wal, -shm)    the SongIndex
      lock, index.lock              the store's and the index's locks (see locks.py)
      locks/<40 hex>.lock           a song's write lock, while someone writes or deletes it
      songs/<40 hex>.opus           one finished song: sha256(key), first 160 bits
      songs/.<40 hex>.part          a song being written; never read
"""

from __future__ import annotations

import errno
import hashlib
import os
import sys
from pathlib import Path

import attrs

INDEX_NAME = "index.sqlite3"
SONGS_DIR = "songs"
LOCKS_DIR = "locks"
SONG_SUFFIX = ".opus"
TEMP_SUFFIX = ".part"

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def song_name(key: str) -> str:
    """The file name of the song filed under `key`."""
    return hashlib.sha256(key.encode()).hexdigest()[:40] + SONG_SUFFIX


def temp_name(key: str) -> str:
    """The temporary file name of the song being written under `key`. One name per key: only
    the holder of the key's write lock writes it (see locks.py)."""
    return f".{song_stem(song_name(key))}{TEMP_SUFFIX}"


def song_stem(name: str) -> str:
    """The 40 hex digits that name a song: of `<stem>.opus`, or of a temporary file
    `.<stem>.part` (or `.<stem>.<8 hex>.part`, as older versions named them)."""
    if name.endswith(TEMP_SUFFIX):
        return name.lstrip(".").split(".")[0]
    return name.removesuffix(SONG_SUFFIX)


def identity(path: Path) -> tuple[int, int] | None:
    """Which file `path` names now (device, inode); None if none."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def create_exclusive(path: Path) -> int:
    """Open a new file for writing; FileExistsError if it exists. Returns the descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o644)


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data`: os.write may write less than asked."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable (POSIX; nothing to do on Windows)."""
    if sys.platform == "win32":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # file systems that cannot sync a directory say EINVAL
            raise
    finally:
        os.close(fd)


@attrs.frozen
class Listing:
    """The regular files of the songs directory."""

    songs: dict[str, int]
    """Finished-looking files (`*.opus`, not hidden): name -> size."""
    temporary: tuple[str, ...]
    """Files of unfinished writes (`*.part`)."""
    other: tuple[str, ...]
    """Any other regular file (nothing the store writes)."""


def list_songs(songs_dir: Path) -> Listing:
    songs: dict[str, int] = {}
    temporary: list[str] = []
    other: list[str] = []
    with os.scandir(songs_dir) as entries:
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.name.endswith(TEMP_SUFFIX):
                temporary.append(entry.name)
            elif entry.name.endswith(SONG_SUFFIX) and not entry.name.startswith("."):
                songs[entry.name] = entry.stat(follow_symlinks=False).st_size
            else:
                other.append(entry.name)
    return Listing(songs, tuple(sorted(temporary)), tuple(sorted(other)))


def remove(path: Path) -> None:
    """Delete `path` if it is there."""
    path.unlink(missing_ok=True)
