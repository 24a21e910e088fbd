"""The processed-song store: songs transcoded once, kept on disk as Ogg Opus, played again from
there at almost no CPU. `open_store` is the way in; docs/store.md describes the files.
"""

from musicbot.audio.store.errors import IndexVersionError, StoredSongError, StoreLocked
from musicbot.audio.store.keys import canonical_url, track_key
from musicbot.audio.store.oggwrite import OggOpusWriter
from musicbot.audio.store.reader import StoredStream
from musicbot.audio.store.store import ProcessedSongStore, open_store
from musicbot.audio.store.values import (
    ReconcileReport,
    ResolvedEntry,
    StoredSong,
    StoreStatistics,
    VerifyReport,
)
from musicbot.audio.store.writer import Outcome, SongWriter

__all__ = [
    "IndexVersionError",
    "OggOpusWriter",
    "Outcome",
    "ProcessedSongStore",
    "ReconcileReport",
    "ResolvedEntry",
    "SongWriter",
    "StoreLocked",
    "StoreStatistics",
    "StoredSong",
    "StoredSongError",
    "StoredStream",
    "VerifyReport",
    "canonical_url",
    "open_store",
    "track_key",
]
