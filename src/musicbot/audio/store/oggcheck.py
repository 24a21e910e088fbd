"""Reading stored files back with every check on: page checksums, order, and a proper end.

`VerifyingDemuxer` is `musicbot.audio.ogg.OggOpusDemuxer` behind a `PageChecker` that vets each
whole page first (capture pattern, version, CRC at C speed, one logical stream, consecutive
sequence numbers, beginning- and end-of-stream flags where they belong) and, at the end, that
the stream was not cut short and that the last granule position counts the samples of every
packet. `check_file` runs a whole file through it and hashes it. All synchronous: call them from
a worker thread.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import attrs

from musicbot.audio.ogg import CAPTURE_PATTERN, HEADER_SIZE, OggError, OggOpusDemuxer
from musicbot.audio.store.crc import page_checksum
from musicbot.audio.store.oggwrite import OPUS_SAMPLE_RATE
from musicbot.audio.store.toc import packet_samples
from musicbot.audio.store.values import StoredSong

CHUNK_SIZE = 64 * 1024
"""Bytes read from disk at a time."""

_HEADER = struct.Struct("<4sBBqIIIB")
_BEGINS = 0x02
_ENDS = 0x04


class PageChecker:
    """Feed bytes; get back the bytes of the whole pages among them, each one checked.

    Raises OggError naming the first problem: not Ogg, a bad checksum, a page missing or out of
    order, a second logical stream, bytes after the end-of-stream page.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._consumed = 0
        self.serial: int | None = None
        self.pages = 0
        self.ended = False
        """The end-of-stream page was seen."""
        self.granule = -1
        """The granule position of the last page that had one (-1 before any)."""

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        buffer = self._buffer
        buffer += data
        offset = 0
        end = len(buffer)
        while end - offset >= HEADER_SIZE:
            if self.ended:
                raise OggError(f"bytes after the end of the stream at byte {self._at(offset)}")
            magic, version, flags, granule, serial, sequence, crc, segments = _HEADER.unpack_from(
                buffer, offset
            )
            if magic != CAPTURE_PATTERN:
                raise OggError(
                    f"not an Ogg page at byte {self._at(offset)}: found {magic!r}, not b'OggS'"
                )
            if version != 0:
                raise OggError(f"unsupported Ogg version {version} at byte {self._at(offset)}")
            body = offset + HEADER_SIZE + segments
            if end < body:
                break
            page_end = body + sum(buffer[offset + HEADER_SIZE : body])
            if end < page_end:
                break
            actual = page_checksum(memoryview(buffer)[offset:page_end])
            if actual != crc:
                raise OggError(
                    f"Ogg page {self.pages} (byte {self._at(offset)}) is corrupt:"
                    f" CRC {actual:08x}, expected {crc:08x}"
                )
            self._check_order(flags, serial, sequence)
            if granule != -1:
                self.granule = granule
            self.ended = bool(flags & _ENDS)
            self.pages += 1
            offset = page_end
        if end - offset >= 4 and not buffer.startswith(CAPTURE_PATTERN, offset):
            raise OggError(f"not an Ogg page at byte {self._at(offset)}")
        whole = bytes(buffer[:offset])
        del buffer[:offset]
        self._consumed += offset
        return whole

    def finish(self) -> None:
        """Say the bytes ended; raises OggError if the stream was cut short."""
        if self._buffer:
            raise OggError(
                f"truncated: the file ends inside a page ({len(self._buffer)} bytes left over)"
            )
        if not self.ended:
            raise OggError(f"truncated: no end-of-stream page after {self.pages} pages")

    def _check_order(self, flags: int, serial: int, sequence: int) -> None:
        if self.serial is None:
            if not flags & _BEGINS:
                raise OggError("the first page is not flagged beginning-of-stream")
            self.serial = serial
        elif serial != self.serial:
            raise OggError(f"a second logical stream ({serial:08x}) in a stored file")
        elif flags & _BEGINS:
            raise OggError(f"page {self.pages} is flagged beginning-of-stream")
        if sequence != self.pages:
            raise OggError(f"page {self.pages} carries sequence number {sequence}: pages missing")

    def _at(self, offset: int) -> int:
        return self._consumed + offset


class VerifyingDemuxer:
    """Opus packets out of checked pages; `finish()` also checks the final granule position."""

    def __init__(self) -> None:
        self.checker = PageChecker()
        self.demuxer = OggOpusDemuxer()
        self.samples = 0
        """Samples (48 kHz) of the packets returned so far."""

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        packets = self.demuxer.feed(self.checker.feed(data))
        self.samples += sum(map(packet_samples, packets))
        return packets

    def finish(self) -> None:
        self.checker.finish()
        if self.demuxer.incomplete:
            raise OggError("truncated: the last packet is incomplete")
        if self.checker.granule != self.samples:
            raise OggError(
                f"the last granule position is {self.checker.granule},"
                f" but the packets hold {self.samples} samples"
            )


@attrs.frozen
class FileCheck:
    """What reading a whole stored file found."""

    size: int
    packets: int
    samples: int
    pre_skip: int
    sha256: str

    def song(self, key: str, path: Path, *, title: str, at: float) -> StoredSong:
        """The index row of a file this check found whole, committed (and last played) `at`."""
        return StoredSong(
            key=key,
            path=path,
            title=title,
            duration=self.samples / OPUS_SAMPLE_RATE,
            size=self.size,
            packets=self.packets,
            created=at,
            last_played=at,
            play_count=1,
            checksum=self.sha256,
        )


def check_file(path: Path, *, chunk_size: int = CHUNK_SIZE) -> FileCheck:
    """Read all of `path`: OggError if it is not a whole, well-formed Ogg Opus stream of ours,
    OSError if it cannot be read. Blocking: run it in a worker thread."""
    digest = hashlib.sha256()
    demuxer = VerifyingDemuxer()
    size = packets = 0
    with path.open("rb", buffering=0) as file:
        while chunk := file.read(chunk_size):
            size += len(chunk)
            digest.update(chunk)
            packets += len(demuxer.feed(chunk))
    demuxer.finish()
    head = demuxer.demuxer.head
    if head is None:
        raise OggError("no OpusHead: not an Ogg Opus stream")
    return FileCheck(size, packets, demuxer.samples, head.pre_skip, digest.hexdigest())


_LENGTH = struct.Struct("<I")
MAX_HEADER_BYTES = 1 << 20
"""How far into a file its OpusHead and OpusTags may reach (ours take a page or two)."""


def read_comments(path: Path) -> dict[str, str]:
    """The comments of a stored file's OpusTags packet, by upper-cased name (`TITLE`,
    `MUSICBOT_KEY`). OggError if the file does not start with checked OpusHead and OpusTags
    pages, OSError if it cannot be read. Blocking: run it in a worker thread."""
    checker = PageChecker()
    headers: list[bytes] = []
    partial = bytearray()
    read = 0
    with path.open("rb", buffering=0) as file:
        while len(headers) < 2:
            chunk = file.read(CHUNK_SIZE)
            read += len(chunk)
            if not chunk or read > MAX_HEADER_BYTES:
                raise OggError("no OpusTags packet at the start of the file")
            _collect_packets(checker.feed(chunk), headers, partial)
    if not headers[0].startswith(b"OpusHead") or not headers[1].startswith(b"OpusTags"):
        raise OggError("the file does not start with OpusHead and OpusTags")
    return _comments(headers[1])


def _collect_packets(pages: bytes, packets: list[bytes], partial: bytearray) -> None:
    """Append the packets that `pages` (whole, checked pages) complete."""
    offset = 0
    while offset < len(pages):
        segments = pages[offset + HEADER_SIZE - 1]
        body = offset + HEADER_SIZE + segments
        for size in pages[offset + HEADER_SIZE : body]:
            partial += pages[body : body + size]
            body += size
            if size < 255:
                packets.append(bytes(partial))
                partial.clear()
        offset = body


def _comments(packet: bytes) -> dict[str, str]:
    """RFC 7845's comment header: a vendor string, then `NAME=value` strings."""
    try:
        (vendor,) = _LENGTH.unpack_from(packet, 8)
        position = 12 + vendor
        (count,) = _LENGTH.unpack_from(packet, position)
        position += 4
        comments: dict[str, str] = {}
        for _ in range(count):
            (size,) = _LENGTH.unpack_from(packet, position)
            text = packet[position + 4 : position + 4 + size].decode("utf-8")
            position += 4 + size
            name, _, value = text.partition("=")
            comments[name.upper()] = value
    except (struct.error, UnicodeDecodeError) as exc:
        raise OggError(f"a malformed OpusTags packet: {exc}") from None
    return comments
