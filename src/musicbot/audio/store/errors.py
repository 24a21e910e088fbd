"""What the store raises."""

from __future__ import annotations

import sqlite3

from musicbot.core.ports import SourceError


class StoredSongError(SourceError):
    """A stored song could not be read back: its file is missing, truncated or corrupt.

    The caller drops the entry (`await store.drop(error.key)`) and fetches the track again.
    A SourceError, so a player that does not know the store still reports it sensibly; the
    message (`str(error)`) is for the user, `key` and `reason` for the log.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__("the saved copy of this track was damaged, so it will be fetched again")
        self.key = key
        self.reason = reason


class StoreLocked(RuntimeError):
    """The store directory cannot be opened as asked: an operation that needs it to itself
    (`open_store(..., exclusive=True)`, e.g. `musicbot cache clear`) while other processes have
    it open, or any opening while such an operation runs. The message says which."""


class IndexBusy(sqlite3.OperationalError):
    """Another process held the index to itself (swapping in a rebuilt index) for longer than
    a write may wait. Like SQLite's "database is locked": the write is bookkeeping lost."""


class IndexVersionError(RuntimeError):
    """The index was written by a newer musicbot, with a schema this one does not know."""


class IndexDamaged(sqlite3.DatabaseError):
    """The SQLite index cannot be read: it is not a database, or SQLite found it malformed.

    The store rebuilds it from the song files (their tags name each song's key and title). A
    sqlite3.DatabaseError, so whatever copes with a failing index copes with this too.
    """
