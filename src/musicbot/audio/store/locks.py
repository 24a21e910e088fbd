"""The locks that let several processes share one store directory.

All are flock(2) locks. A flock belongs to an open file description, so the kernel drops it
when the process that holds it dies, however it dies, and two descriptors in one process
exclude each other as two processes do: the store's own readers and deleters follow the same
rules as another process's.

- `lock`, the store's: shared by every process that has the store open; exclusive by an
  operation that needs the store to itself (`musicbot cache clear`), which so never runs beside
  a bot.
- `index.lock`, the index's gate: exclusive while a process creates the index or swaps in a
  rebuilt one; shared while a process opens the index, around each index write, and while
  closing it. So nobody opens an index, writes to it, or closes it (SQLite's last close deletes
  its -wal and -shm files by name) while another process swaps it.
- `locks/<40 hex>.lock`, a song's write lock: held by the one writer of that song, from before
  its temporary file exists until its index row is in, and by whoever deletes or re-indexes the
  song's file. So a song has one writer at a time across processes.
- `songs/<40 hex>.opus`, the song file itself: shared by each reader; exclusive, without
  waiting, by whoever deletes it, who skips a song in use. So a song being played anywhere is
  never deleted.

A key's lock file is deleted by the holder as it lets go; a crashed holder leaves it behind,
unlocked, and the next holder (or the start-up reconciliation) takes it over. All of these
calls are system calls that never wait (`flock` with `LOCK_NB`); `IndexGate.shared` polls.

Windows has no flock: there nothing is locked, and one process may use a directory at a time.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from musicbot.audio.store import files
from musicbot.audio.store.errors import IndexBusy, StoreLocked

if sys.platform != "win32":
    import fcntl

STORE_LOCK_NAME = "lock"
INDEX_LOCK_NAME = "index.lock"
KEY_LOCK_SUFFIX = ".lock"

GATE_POLL = 0.005
"""Seconds between two tries at a held `index.lock`."""

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)  # an ffmpeg child must not keep a lock alive


class SongBeingDeleted(Exception):
    """The song file is held exclusively: a process is deleting it."""


def try_lock(fd: int, *, exclusive: bool) -> bool:
    """Lock `fd` without waiting (or change its lock); False if another holder prevents it."""
    if sys.platform == "win32":
        return True
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def unlock(fd: int) -> None:
    if sys.platform != "win32":
        fcntl.flock(fd, fcntl.LOCK_UN)


def _open_lock_file(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | _CLOEXEC, 0o644)


# --- the store's lock ----------------------------------------------------------------------------


def lock_store(directory: Path, *, exclusive: bool) -> int:
    """Take the store's lock, shared or exclusive; StoreLocked if it cannot be had now. Returns
    the descriptor to close (which lets go)."""
    fd = _open_lock_file(directory / STORE_LOCK_NAME)
    if try_lock(fd, exclusive=exclusive):
        return fd
    os.close(fd)
    if exclusive:
        raise StoreLocked(
            f"another process is using the store in {directory}: this needs the store to"
            " itself, so stop the musicbot processes using it first"
        )
    raise StoreLocked(
        f"another process has the store in {directory} to itself (a `musicbot cache clear`?):"
        " try again once it is done"
    )


# --- the index's gate ----------------------------------------------------------------------------


class IndexGate:
    """`index.lock` (see the module docstring). One descriptor per store: use it only while
    holding the store's index-writer limiter, so that no two users in the process change its
    lock under each other."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def open(cls, directory: Path) -> IndexGate:
        return cls(_open_lock_file(directory / INDEX_LOCK_NAME))

    def try_exclusive(self) -> bool:
        return try_lock(self._fd, exclusive=True)

    def try_shared(self) -> bool:
        return try_lock(self._fd, exclusive=False)

    def release(self) -> None:
        unlock(self._fd)

    def close(self) -> None:
        os.close(self._fd)

    @contextmanager
    def shared(self, timeout: float) -> Iterator[None]:
        """Hold it shared for the body, waiting up to `timeout` seconds for a process that
        holds it exclusively (blocking: call from a worker thread); IndexBusy after that."""
        deadline = time.monotonic() + timeout
        while not self.try_shared():
            if time.monotonic() >= deadline:
                raise IndexBusy("database is locked: another process is swapping in a new index")
            time.sleep(GATE_POLL)
        try:
            yield
        finally:
            self.release()


# --- a key's write lock --------------------------------------------------------------------------


def key_lock_path(locks_dir: Path, stem: str) -> Path:
    return locks_dir / f"{stem}{KEY_LOCK_SUFFIX}"


def try_lock_key(locks_dir: Path, stem: str) -> int | None:
    """Take the write lock of the song whose file is `<stem>.opus`, without waiting: its
    descriptor (for `unlock_key`), or None if a holder in any process has it."""
    path = key_lock_path(locks_dir, stem)
    while True:
        fd = _open_lock_file(path)
        if not try_lock(fd, exclusive=True):
            os.close(fd)
            return None
        if _names(path, fd):
            return fd
        # Its holder deleted the file as it let go, after we opened it: lock the one there now.
        os.close(fd)


def unlock_key(locks_dir: Path, stem: str, fd: int) -> None:
    """Let go of a key's write lock: delete its file while still holding it, then close."""
    try:
        files.remove(key_lock_path(locks_dir, stem))
    finally:
        os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


# --- song files ----------------------------------------------------------------------------------


def open_shared(path: Path) -> int:
    """Open a song file to read it, holding it shared until the descriptor is closed.

    FileNotFoundError (an OSError) if there is no such file; SongBeingDeleted if a process is
    deleting it (it holds the file exclusively, or has deleted it since we opened it).
    """
    fd = os.open(path, os.O_RDONLY | _CLOEXEC | getattr(os, "O_BINARY", 0))
    try:
        if not try_lock(fd, exclusive=False) or os.fstat(fd).st_nlink == 0:
            raise SongBeingDeleted(f"{path.name} is being deleted")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def claim_song(locks_dir: Path, path: Path) -> Iterator[bool]:
    """Hold a song for deleting it: its key's write lock, and its file exclusively (if it is
    still there). Yields False, holding nothing, when a writer, a reader or another deleter, in
    any process, has it: the caller leaves that song alone."""
    stem = files.song_stem(path.name)
    key_fd = try_lock_key(locks_dir, stem)
    if key_fd is None:
        yield False
        return
    try:
        try:
            fd = os.open(path, os.O_RDONLY | _CLOEXEC)
        except FileNotFoundError:
            fd = None
        try:
            yield fd is None or try_lock(fd, exclusive=True)
        finally:
            if fd is not None:
                os.close(fd)
    finally:
        unlock_key(locks_dir, stem, key_fd)


def remove_unless_in_use(path: Path) -> bool:
    """Delete `path` unless a reader or deleter holds it; True if it is gone. Call holding the
    song's key lock."""
    try:
        fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        if not try_lock(fd, exclusive=True):
            return False
        files.remove(path)
        return True
    finally:
        os.close(fd)
