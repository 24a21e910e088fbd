"""The Ogg Opus writer: what it writes reads back packet for packet, and players can play it."""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import av
import imageio_ffmpeg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musicbot.audio.ogg import OggOpusDemuxer, OpusHead, page_crc
from musicbot.audio.store.crc import page_checksum
from musicbot.audio.store.oggcheck import PageChecker, VerifyingDemuxer
from musicbot.audio.store.oggwrite import OggOpusWriter
from musicbot.audio.store.toc import packet_samples
from musicbot.testing.analysis import dominant_frequency

_HEADER = struct.Struct("<4sBBqIIIB")


def write(packets: Sequence[bytes], **options: object) -> bytes:
    writer = OggOpusWriter(**options)  # type: ignore[arg-type]
    return b"".join(writer.add(packet) for packet in packets) + writer.finish()


def pages(data: bytes) -> list[tuple[int, int, int, int, bytes, bytes]]:
    """(flags, granule, serial, sequence, lacing, body) of each page; asserts each page's CRC
    (with the fast checksum: the test below holds it to the reference implementation)."""
    found = []
    offset = 0
    while offset < len(data):
        magic, version, flags, granule, serial, sequence, crc, count = _HEADER.unpack_from(
            data, offset
        )
        assert (magic, version) == (b"OggS", 0)
        lacing = data[offset + 27 : offset + 27 + count]
        end = offset + 27 + count + sum(lacing)
        assert page_checksum(data[offset:end]) == crc
        found.append((flags, granule, serial, sequence, lacing, data[offset + 27 + count : end]))
        offset = end
    return found


def demux_in_chunks(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    demuxer = OggOpusDemuxer()
    packets: list[bytes] = []
    previous = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        packets += demuxer.feed(data[previous:cut])
        previous = cut
    assert not demuxer.incomplete
    return packets


short_packets = st.binary(min_size=1, max_size=700)
# Longer than one page can carry (255 lacing values of 255 bytes), so they span pages.
long_packets = st.builds(
    lambda size, byte: bytes([byte]) * size,
    st.integers(255 * 255 - 3, 255 * 255 * 2 + 3),
    st.integers(0, 255),
)


@settings(max_examples=100, deadline=None)
@given(
    packets=st.lists(st.one_of(short_packets, short_packets, long_packets), max_size=40),
    max_page_packets=st.integers(1, 60),
    max_page_bytes=st.integers(1, 9000),
    title=st.text(max_size=30),
    cuts=st.lists(st.integers(0, 300_000), max_size=6),
)
def test_any_packets_read_back_the_same(
    packets: list[bytes], max_page_packets: int, max_page_bytes: int, title: str, cuts: list[int]
) -> None:
    data = write(
        packets,
        serial=0xDEADBEEF,
        tags=[("TITLE", title)],
        max_page_packets=max_page_packets,
        max_page_bytes=max_page_bytes,
    )
    assert demux_in_chunks(data, cuts) == packets

    found = pages(data)
    assert [sequence for _, _, _, sequence, _, _ in found] == list(range(len(found)))
    assert {serial for _, _, serial, _, _, _ in found} == {0xDEADBEEF}
    assert [flags & 0x02 for flags, *_ in found] == [0x02] + [0] * (len(found) - 1)  # BOS
    assert [flags & 0x04 for flags, *_ in found] == [0] * (len(found) - 1) + [0x04]  # EOS
    assert found[0][5].startswith(b"OpusHead") and len(found[0][4]) == 1  # alone on page 0
    # Granule positions: samples of the packets completed so far; -1 where none completes.
    audio_pages = found[2:]
    completed = 0
    samples = 0
    continued = False
    for flags, granule, _, _, lacing, body in audio_pages:
        assert bool(flags & 0x01) == continued
        assert len(lacing) <= 255
        ends = sum(1 for value in lacing if value < 255)
        for packet in packets[completed : completed + ends]:
            samples += packet_samples(packet)
        completed += ends
        if ends:
            assert granule == samples
        elif packets:
            assert granule == -1
        continued = bool(lacing) and lacing[-1] == 255
        assert sum(value < 255 for value in lacing) <= max(max_page_packets, 1)
        if ends > 1:  # several packets on a page stay under the byte budget
            assert len(body) <= max_page_bytes
    assert completed == len(packets)

    checker = VerifyingDemuxer()
    assert checker.feed(data) == packets
    checker.finish()


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=27, max_size=5000))
def test_the_fast_checksum_matches_the_reference(page: bytes) -> None:
    assert page_checksum(page) == page_crc(page)


@pytest.mark.parametrize(
    ("packet", "samples"),
    [
        (bytes([0xFC, 1, 2]), 960),  # CELT fullband 20 ms, one frame: what ffmpeg sends
        (bytes([0xF0]), 480),  # CELT 10 ms
        (bytes([0x80]), 120),  # CELT 2.5 ms
        (bytes([0xFD, 0]), 1920),  # two 20 ms frames (code 1)
        (bytes([0xFE, 0]), 1920),  # two 20 ms frames of different sizes (code 2)
        (bytes([0xFF, 3]), 2880),  # code 3: three 20 ms frames
        (bytes([0x18]), 2880),  # SILK 60 ms
        (bytes([0x60]), 480),  # hybrid 10 ms
        (bytes([0xFF]), 960),  # code 3 without its frame count: unreadable, counted as 20 ms
        (bytes([0xFF, 7]), 960),  # 7 x 20 ms is over 120 ms: unreadable
        (b"", 960),
    ],
)
def test_packet_samples_read_the_toc(packet: bytes, samples: int) -> None:
    assert packet_samples(packet) == samples


def test_headers_say_what_was_asked() -> None:
    writer = OggOpusWriter(pre_skip=480, channels=1, tags=[("TITLE", "Ünïcode ☃")])
    data = writer.finish()
    demuxer = OggOpusDemuxer(check_crc=True)
    assert demuxer.feed(data) == []
    assert demuxer.head == OpusHead(
        channels=1, pre_skip=480, input_sample_rate=48000, output_gain=0
    )
    tags = pages(data)[1][5]
    vendor_size = struct.unpack_from("<I", tags, 8)[0]
    assert tags[12 : 12 + vendor_size] == b"musicbot"
    assert "TITLE=Ünïcode ☃".encode() in tags
    checker = PageChecker()
    assert checker.feed(data) == data
    checker.finish()  # an empty stream is still a whole one


def test_a_huge_title_spans_header_pages() -> None:
    title = "x" * 100_000
    data = write([b"\xfc\x01"], tags=[("TITLE", title)])
    demuxer = OggOpusDemuxer(check_crc=True)
    assert demuxer.feed(data) == [b"\xfc\x01"]
    found = pages(data)
    assert len(found) == 4  # OpusHead, OpusTags over 2 pages, then audio
    assert [flags for flags, *_ in found] == [0x02, 0x00, 0x01, 0x04]
    assert [granule for _, granule, *_ in found] == [0, 0, 0, 960]


def test_misuse_is_refused() -> None:
    writer = OggOpusWriter()
    with pytest.raises(ValueError, match="at least one byte"):
        writer.add(b"")
    writer.finish()
    with pytest.raises(ValueError, match="finished"):
        writer.add(b"\xfc")
    with pytest.raises(ValueError, match="finished"):
        writer.finish()
    with pytest.raises(ValueError, match="comment field"):
        OggOpusWriter(tags=[("A=B", "c")])
    with pytest.raises(ValueError, match="32 bits"):
        OggOpusWriter(serial=2**32)


def test_players_can_play_what_it_writes(tmp_path: Path, tone_packets: list[bytes]) -> None:
    path = tmp_path / "tone.opus"
    path.write_bytes(write(tone_packets, serial=1, tags=[("TITLE", "Four forty")]))

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.rate, stream.channels) == ("opus", 48000, 2)
        title = {**container.metadata, **stream.metadata}
        assert "Four forty" in {value for key, value in title.items() if key.lower() == "title"}
        import numpy as np

        pcm = np.concatenate([frame.to_ndarray().T for frame in container.decode(stream)])
    # 501 packets of 960 samples, less the 312 samples of pre-skip.
    assert pcm.shape[0] == len(tone_packets) * 960 - 312
    assert dominant_frequency(pcm) == pytest.approx(440, abs=1)

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    done = subprocess.run(
        [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-f", "null", os.devnull],
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stderr) == (0, "")
    probe = subprocess.run([ffmpeg, "-nostdin", "-i", str(path)], capture_output=True, text=True)
    assert "Duration: 00:00:10.0" in probe.stderr
    assert "Four forty" in probe.stderr
