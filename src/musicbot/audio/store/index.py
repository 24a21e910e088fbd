"""SongIndex: the SQLite index of stored songs, and the resolved-metadata cache.

Synchronous and blocking: the store calls it from worker threads (`trio.to_thread.run_sync`,
one at a time through a CapacityLimiter of 1). One connection, opened with
`check_same_thread=False` and guarded by a lock, so any worker thread may use it.

The database is in WAL mode with `synchronous=NORMAL`: a commit does not wait for fsync, so a
power cut may lose the last few transactions but never corrupts the file; the store's startup
reconciliation then deletes the song files that lost their rows. The schema version is SQLite's
`user_version`; `MIGRATIONS[n]` takes a database from version n-1 to n, in one transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from musicbot.audio.store.errors import IndexVersionError
from musicbot.audio.store.values import StoredSong

Migration = Callable[[sqlite3.Connection], None]


def _create_tables(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE songs (
            key TEXT PRIMARY KEY,
            file TEXT NOT NULL UNIQUE,
            title TEXT NOT NULL,
            duration REAL NOT NULL,
            bytes INTEGER NOT NULL,
            packets INTEGER NOT NULL,
            created REAL NOT NULL,
            last_played REAL NOT NULL,
            play_count INTEGER NOT NULL,
            checksum TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX songs_by_last_played ON songs (last_played)")
    db.execute(
        """
        CREATE TABLE resolved (
            query TEXT PRIMARY KEY,
            data TEXT NOT NULL,
            stored_at REAL NOT NULL
        )
        """
    )


MIGRATIONS: dict[int, Migration] = {1: _create_tables}
"""Version n's migration takes the schema from n-1 to n. Add n+1 here (and never edit n)."""

SCHEMA_VERSION = max(MIGRATIONS)

_SONG_COLUMNS = (
    "key, file, title, duration, bytes, packets, created, last_played, play_count, checksum"
)


class SongIndex:
    """The index of one store directory; `SongIndex.open(path, songs_dir)`."""

    def __init__(self, db: sqlite3.Connection, songs_dir: Path) -> None:
        self._db = db
        self._songs_dir = songs_dir
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: Path,
        songs_dir: Path,
        *,
        migrations: dict[int, Migration] | None = None,
    ) -> SongIndex:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"cannot put {path} in WAL mode (got {mode!r})")
            db.execute("PRAGMA synchronous=NORMAL")
            migrate(db, MIGRATIONS if migrations is None else migrations)
        except BaseException:
            db.close()
            raise
        return cls(db, songs_dir)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- songs ---------------------------------------------------------------------------------

    def get(self, key: str) -> StoredSong | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_SONG_COLUMNS} FROM songs WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else self._song(row)

    def put(self, song: StoredSong) -> None:
        """Insert `song`, or replace the row with its key."""
        with self._transaction() as db:
            db.execute(
                f"INSERT OR REPLACE INTO songs ({_SONG_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    song.key,
                    song.path.name,
                    song.title,
                    song.duration,
                    song.size,
                    song.packets,
                    song.created,
                    song.last_played,
                    song.play_count,
                    song.checksum,
                ),
            )

    def delete(self, key: str) -> StoredSong | None:
        """Delete the row of `key`; return it (None if there was none)."""
        with self._transaction() as db:
            row = db.execute(f"SELECT {_SONG_COLUMNS} FROM songs WHERE key = ?", (key,)).fetchone()
            db.execute("DELETE FROM songs WHERE key = ?", (key,))
        return None if row is None else self._song(row)

    def mark_played(self, key: str, now: float) -> bool:
        """One more play of `key`, at `now`; False if there is no such row."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE songs SET last_played = ?, play_count = play_count + 1 WHERE key = ?",
                (now, key),
            )
        return cursor.rowcount == 1

    def songs(self) -> list[StoredSong]:
        """Every row, least recently played first: the eviction order."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_SONG_COLUMNS} FROM songs ORDER BY last_played, created, key"
            ).fetchall()
        return [self._song(row) for row in rows]

    def totals(self) -> tuple[int, int]:
        """(entries, bytes) of all rows."""
        with self._lock:
            entries, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM songs"
            ).fetchone()
        return int(entries), int(size)

    def _song(self, row: tuple[Any, ...]) -> StoredSong:
        key, file, title, duration, size, packets, created, last_played, count, checksum = row
        return StoredSong(
            key=str(key),
            path=self._songs_dir / str(file),
            title=str(title),
            duration=float(duration),
            size=int(size),
            packets=int(packets),
            created=float(created),
            last_played=float(last_played),
            play_count=int(count),
            checksum=str(checksum),
        )

    # --- the resolved-metadata cache -----------------------------------------------------------

    def put_resolved(self, query: str, data: str, stored_at: float) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO resolved (query, data, stored_at) VALUES (?, ?, ?)",
                (query, data, stored_at),
            )

    def get_resolved(self, query: str) -> tuple[str, float] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT data, stored_at FROM resolved WHERE query = ?", (query,)
            ).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def all_resolved(self, since: float) -> list[tuple[str, str, float]]:
        """(query, data, stored_at) of the entries stored at `since` or later, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT query, data, stored_at FROM resolved WHERE stored_at >= ?"
                " ORDER BY stored_at, query",
                (since,),
            ).fetchall()
        return [(str(query), str(data), float(at)) for query, data, at in rows]

    def purge_resolved(self, before: float) -> int:
        """Delete the entries stored before `before`; return how many."""
        with self._transaction() as db:
            cursor = db.execute("DELETE FROM resolved WHERE stored_at < ?", (before,))
        return cursor.rowcount


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, migrations: dict[int, Migration]) -> int:
    """Bring `db` to the newest version in `migrations`, one transaction per step; return it.

    Raises IndexVersionError for a database newer than every migration known here.
    """
    target = max(migrations)
    current = schema_version(db)
    if current > target:
        raise IndexVersionError(
            f"the store index has schema version {current}; this musicbot knows up to {target}"
        )
    for version in range(current + 1, target + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            migrations[version](db)
            db.execute(f"PRAGMA user_version = {version:d}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return target
