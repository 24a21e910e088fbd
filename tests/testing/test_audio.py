"""The fake's audio analysis, on packets made here (no network)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from musicbot.testing.loopback import RtpPacket
from musicbot.testing.loopback.audio import analyse


def packets(
    payloads: list[bytes], *, start_seq: int = 0, arrivals: list[float] | None = None
) -> list[RtpPacket]:
    times = arrivals if arrivals is not None else [i * 0.020 for i in range(len(payloads))]
    return [
        RtpPacket(at, 1, 7, (start_seq + i) % 65536, i * 960, payload)
        for i, (at, payload) in enumerate(zip(times, payloads, strict=True))
    ]


def test_tone_frequency_level_and_length(opus_tone: Callable[..., list[bytes]]) -> None:
    report = analyse(packets(opus_tone(440, 50, amplitude=0.5)))
    assert report.packets == 50 and report.seconds == 1.0
    assert report.dominant_hz == pytest.approx(440, abs=2)
    assert report.rms_dbfs == pytest.approx(-9.0, abs=1.5)
    assert report.decode_failures == 0 and report.silence_frames == 0
    assert report.lateness_max_ms == pytest.approx(0, abs=1e-6)
    assert report.spacing_p50_ms == pytest.approx(20)


def test_ogg_headers_count_as_decode_failures(opus_tone: Callable[..., list[bytes]]) -> None:
    head = b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00"
    tags = b"OpusTags\x08\x00\x00\x00discord\x00\x00\x00\x00"
    report = analyse(packets([head, tags, *opus_tone(880, 25), b"\xf8\xff\xfe"]))
    assert report.decode_failures == 2
    assert report.silence_frames == 1
    assert report.dominant_hz == pytest.approx(880, abs=3)


def test_garbage_fails_to_decode() -> None:
    report = analyse(packets([b"\xff" * 40]))
    assert report.decode_failures == 1 and report.dominant_hz is None and report.rms == 0


def test_gaps_and_lateness_follow_sequence_numbers(opus_tone: Callable[..., list[bytes]]) -> None:
    frames = opus_tone(440, 6)
    arrivals = [0.000, 0.020, 0.045, 0.060, 0.080, 0.100]  # #2 is 5 ms late
    heard = packets(frames, start_seq=65533, arrivals=arrivals)
    del heard[4]  # sequence 65533+4 never arrived
    report = analyse(heard)
    assert report.sequence_gaps == 1  # across the 65535 -> 0 wrap
    assert report.lateness_max_ms == pytest.approx(5)
    assert report.lateness_p50_ms == pytest.approx(0)
    assert report.spacing_max_ms == pytest.approx(40)  # the gap where the packet was lost


def test_empty() -> None:
    report = analyse([])
    assert (report.packets, report.seconds, report.dominant_hz, report.first_at) == (
        0,
        0.0,
        None,
        None,
    )
