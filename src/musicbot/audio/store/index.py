"""SongIndex: the SQLite index of stored songs, and the resolved-metadata cache.

Synchronous and blocking: the store calls it from worker threads (`trio.to_thread.run_sync`).
Two connections, each opened with `check_same_thread=False` and guarded by a lock of its own:
one writes, one reads. In WAL mode a reader never waits for a writer, so while a write waits
for a lock another process holds (another musicbot's write, an operator's `sqlite3` shell, a
backup), lookups go on. A write waits at most `WRITE_TIMEOUT` for such a lock, then fails with
"database is locked". Several processes may have the index open at once (see docs/store.md).

`SongIndex.open` raises `IndexDamaged` when the file is not a database or fails SQLite's
`quick_check`; `is_damaged(error)` tells such errors apart later (the store rebuilds the index).

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

from musicbot.audio.store.errors import IndexDamaged, IndexVersionError
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


WRITE_TIMEOUT = 0.5
"""Seconds a write waits for a lock held by another process before it fails ("database is
locked"). Nothing in the bot holds the write lock for long, so only an outsider waits this."""

READ_TIMEOUT = 0.5
"""Seconds a read waits when another process checkpoints or recovers the WAL (rare)."""

_DAMAGED_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def is_damaged(error: BaseException) -> bool:
    """Whether `error` says the index file is damaged (not a locked or a full disk)."""
    if isinstance(error, IndexDamaged):
        return True
    code = getattr(error, "sqlite_errorcode", None)
    if not isinstance(error, sqlite3.DatabaseError) or code is None:
        return False
    return code & 0xFF in _DAMAGED_CODES  # the primary code, without the extended bits


class SongIndex:
    """The index of one store directory; `SongIndex.open(path, songs_dir)`."""

    def __init__(
        self, writer: sqlite3.Connection, reader: sqlite3.Connection, songs_dir: Path
    ) -> None:
        self._db = writer
        self._reader = reader
        self._songs_dir = songs_dir
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: Path,
        songs_dir: Path,
        *,
        migrations: dict[int, Migration] | None = None,
    ) -> SongIndex:
        """Open (creating it if needed) and migrate the index at `path`.

        IndexDamaged if it is not a database or fails `PRAGMA quick_check`; IndexVersionError
        if it is newer than every migration known here; sqlite3.Error for anything else.
        """
        connections: list[sqlite3.Connection] = []
        try:
            writer = _connect(path, WRITE_TIMEOUT, connections)
            mode = writer.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"cannot put {path} in WAL mode (got {mode!r})")
            writer.execute("PRAGMA synchronous=NORMAL")
            _check_intact(writer, path)
            migrate(writer, MIGRATIONS if migrations is None else migrations)
            reader = _connect(path, READ_TIMEOUT, connections)
            reader.execute("PRAGMA query_only=ON")
            # A first read opens the WAL and its shared memory now, by name: later on, another
            # process may swap in a rebuilt index under that name (see the store's index gate).
            reader.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except BaseException as exc:
            for db in connections:
                db.close()
            if is_damaged(exc) and not isinstance(exc, IndexDamaged):
                raise IndexDamaged(f"{path}: {exc}") from exc
            raise
        return cls(writer, reader, songs_dir)

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
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

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            yield self._reader

    # --- songs ---------------------------------------------------------------------------------

    def get(self, key: str) -> StoredSong | None:
        with self._reading() as db:
            row = db.execute(f"SELECT {_SONG_COLUMNS} FROM songs WHERE key = ?", (key,)).fetchone()
        return None if row is None else self._song(row)

    def put(self, *songs: StoredSong) -> None:
        """Insert each song, or replace the row with its key (one transaction)."""
        with self._transaction() as db:
            db.executemany(
                f"INSERT OR REPLACE INTO songs ({_SONG_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
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
                    )
                    for song in songs
                ],
            )

    def delete(self, key: str, *, only: StoredSong | None = None) -> StoredSong | None:
        """Delete the row of `key` (only if it is still `only`, when given); return it (None if
        nothing was deleted)."""
        with self._transaction() as db:
            row = db.execute(f"SELECT {_SONG_COLUMNS} FROM songs WHERE key = ?", (key,)).fetchone()
            song = None if row is None else self._song(row)
            if song is None or (only is not None and song != only):
                return None
            db.execute("DELETE FROM songs WHERE key = ?", (key,))
        return song

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
        with self._reading() as db:
            rows = db.execute(
                f"SELECT {_SONG_COLUMNS} FROM songs ORDER BY last_played, created, key"
            ).fetchall()
        return [self._song(row) for row in rows]

    def names(self, file: str) -> bool:
        """Whether a row names the song file `file` (a name in the songs directory)."""
        with self._reading() as db:
            return db.execute("SELECT 1 FROM songs WHERE file = ?", (file,)).fetchone() is not None

    def totals(self) -> tuple[int, int]:
        """(entries, bytes) of all rows."""
        with self._reading() as db:
            entries, size = db.execute(
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
        with self._reading() as db:
            row = db.execute(
                "SELECT data, stored_at FROM resolved WHERE query = ?", (query,)
            ).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def all_resolved(self, since: float) -> list[tuple[str, str, float]]:
        """(query, data, stored_at) of the entries stored at `since` or later, oldest first."""
        with self._reading() as db:
            rows = db.execute(
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


def _connect(path: Path, timeout: float, opened: list[sqlite3.Connection]) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
    opened.append(db)
    return db


def _check_intact(db: sqlite3.Connection, path: Path) -> None:
    """IndexDamaged unless SQLite's quick_check passes (milliseconds for thousands of songs)."""
    problems = [str(row[0]) for row in db.execute("PRAGMA quick_check(5)").fetchall()]
    if problems != ["ok"]:
        raise IndexDamaged(f"{path} fails SQLite's quick_check: {'; '.join(problems)}")


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
            if schema_version(db) < version:  # another process may have migrated it meanwhile
                migrations[version](db)
                db.execute(f"PRAGMA user_version = {version:d}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return target
