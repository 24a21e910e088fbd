from __future__ import annotations

import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import av
import imageio_ffmpeg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musicbot.audio.ogg import OggError, OggOpusDemuxer, OpusHead, page_crc

OPUS_HEAD = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, 312, 48000, 0, 0)
OPUS_TAGS = b"OpusTags" + struct.pack("<I", 4) + b"test" + struct.pack("<I", 0)


# --- a tiny Ogg writer, to make streams PyAV's files do not contain ----------------------------


def ogg_stream(
    packets: Sequence[bytes], *, serial: int = 7, max_segments: int = 255, first_flags: int = 0x02
) -> list[bytes]:
    """The pages (each a bytes) of one logical stream holding `packets`, at most `max_segments`
    lacing values per page, so long packets span pages."""
    segments: list[tuple[int, bytes]] = []
    for packet in packets:
        whole, rest = divmod(len(packet), 255)
        for k in range(whole):
            segments.append((255, packet[k * 255 : (k + 1) * 255]))
        segments.append((rest, packet[whole * 255 :]))
    pages = []
    continued = False
    for number, first in enumerate(range(0, len(segments), max_segments)):
        chunk = segments[first : first + max_segments]
        flags = (0x01 if continued else 0) | (first_flags if number == 0 else 0)
        if first + max_segments >= len(segments):
            flags |= 0x04
        lacing = bytes(size for size, _ in chunk)
        header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, 0, serial, number, 0, len(chunk))
        page = bytearray(header + lacing + b"".join(data for _, data in chunk))
        struct.pack_into("<I", page, 22, page_crc(page))
        pages.append(bytes(page))
        continued = chunk[-1][0] == 255
    return pages


def demux_in_chunks(data: bytes, cuts: Sequence[int], **options: bool) -> list[bytes]:
    demuxer = OggOpusDemuxer(**options)
    packets: list[bytes] = []
    previous = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        packets += demuxer.feed(data[previous:cut])
        previous = cut
    assert not demuxer.incomplete
    return packets


def flags_of_pages(data: bytes) -> list[int]:
    flags, offset = [], 0
    while offset < len(data):
        segments = data[offset + 26]
        lacing = data[offset + 27 : offset + 27 + segments]
        flags.append(data[offset + 5])
        offset += 27 + segments + sum(lacing)
    return flags


# --- real files, demuxed by PyAV for reference -------------------------------------------------


def make_ogg_opus(path: Path, *options: str, seconds: float = 1.0) -> Path:
    """An Ogg Opus file of a 440 Hz tone made by ffmpeg, with extra output options."""
    source = f"sine=frequency=440:duration={seconds}:sample_rate=48000"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi",
         "-i", source, "-c:a", "libopus", *options, "-f", "opus", "-y", str(path)],
        check=True,
    )  # fmt: skip
    return path


SPANNING_OPTIONS = ("-ac", "2", "-b:a", "510k", "-page_duration", "1000000")


@pytest.fixture(scope="session")
def real_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("ogg")
    files = {
        # What FfmpegSource asks ffmpeg for: one 20 ms packet per page.
        "player": make_ogg_opus(
            folder / "player.opus", "-ac", "2", "-b:a", "128k", "-page_duration", "20000"
        ),
        # Big packets (several lacing values each) in one-second pages, after an OpusTags of
        # 80 kB (think cover art) that spans two pages: a page holds at most 255 x 255 bytes.
        "spanning": make_ogg_opus(
            folder / "spanning.opus", *SPANNING_OPTIONS, "-metadata", "comment=" + "x" * 80_000
        ),
    }
    return {name: path.read_bytes() for name, path in files.items()}


def pyav_packets(data: bytes, tmp_path: Path) -> list[bytes]:
    path = tmp_path / "reference.opus"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        return [bytes(packet) for packet in container.demux(audio) if packet.size]


@pytest.fixture(scope="session")
def reference(
    real_files: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[bytes]]:
    folder = tmp_path_factory.mktemp("reference")
    return {name: pyav_packets(data, folder) for name, data in real_files.items()}


def test_the_spanning_file_really_has_packets_across_pages(real_files: dict[str, bytes]) -> None:
    assert any(flags & 0x01 for flags in flags_of_pages(real_files["spanning"]))
    assert not any(flags & 0x01 for flags in flags_of_pages(real_files["player"]))


@pytest.mark.parametrize("name", ["player", "spanning"])
def test_whole_file_matches_pyav(
    name: str, real_files: dict[str, bytes], reference: dict[str, list[bytes]]
) -> None:
    demuxer = OggOpusDemuxer(check_crc=True)
    packets = demuxer.feed(real_files[name])
    assert packets == reference[name]
    assert len(packets) == 51  # one second of 20 ms frames, plus the encoder's 6.5 ms delay
    assert demuxer.head == OpusHead(
        channels=2, pre_skip=312, input_sample_rate=48000, output_gain=0
    )
    assert not any(p.startswith((b"OpusHead", b"OpusTags")) for p in packets)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["player", "spanning"]), data=st.data())
def test_any_chunking_of_a_real_file_yields_pyavs_packets(
    name: str, data: st.DataObject, real_files: dict[str, bytes], reference: dict[str, list[bytes]]
) -> None:
    stream = real_files[name]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40), label="cuts")
    assert demux_in_chunks(stream, cuts) == reference[name]


def test_one_byte_at_a_time(
    real_files: dict[str, bytes], reference: dict[str, list[bytes]]
) -> None:
    stream = real_files["spanning"]
    assert demux_in_chunks(stream, range(len(stream)), check_crc=True) == reference["spanning"]


# --- synthetic streams: lacing edge cases -------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    audio=st.lists(
        st.one_of(
            st.binary(max_size=1100),
            st.sampled_from([255, 510, 765]).map(lambda n: bytes([n % 251]) * n),
        ),
        max_size=25,
    ),
    max_segments=st.integers(1, 255),
    data=st.data(),
)
def test_packets_survive_any_paging_and_chunking(
    audio: list[bytes], max_segments: int, data: st.DataObject
) -> None:
    stream = b"".join(ogg_stream([OPUS_HEAD, OPUS_TAGS, *audio], max_segments=max_segments))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30), label="cuts")
    # Zero-length packets carry no audio and are dropped.
    assert demux_in_chunks(stream, cuts, check_crc=True) == [p for p in audio if p]


def test_a_chained_stream_is_followed_and_its_headers_dropped() -> None:
    first = ogg_stream([OPUS_HEAD, OPUS_TAGS, b"a1", b"a2"], serial=1)
    second = ogg_stream([OPUS_HEAD, OPUS_TAGS, b"b1"], serial=2)
    same_serial = ogg_stream([OPUS_HEAD, OPUS_TAGS, b"c1"], serial=2)
    demuxer = OggOpusDemuxer(check_crc=True)
    assert demuxer.feed(b"".join(first + second + same_serial)) == [b"a1", b"a2", b"b1", b"c1"]


def test_pages_of_another_logical_stream_are_skipped() -> None:
    ours = ogg_stream([OPUS_HEAD, OPUS_TAGS, b"x" * 300, b"y"], serial=1, max_segments=1)
    theirs = ogg_stream([b"\x01vorbis" + b"\0" * 23, b"v" * 40, b"w"], serial=9, max_segments=1)
    # Ogg puts every stream's first page up front, then interleaves.
    interleaved = [ours[0], theirs[0], ours[1], theirs[1], ours[2], theirs[2], *ours[3:]]
    assert OggOpusDemuxer().feed(b"".join(interleaved)) == [b"x" * 300, b"y"]


# --- refusals -----------------------------------------------------------------------------------


def test_garbage_is_refused_as_soon_as_four_bytes_show_it() -> None:
    with pytest.raises(OggError, match="expected 'OggS' at byte 0, found b'<htm'"):
        OggOpusDemuxer().feed(b"<html>")


def test_garbage_after_good_pages_names_its_offset(real_files: dict[str, bytes]) -> None:
    stream = real_files["player"]
    demuxer = OggOpusDemuxer()
    demuxer.feed(stream)
    with pytest.raises(OggError, match=f"at byte {len(stream)}, found b'ID3"):
        demuxer.feed(b"ID3\x04 and then an mp3")


def test_ogg_that_is_not_opus_is_refused() -> None:
    vorbis = ogg_stream([b"\x01vorbis" + b"\0" * 23, b"\x03vorbis"])
    with pytest.raises(OggError, match="not an Ogg Opus stream"):
        OggOpusDemuxer().feed(b"".join(vorbis))


def test_a_bad_second_header_is_refused() -> None:
    with pytest.raises(OggError, match="expected an OpusTags packet"):
        OggOpusDemuxer().feed(b"".join(ogg_stream([OPUS_HEAD, b"audio, too early"])))


def test_a_corrupt_page_fails_its_crc_only_when_checked(real_files: dict[str, bytes]) -> None:
    corrupt = bytearray(real_files["player"])
    corrupt[-5] ^= 0xFF  # inside the last page's audio
    with pytest.raises(OggError, match="corrupt"):
        OggOpusDemuxer(check_crc=True).feed(corrupt)
    assert len(OggOpusDemuxer().feed(corrupt)) == 51


def test_a_missing_continuation_page_is_noticed() -> None:
    audio = [b"z" * 600, b"after", b"x" * 300, b"tail"]
    pages = ogg_stream([OPUS_HEAD, OPUS_TAGS, *audio], max_segments=2)
    continuation = next(i for i, page in enumerate(pages) if page[5] & 0x01 and i > 1)
    with pytest.raises(OggError, match="page is missing"):
        OggOpusDemuxer().feed(b"".join(pages[:continuation] + pages[continuation + 1 :]))


def test_a_cut_stream_is_incomplete(real_files: dict[str, bytes]) -> None:
    stream = real_files["spanning"]
    demuxer = OggOpusDemuxer()
    packets = demuxer.feed(stream[:-10])
    assert demuxer.incomplete
    packets += demuxer.feed(stream[-10:])
    assert not demuxer.incomplete
    assert len(packets) == 51 == demuxer.packets


def test_opus_head_refuses_nonsense() -> None:
    with pytest.raises(OggError, match="expected an OpusHead"):
        OpusHead.parse(b"OpusHea")
    with pytest.raises(OggError, match="0 channels"):
        OpusHead.parse(OPUS_HEAD[:9] + b"\0" + OPUS_HEAD[10:])
