"""OggOpusWriter: Opus packets in, the bytes of an Ogg Opus stream (RFC 7845) out.

Pure, synchronous and incremental:

    writer = OggOpusWriter(serial=7, tags=[("TITLE", "A song")])
    out.write(writer.add(packet))  # for each packet: b"" or the pages it completed
    out.write(writer.finish())      # the last page, flagged end-of-stream

The first bytes returned (by `add` or `finish`) begin with the two header pages: OpusHead
(alone on the first page, flagged beginning-of-stream) and OpusTags (vendor "musicbot").
Audio pages hold several packets each, up to `max_page_packets` or `max_page_bytes` (a
packet longer than a page can carry continues on the next pages), with the granule position
of the last packet completed on the page (-1 when none is) counted from each packet's TOC byte.
A finished page is returned as soon as the next packet does not fit, except the last, which is
held back so `finish()` can flag it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from musicbot.audio.store.crc import CRC_OFFSET, page_checksum
from musicbot.audio.store.toc import packet_samples

OPUS_SAMPLE_RATE = 48_000
DEFAULT_PRE_SKIP = 312
"""Samples the decoder drops from the start: libopus's look-ahead at 48 kHz (ffmpeg's value)."""
VENDOR = "musicbot"

MAX_SEGMENTS = 255
"""Lacing values a page can hold."""

_HEADER = struct.Struct("<4sBBqIIIB")
_CONTINUED = 0x01
_BEGINS = 0x02
_ENDS = 0x04


def opus_head(*, channels: int = 2, pre_skip: int = DEFAULT_PRE_SKIP) -> bytes:
    """The identification header (RFC 7845, 5.1): version 1, channel mapping family 0."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, OPUS_SAMPLE_RATE, 0, 0)


def opus_tags(vendor: str = VENDOR, tags: Sequence[tuple[str, str]] = ()) -> bytes:
    """The comment header (RFC 7845, 5.2): a vendor string and `KEY=value` comments."""
    parts = [b"OpusTags", _string(vendor.encode()), struct.pack("<I", len(tags))]
    for key, value in tags:
        if not key or "=" in key or not all(0x20 <= ord(char) <= 0x7D for char in key):
            raise ValueError(f"not a valid comment field name: {key!r}")
        parts.append(_string(f"{key}={value}".encode()))
    return b"".join(parts)


def _string(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def lacing_values(size: int) -> bytes:
    """The lacing values of a packet of `size` bytes: 255 for each full segment, then the rest
    (0 when `size` is a multiple of 255)."""
    return b"\xff" * (size // 255) + bytes((size % 255,))


def build_page(
    *, flags: int, granule: int, serial: int, sequence: int, lacing: bytes, body: bytes
) -> bytes:
    """One Ogg page, checksum included."""
    page = bytearray(_HEADER.pack(b"OggS", 0, flags, granule, serial, sequence, 0, len(lacing)))
    page += lacing
    page += body
    struct.pack_into("<I", page, CRC_OFFSET, page_checksum(page))
    return bytes(page)


class OggOpusWriter:
    """Writes one logical Ogg Opus stream; see the module docstring."""

    def __init__(
        self,
        *,
        serial: int = 0,
        pre_skip: int = DEFAULT_PRE_SKIP,
        channels: int = 2,
        vendor: str = VENDOR,
        tags: Sequence[tuple[str, str]] = (),
        max_page_packets: int = 50,
        max_page_bytes: int = 4096,
    ) -> None:
        if not 0 <= serial < 2**32:
            raise ValueError(f"an Ogg serial number is 32 bits, got {serial}")
        if not 0 <= pre_skip < 2**16:
            raise ValueError(f"pre-skip is 16 bits, got {pre_skip}")
        if channels not in (1, 2):
            raise ValueError(f"channel mapping family 0 has 1 or 2 channels, not {channels}")
        if max_page_packets < 1 or max_page_bytes < 1:
            raise ValueError("a page must be allowed at least one packet and one byte")
        self.serial = serial
        self.pre_skip = pre_skip
        self.max_page_packets = max_page_packets
        self.max_page_bytes = max_page_bytes
        self._sequence = 0
        self._headers: bytes | None = self._packet_pages(
            opus_head(channels=channels, pre_skip=pre_skip), _BEGINS
        ) + self._packet_pages(opus_tags(vendor, tags), 0)
        # The page being filled: its lacing values, its bytes, and for each packet completed on
        # it, (the index just past its last lacing value, the granule position after it).
        self._lacing = bytearray()
        self._body = bytearray()
        self._ends: list[tuple[int, int]] = []
        self._continued = False
        """The page being filled starts with the rest of a packet begun on an earlier page."""
        self._finished = False
        self.granule = 0
        """Samples (48 kHz) of all packets added so far."""
        self.packets = 0
        self.pages = self._sequence

    def add(self, packet: bytes | bytearray | memoryview) -> bytes:
        """Add one Opus packet; return the bytes of the pages this completed (often b"")."""
        if self._finished:
            raise ValueError("the stream is finished")
        size = len(packet)
        if size == 0:
            raise ValueError("an Opus packet has at least one byte")
        out = self._take_headers()
        lacing = lacing_values(size)
        if self._ends and (
            len(self._ends) >= self.max_page_packets
            or len(self._body) + size > self.max_page_bytes
            or len(self._lacing) + len(lacing) > MAX_SEGMENTS
        ):
            out += self._flush(len(self._lacing), ends=False)
        self._lacing += lacing
        self._body += packet
        self.granule += packet_samples(packet)
        self.packets += 1
        self._ends.append((len(self._lacing), self.granule))
        while len(self._lacing) > MAX_SEGMENTS:  # a packet longer than one page can hold
            out += self._flush(MAX_SEGMENTS, ends=False)
        return out

    def finish(self) -> bytes:
        """The last page, flagged end-of-stream (with the headers, if nothing came out yet)."""
        if self._finished:
            raise ValueError("the stream is finished")
        out = self._take_headers()
        out += self._flush(len(self._lacing), ends=True)
        self._finished = True
        return out

    def _take_headers(self) -> bytes:
        headers, self._headers = self._headers, None
        return headers or b""

    def _flush(self, segments: int, *, ends: bool) -> bytes:
        lacing = bytes(self._lacing[:segments])
        size = sum(lacing)
        completed = [granule for end, granule in self._ends if end <= segments]
        if completed:
            granule = completed[-1]
        elif ends and not self.packets:
            granule = 0  # an empty stream: its end is at sample 0
        else:
            granule = -1  # no packet ends on this page
        page = build_page(
            flags=(_CONTINUED if self._continued else 0) | (_ENDS if ends else 0),
            granule=granule,
            serial=self.serial,
            sequence=self._sequence,
            lacing=lacing,
            body=bytes(self._body[:size]),
        )
        self._sequence += 1
        self.pages = self._sequence
        self._continued = bool(lacing) and lacing[-1] == 255
        del self._lacing[:segments]
        del self._body[:size]
        self._ends = [(end - segments, granule) for end, granule in self._ends if end > segments]
        return page

    def _packet_pages(self, packet: bytes, first_flags: int) -> bytes:
        """A header packet on pages of its own, granule position 0."""
        lacing = lacing_values(len(packet))
        pages = []
        offset = 0
        for first in range(0, len(lacing), MAX_SEGMENTS):
            chunk = lacing[first : first + MAX_SEGMENTS]
            size = sum(chunk)
            pages.append(
                build_page(
                    flags=first_flags if first == 0 else _CONTINUED,
                    granule=0,
                    serial=self.serial,
                    sequence=self._sequence,
                    lacing=chunk,
                    body=packet[offset : offset + size],
                )
            )
            self._sequence += 1
            offset += size
        return b"".join(pages)
