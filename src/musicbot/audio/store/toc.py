"""How many 48 kHz samples an Opus packet holds, read from its TOC byte (RFC 6716, 3.1).

ffmpeg's packets for Discord are 20 ms, 960 samples, each; reading the TOC keeps granule
positions and durations right for any packet an encoder may send.
"""

from __future__ import annotations

FRAME_SAMPLES = 960
"""Samples in a 20 ms frame at 48 kHz: what a packet that cannot be read is counted as."""

MAX_PACKET_SAMPLES = 5760
"""120 ms: the longest an Opus packet may be."""

_SILK = (480, 960, 1920, 2880)  # 10, 20, 40, 60 ms
_HYBRID = (480, 960)  # 10, 20 ms
_CELT = (120, 240, 480, 960)  # 2.5, 5, 10, 20 ms


def frame_samples(toc: int) -> int:
    """Samples in one frame of a packet whose first byte is `toc`."""
    config = toc >> 3
    if config < 12:
        return _SILK[config % 4]
    if config < 16:
        return _HYBRID[config % 2]
    return _CELT[config % 4]


def packet_samples(packet: bytes | bytearray | memoryview) -> int:
    """Samples (48 kHz) the packet decodes to; FRAME_SAMPLES when its header is malformed."""
    if not packet:
        return FRAME_SAMPLES
    toc = packet[0]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code < 3:
        frames = 2
    elif len(packet) >= 2:
        frames = packet[1] & 0x3F
    else:
        return FRAME_SAMPLES
    samples = frames * frame_samples(toc)
    if not 0 < samples <= MAX_PACKET_SAMPLES:
        return FRAME_SAMPLES
    return samples
