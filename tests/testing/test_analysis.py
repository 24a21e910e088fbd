from __future__ import annotations

import math

import av
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musicbot.testing.analysis import (
    SAMPLE_RATE,
    InvalidOpus,
    decode_opus,
    dominant_frequency,
    rms_dbfs,
)


def sine(freq: float, seconds: float = 1.0, amplitude: float = 0.5) -> npt.NDArray[np.float32]:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    mono = amplitude * np.sin(2 * np.pi * freq * t)
    return np.stack([mono, mono], axis=1).astype(np.float32)


def encode_opus(pcm: npt.NDArray[np.float32]) -> list[bytes]:
    """20 ms Opus packets of stereo float PCM, by PyAV's libopus: an encoder that is not ours."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = SAMPLE_RATE
    encoder.layout = "stereo"
    encoder.format = "flt"
    encoder.bit_rate = 128_000
    packets = []
    for start in range(0, len(pcm), 960):
        block = np.ascontiguousarray(pcm[start : start + 960]).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(block, format="flt", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start
        packets += [bytes(p) for p in encoder.encode(frame)]
    packets += [bytes(p) for p in encoder.encode(None)]
    return packets


def test_decode_gives_48khz_stereo_float() -> None:
    packets = encode_opus(sine(1000, 1.0))
    assert len(packets) == 51  # 50 frames, and one for the encoder's look-ahead
    pcm = decode_opus(packets)
    assert pcm.dtype == np.float32
    assert pcm.shape == (51 * 960, 2)
    assert np.abs(pcm).max() <= 1.0
    assert dominant_frequency(pcm) == pytest.approx(1000, abs=1)
    assert rms_dbfs(pcm) == pytest.approx(rms_dbfs(sine(1000, 1.0)), abs=0.5)


def test_decode_can_mix_down_to_mono() -> None:
    pcm = decode_opus(encode_opus(sine(440, 0.2)), mono=True)
    assert pcm.ndim == 1 and pcm.shape[0] == 11 * 960


def test_no_packets_is_no_sound() -> None:
    assert decode_opus([]).shape == (0, 2)


@pytest.mark.parametrize(
    ("packet", "why"),
    [(b"OpusHead\x01\x02", "header"), (b"OpusTags....", "header"), (b"", "empty"),
     (b"\xff" * 3, "not Opus")],
)  # fmt: skip
def test_what_is_not_an_opus_packet_is_refused(packet: bytes, why: str) -> None:
    good = encode_opus(sine(440, 0.1))
    with pytest.raises(InvalidOpus, match=f"packet 2 .*{why}"):
        decode_opus([*good[:2], packet, *good[2:]])


@settings(max_examples=40, deadline=None)
@given(freq=st.floats(50, 15_000), seconds=st.sampled_from([0.1, 0.5, 1.0]))
def test_dominant_frequency_of_a_pure_sine(freq: float, seconds: float) -> None:
    # A fraction of one FFT bin (1 / seconds Hz) is the promise.
    assert dominant_frequency(sine(freq, seconds)) == pytest.approx(freq, abs=0.2 / seconds)


def test_dominant_frequency_picks_the_louder_tone() -> None:
    mixed = sine(440, amplitude=0.1) + sine(1500, amplitude=0.3)
    assert dominant_frequency(mixed) == pytest.approx(1500, abs=1)
    assert dominant_frequency(mixed[:, 0], rate=SAMPLE_RATE) == pytest.approx(1500, abs=1)


def test_dominant_frequency_needs_samples() -> None:
    with pytest.raises(ValueError, match="too few"):
        dominant_frequency(np.zeros(2))


@pytest.mark.parametrize(
    ("amplitude", "level"),
    [(1.0, -3.01), (0.5, -9.03), (1 / 8, -21.07)],
)
def test_rms_dbfs_of_sines(amplitude: float, level: float) -> None:
    assert rms_dbfs(sine(1000, amplitude=amplitude)) == pytest.approx(level, abs=0.01)


def test_rms_dbfs_of_silence_and_of_nothing() -> None:
    assert rms_dbfs(np.zeros((100, 2))) == -math.inf
    with pytest.raises(ValueError, match="no samples"):
        rms_dbfs(np.zeros((0, 2)))
