"""The SQLite index: WAL mode, rows in and out, the eviction order, the schema's migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from musicbot.audio.store.errors import IndexVersionError
from musicbot.audio.store.index import MIGRATIONS, SCHEMA_VERSION, SongIndex, schema_version
from musicbot.audio.store.values import StoredSong


def song(key: str, *, played: float, size: int = 100, songs: Path = Path("/s")) -> StoredSong:
    return StoredSong(
        key=key,
        path=songs / f"{key}.opus",
        title=f"Song {key}",
        duration=1.5,
        size=size,
        packets=75,
        created=played,
        last_played=played,
        play_count=1,
        checksum="ab" * 32,
    )


def test_rows_round_trip_in_wal_mode(tmp_path: Path) -> None:
    index = SongIndex.open(tmp_path / "index.sqlite3", tmp_path / "songs")
    try:
        row = song("a", played=10.0, songs=tmp_path / "songs")
        index.put(row)
        index.put(song("b", played=5.0, size=50, songs=tmp_path / "songs"))
        assert index.get("a") == row
        assert index.get("nope") is None
        assert index.totals() == (2, 150)
        assert [entry.key for entry in index.songs()] == ["b", "a"]  # least recently played first

        assert index.mark_played("b", 20.0)
        assert not index.mark_played("nope", 20.0)
        played = index.get("b")
        assert played is not None and (played.last_played, played.play_count) == (20.0, 2)
        assert [entry.key for entry in index.songs()] == ["a", "b"]

        assert index.delete("a") == row
        assert index.delete("a") is None
        assert index.totals() == (1, 50)
    finally:
        index.close()

    db = sqlite3.connect(tmp_path / "index.sqlite3")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert schema_version(db) == SCHEMA_VERSION
        assert db.execute("SELECT key FROM songs").fetchall() == [("b",)]  # durable across opens
    finally:
        db.close()


def test_the_resolved_cache_keeps_blobs_with_their_time(tmp_path: Path) -> None:
    index = SongIndex.open(tmp_path / "index.sqlite3", tmp_path)
    try:
        index.put_resolved("never gonna", '{"tracks": []}', 100.0)
        index.put_resolved("old", "[1]", 50.0)
        index.put_resolved("never gonna", '{"tracks": [1]}', 200.0)  # replaces
        assert index.get_resolved("never gonna") == ('{"tracks": [1]}', 200.0)
        assert index.get_resolved("missing") is None
        assert index.all_resolved(0.0) == [
            ("old", "[1]", 50.0),
            ("never gonna", '{"tracks": [1]}', 200.0),
        ]
        assert index.all_resolved(60.0) == [("never gonna", '{"tracks": [1]}', 200.0)]
        assert index.purge_resolved(before=60.0) == 1
        assert index.get_resolved("old") is None
    finally:
        index.close()


def test_a_migration_runs_once_on_an_older_index(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    SongIndex.open(path, tmp_path).close()
    runs = []

    def add_loudness(db: sqlite3.Connection) -> None:
        runs.append(1)
        db.execute("ALTER TABLE songs ADD COLUMN loudness REAL")

    newer = {**MIGRATIONS, SCHEMA_VERSION + 1: add_loudness}
    SongIndex.open(path, tmp_path, migrations=newer).close()
    SongIndex.open(path, tmp_path, migrations=newer).close()
    assert runs == [1]
    db = sqlite3.connect(path)
    try:
        assert schema_version(db) == SCHEMA_VERSION + 1
        columns = [row[1] for row in db.execute("PRAGMA table_info(songs)")]
        assert columns[-1] == "loudness"
    finally:
        db.close()

    # This musicbot does not know version SCHEMA_VERSION + 1: it refuses rather than guess.
    with pytest.raises(IndexVersionError, match=f"schema version {SCHEMA_VERSION + 1}"):
        SongIndex.open(path, tmp_path)


def test_a_failed_migration_leaves_the_index_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    SongIndex.open(path, tmp_path).close()

    def broken(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE songs ADD COLUMN half_done REAL")
        raise RuntimeError("bug in migration")

    with pytest.raises(RuntimeError, match="bug in migration"):
        SongIndex.open(path, tmp_path, migrations={**MIGRATIONS, SCHEMA_VERSION + 1: broken})
    db = sqlite3.connect(path)
    try:
        assert schema_version(db) == SCHEMA_VERSION
        assert "half_done" not in [row[1] for row in db.execute("PRAGMA table_info(songs)")]
    finally:
        db.close()
