"""SongWriter: a song's packets, taken as they are played, filed in the store on commit.

    async with store.writer(key, title=track.title, duration=track.duration) as writer:
        async for packet in frames:
            voice.send_frame(packet)
            writer.add(packet)        # synchronous, a few microseconds, never touches the disk
        await writer.commit()         # only when the whole track went through

`add` runs the packet through the Ogg writer and appends the finished pages to a Spool, whose
flusher task (in the writer's own nursery) writes them to a temporary file from a worker thread.
`commit` writes the rest, fsyncs, reads the whole file back (Ogg structure, CRCs, packet count,
SHA-256 against the bytes written), then hands it to the store to rename into place and index.

A writer gives up quietly, never raising into the player: past `max_seconds` or `max_bytes`
(abandoned), or when the disk refuses (any OSError; failed). Leaving the context without a
commit (a skip, an error, cancellation) abandons it. Either way its temporary file is deleted.
Each writer reports exactly one outcome to the store, once it stops writing.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from musicbot.audio.ogg import OggError
from musicbot.audio.store.oggcheck import FileCheck, check_file
from musicbot.audio.store.oggwrite import OPUS_SAMPLE_RATE, OggOpusWriter
from musicbot.audio.store.spool import Spool
from musicbot.audio.store.values import StoredSong
from musicbot.core.services import open_service_nursery

log = logging.getLogger(__name__)


TRUNCATION_TOLERANCE = 2.0
"""Seconds a song may fall short of its announced duration and still be kept (durations are
rounded, and encoders pad or trim a frame or two)."""


class Outcome(enum.Enum):
    COMMITTED = "committed"
    ABANDONED = "abandoned"
    FAILED = "failed"


@attrs.frozen
class WriterLimits:
    max_seconds: float
    """Give up on a song longer than this."""
    max_bytes: int
    """Give up on a song whose file would be bigger than this."""
    max_backlog: int = 16 * 2**20
    """Give up (a failure: the disk is too slow) when this many bytes wait for the disk."""


Publish = Callable[[str, Path, FileCheck, str], Awaitable[StoredSong]]
"""`publish(key, temporary_file, check, title)`: move the verified file into place and index
it; raises OSError or sqlite3.Error (having cleaned up) when it cannot."""

Report = Callable[[str, Outcome, str, BaseException | None], None]
"""`report(key, outcome, reason, error)`: called once per writer that started writing."""

AfterCommit = Callable[[str], Awaitable[None]]
"""`after_commit(key)`: housekeeping once the song is filed (eviction); may be cancelled."""


@attrs.frozen
class Filing:
    """The store's side of a writer: its limits, its I/O threads, where outcomes go."""

    limits: WriterLimits
    limiter: trio.CapacityLimiter
    publish: Publish
    report: Report
    after_commit: AfterCommit


class SongWriter:
    """See the module docstring. Made by `ProcessedSongStore.writer()`.

    Without `ogg` and `filing` it is a refused writer: `add` does nothing, `commit` returns
    None, and `reason` says why (a live stream, a song already stored...).
    """

    def __init__(
        self,
        key: str,
        *,
        title: str = "",
        duration: float | None = None,
        ogg: OggOpusWriter | None = None,
        filing: Filing | None = None,
        reason: str = "",
    ) -> None:
        if (ogg is None) != (filing is None):
            raise ValueError("a writer needs both an Ogg writer and a filing, or neither")
        self.key = key
        self.title = title
        self.duration = duration
        """Seconds the source said the song lasts: a song ending well short of it (a download
        cut short, which ffmpeg may end normally) is not kept."""
        self._ogg = ogg
        self._filing = filing
        self._spool: Spool | None = None
        self._max_samples = 0.0 if filing is None else filing.limits.max_seconds * OPUS_SAMPLE_RATE
        self._closed = False
        self.outcome: Outcome | None = None
        self.reason = reason
        """Why the writer stopped, or why it never started."""

    @property
    def active(self) -> bool:
        """Still taking packets: not refused, given up or committed."""
        return self._spool is not None and self.outcome is None

    @property
    def packets(self) -> int:
        return 0 if self._ogg is None else self._ogg.packets

    @property
    def seconds(self) -> float:
        """Seconds of audio added."""
        return 0.0 if self._ogg is None else self._ogg.granule / OPUS_SAMPLE_RATE

    def add(self, packet: bytes) -> None:
        """Take the next Opus packet. Synchronous and cheap; never raises for a disk problem."""
        if self._closed:
            raise RuntimeError(f"add() on the closed writer of {self.key!r}")
        spool, ogg, filing = self._spool, self._ogg, self._filing
        if self.outcome is not None or spool is None or ogg is None or filing is None:
            return
        spool.append(ogg.add(packet))
        if ogg.granule > self._max_samples:
            self._end(Outcome.ABANDONED, f"longer than {filing.limits.max_seconds:g} s")
        elif spool.size > filing.limits.max_bytes:
            self._end(Outcome.ABANDONED, f"bigger than the store ({filing.limits.max_bytes} bytes)")
        elif spool.backlog > filing.limits.max_backlog:
            self._end(Outcome.FAILED, f"the disk is too slow ({spool.backlog} bytes waiting)")

    async def commit(self) -> StoredSong | None:
        """File the song: the StoredSong, or None if the writer gave up or was refused (the
        reason is in `reason`; the statistics count it). Call once, after the last packet."""
        if self._closed:
            raise RuntimeError(f"commit() on the closed writer of {self.key!r}")
        self._closed = True
        spool, ogg, filing = self._spool, self._ogg, self._filing
        if self.outcome is not None or spool is None or ogg is None or filing is None:
            return None
        if ogg.packets == 0:
            self._end(Outcome.ABANDONED, "no audio")
            return None
        if self.duration is not None and self.seconds < self.duration - TRUNCATION_TOLERANCE:
            self._end(
                Outcome.ABANDONED,
                f"cut short: {self.seconds:.2f} s of the {self.duration:g} s the source announced",
            )
            return None
        spool.append(ogg.finish())
        digest = await spool.finish()
        if digest is None:  # the disk refused; reported through the spool's on_error
            return None
        try:
            check = await trio.to_thread.run_sync(check_file, spool.path, limiter=filing.limiter)
        except OSError as exc:
            self._end(Outcome.FAILED, f"cannot read the file back: {exc}", exc)
            return None
        except OggError as exc:
            self._end(Outcome.FAILED, f"the file read back is not what was written: {exc}", exc)
            return None
        if (check.size, check.packets, check.sha256) != (spool.size, ogg.packets, digest):
            self._end(
                Outcome.FAILED,
                f"the file read back is not what was written: {check.size} bytes,"
                f" {check.packets} packets, sha256 {check.sha256[:12]}; wrote {spool.size} bytes,"
                f" {ogg.packets} packets, sha256 {digest[:12]}",
            )
            return None
        try:
            song = await filing.publish(self.key, spool.path, check, self.title)
        except (OSError, sqlite3.Error) as exc:
            self._end(Outcome.FAILED, f"cannot file it: {exc}", exc)
            return None
        self._end(Outcome.COMMITTED, "committed")
        await filing.after_commit(self.key)
        return song

    def _disk_error(self, exc: OSError) -> None:
        self._end(Outcome.FAILED, f"cannot write {exc.filename or 'the file'}: {exc}", exc)

    def _end(self, outcome: Outcome, reason: str, error: BaseException | None = None) -> None:
        if self.outcome is not None or self._filing is None:
            return
        self.outcome = outcome
        self.reason = reason
        if outcome is not Outcome.COMMITTED and self._spool is not None:
            self._spool.stop()  # the flusher deletes the file now, not when the song ends
        self._filing.report(self.key, outcome, reason, error)


@asynccontextmanager
async def open_writer(
    writer: SongWriter, directory: Path, temp_name: str
) -> AsyncIterator[SongWriter]:
    """Run `writer` for the life of the context: its temporary file
    `directory/temp_name` and the flusher task writing it. Leaving without a commit abandons
    the song and deletes the file, also when cancelled."""
    filing = writer._filing
    if filing is None:  # a refused writer
        yield writer
        return
    try:
        spool = await Spool.create(
            directory, temp_name, limiter=filing.limiter, on_error=writer._disk_error
        )
    except OSError as exc:
        writer._disk_error(exc)
        yield writer
        return
    writer._spool = spool
    try:
        async with open_service_nursery("song writer closing") as flushers:
            flushers.start_soon(spool.run, name=f"flush {temp_name}")
            yield writer
    finally:
        writer._closed = True
        if writer.outcome is None:
            writer._end(Outcome.ABANDONED, "left before the whole song was written")
        if writer.outcome is not Outcome.COMMITTED:
            # Shielded, with no deadline: virtual clocks jump while threads work.
            with trio.CancelScope(shield=True):
                try:
                    await trio.to_thread.run_sync(spool.discard, limiter=filing.limiter)
                except OSError as exc:
                    log.warning("could not delete %s: %s", spool.path, exc)
