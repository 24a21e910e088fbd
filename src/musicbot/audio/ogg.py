"""An incremental Ogg demuxer that turns an Ogg Opus byte stream into Opus audio packets.

Pure and synchronous: feed it chunks of any size, it returns the audio packets completed so far.
The two header packets of each logical stream (OpusHead, OpusTags; RFC 7845) are checked and
dropped, so only audio comes out. Pages of other logical streams (a video or Vorbis stream in the
same file) are skipped; a chained stream (a new OpusHead after the first ended) is followed.
"""

from __future__ import annotations

import struct

import attrs

CAPTURE_PATTERN = b"OggS"
_HEADER = struct.Struct("<4sBBqIIIB")
"""capture pattern, version, flags, granule position, serial, sequence number, CRC, segments."""
HEADER_SIZE = _HEADER.size  # 27

_CONTINUED = 0x01
_BEGINS = 0x02
_CRC_OFFSET = 22


class OggError(ValueError):
    """The bytes are not a well-formed Ogg Opus stream."""


@attrs.frozen
class OpusHead:
    """The identification header of an Ogg Opus stream (RFC 7845, section 5.1)."""

    channels: int
    pre_skip: int
    """Samples at 48 kHz to drop from the start of the decoded audio."""
    input_sample_rate: int
    output_gain: int
    """Q7.8 dB gain the decoder applies; 0 for ffmpeg's output."""

    @classmethod
    def parse(cls, packet: bytes) -> OpusHead:
        if len(packet) < 19 or not packet.startswith(b"OpusHead"):
            raise OggError(f"expected an OpusHead packet, found {packet[:16]!r}")
        version, channels, pre_skip, rate, gain = struct.unpack_from("<BBHIh", packet, 8)
        if version >> 4 != 0:
            raise OggError(f"unsupported Ogg Opus major version {version >> 4}")
        if channels == 0:
            raise OggError("OpusHead says the stream has 0 channels")
        return cls(channels, pre_skip, rate, gain)


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else (crc << 1)
        table.append(crc & 0xFFFFFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def page_crc(page: bytes | bytearray | memoryview) -> int:
    """The Ogg page checksum (CRC-32, polynomial 0x04C11DB7, unreflected), CRC field as zeros."""
    crc = 0
    table = _CRC_TABLE
    for index, byte in enumerate(page):
        if _CRC_OFFSET <= index < _CRC_OFFSET + 4:
            byte = 0
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ byte]
    return crc


class OggOpusDemuxer:
    """Feed Ogg bytes in, get Opus audio packets out.

    >>> demuxer = OggOpusDemuxer()
    >>> packets = demuxer.feed(chunk)  # zero or more audio packets, in order

    `check_crc` verifies each page's checksum (pure Python: about 0.1 ms per 20 ms page; off by
    default, since a pipe from our own ffmpeg does not corrupt bytes). Raises OggError on bytes
    that are not Ogg (the capture pattern is checked on every page) or not Opus.
    """

    def __init__(self, *, check_crc: bool = False) -> None:
        self._check_crc = check_crc
        self._buffer = bytearray()
        self._consumed = 0
        """Bytes of the stream before the start of `_buffer`."""
        self._serial: int | None = None
        """The logical stream being followed; None before its first page."""
        self._headers_seen = 0
        self._partial = bytearray()
        """The start of a packet that continues on the next page."""
        self.head: OpusHead | None = None
        """The current logical stream's OpusHead, once seen."""
        self.pages = 0
        self.packets = 0
        """Audio packets returned so far."""

    @property
    def incomplete(self) -> bool:
        """Whether bytes of an unfinished page or packet are waiting: true at the end of a cut
        stream, false after a whole one."""
        return bool(self._buffer) or bool(self._partial)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Take the next bytes of the stream; return the audio packets they complete."""
        buffer = self._buffer
        buffer += data
        out: list[bytes] = []
        offset = 0
        end = len(buffer)
        while end - offset >= 4:
            if not buffer.startswith(CAPTURE_PATTERN, offset):
                raise OggError(
                    f"not an Ogg stream: expected 'OggS' at byte {self._consumed + offset},"
                    f" found {bytes(buffer[offset : offset + 4])!r}"
                )
            if end - offset < HEADER_SIZE:
                break
            _, version, flags, _granule, serial, _seq, crc, segments = _HEADER.unpack_from(
                buffer, offset
            )
            if version != 0:
                raise OggError(f"unsupported Ogg version {version}")
            body = offset + HEADER_SIZE + segments
            if end < body:
                break
            lacing = buffer[offset + HEADER_SIZE : body]
            page_end = body + sum(lacing)
            if end < page_end:
                break
            if self._check_crc:
                actual = page_crc(memoryview(buffer)[offset:page_end])
                if actual != crc:
                    raise OggError(
                        f"Ogg page {self.pages} is corrupt (CRC {actual:08x}, expected {crc:08x})"
                    )
            self.pages += 1
            self._page(buffer, flags, serial, lacing, body, out)
            offset = page_end
        del buffer[:offset]
        self._consumed += offset
        return out

    def _page(
        self,
        buffer: bytearray,
        flags: int,
        serial: int,
        lacing: bytearray,
        position: int,
        out: list[bytes],
    ) -> None:
        if serial != self._serial or flags & _BEGINS:
            if self._serial is not None and self._headers_seen < 2:
                return  # another logical stream interleaved with ours: not ours to read
            # The first stream, or a new link of a chained stream once ours was under way.
            if flags & _CONTINUED or not buffer.startswith(b"OpusHead", position):
                if self._serial is None:
                    raise OggError("not an Ogg Opus stream: the first page has no OpusHead")
                return  # a page of a non-Opus stream multiplexed with ours
            self._serial = serial
            self._headers_seen = 0
            self._partial.clear()
        elif bool(flags & _CONTINUED) != bool(self._partial):
            raise OggError("an Ogg page is missing: a packet's continuation does not match")
        partial = self._partial
        start = position
        for size in lacing:
            position += size
            if size == 255:
                continue
            if partial:
                partial += buffer[start:position]
                packet = bytes(partial)
                partial.clear()
            else:
                packet = bytes(buffer[start:position])
            start = position
            if self._headers_seen < 2:
                self._header(packet)
            elif packet:  # a zero-length packet carries no audio: nothing to send
                out.append(packet)
                self.packets += 1
        if start < position:
            partial += buffer[start:position]

    def _header(self, packet: bytes) -> None:
        if self._headers_seen == 0:
            self.head = OpusHead.parse(packet)
        elif not packet.startswith(b"OpusTags"):
            raise OggError(f"expected an OpusTags packet, found {packet[:16]!r}")
        self._headers_seen += 1
