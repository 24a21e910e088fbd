"""The store directory on disk: names, and the blocking file operations (call them from worker
threads).

    <directory>/
      index.sqlite3 (-wal, -shm)    the SongIndex
      lock                          held (flock) by the process that has the store open
      songs/<40 hex>.opus           one finished song: sha256(key), first 160 bits
      songs/.<40 hex>.<8 hex>.part  a song being written; never read, deleted at startup
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import sys
from pathlib import Path

import attrs

from musicbot.audio.store.errors import StoreLocked

INDEX_NAME = "index.sqlite3"
LOCK_NAME = "lock"
SONGS_DIR = "songs"
SONG_SUFFIX = ".opus"
TEMP_SUFFIX = ".part"

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def song_name(key: str) -> str:
    """The file name of the song filed under `key`."""
    return hashlib.sha256(key.encode()).hexdigest()[:40] + SONG_SUFFIX


def temp_name(key: str) -> str:
    """A fresh temporary file name for a song being written under `key`."""
    stem = song_name(key).removesuffix(SONG_SUFFIX)
    return f".{stem}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


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


def lock_directory(directory: Path) -> int:
    """Take the store's lock file; StoreLocked if another process holds it. Returns the
    descriptor to pass to `unlock`; the kernel drops the lock if the process dies."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(directory / LOCK_NAME, flags, 0o644)
    if sys.platform != "win32":
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(f"another process is using the store in {directory}") from None
    return fd


def unlock(fd: int) -> None:
    os.close(fd)  # closing the descriptor releases the flock


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
