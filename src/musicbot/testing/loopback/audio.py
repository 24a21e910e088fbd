"""What the fake heard: decode received Opus with PyAV's libopus decoder and measure it.

- `seconds` is packets x 20 ms (every Opus packet discord.py sends is one 20 ms frame).
- `dominant_hz`: the strongest frequency of the decoded PCM (mono mix, Hann window, FFT with
  parabolic peak interpolation); None when less than 20 ms decoded.
- `rms` is the root mean square of the decoded samples, full scale 1.0; `rms_dbfs` is
  20*log10(rms), so a full-scale sine reads -3.0 dBFS and silence reads -inf.
- `lateness_*_ms`: how late each packet arrived against an ideal 20 ms schedule, numbered by RTP
  sequence number and anchored so that the earliest packet is exactly on time (so lateness >= 0;
  a steady sender reads ~0, jitter and drift show up, a pause shows up as lateness of everything
  after it: analyse one track's window at a time).
- `spacing_*_ms`: plain inter-arrival gaps between consecutive packets (ideal: 20).
- `sequence_gaps`: how many sequence numbers are missing between the first and last packet.
- `decode_failures`: payloads the decoder refused. Ogg `OpusHead`/`OpusTags` header packets (which
  discord.py's FFmpegOpusAudio sends as the first two payloads) always count as failures.
- `silence_frames`: the Opus silence frame `f8 ff fe` that discord.py sends after a source ends.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import attrs
import av
import av.error
import numpy as np
import numpy.typing as npt

from musicbot.testing import analysis
from musicbot.testing.loopback.records import RtpPacket

FRAME_SECONDS = 0.020
SAMPLE_RATE = 48_000
SILENCE_FRAME = b"\xf8\xff\xfe"
OGG_HEADERS = (b"OpusHead", b"OpusTags")


@attrs.frozen
class AudioReport:
    packets: int
    seconds: float
    dominant_hz: float | None
    rms: float
    rms_dbfs: float
    lateness_p50_ms: float
    lateness_p99_ms: float
    lateness_max_ms: float
    spacing_p50_ms: float
    spacing_p99_ms: float
    spacing_max_ms: float
    sequence_gaps: int
    decode_failures: int
    silence_frames: int
    first_at: float | None
    last_at: float | None


def analyse(packets: Sequence[RtpPacket]) -> AudioReport:
    pcm, failures = decode([p.opus for p in packets])
    rms = float(np.sqrt(np.mean(pcm**2))) if pcm.size else 0.0
    lateness, spacing = _timing(packets)
    return AudioReport(
        packets=len(packets),
        seconds=round(len(packets) * FRAME_SECONDS, 6),
        dominant_hz=dominant_frequency(pcm),
        rms=rms,
        rms_dbfs=20 * math.log10(rms) if rms > 0 else -math.inf,
        lateness_p50_ms=_percentile(lateness, 50),
        lateness_p99_ms=_percentile(lateness, 99),
        lateness_max_ms=_percentile(lateness, 100),
        spacing_p50_ms=_percentile(spacing, 50),
        spacing_p99_ms=_percentile(spacing, 99),
        spacing_max_ms=_percentile(spacing, 100),
        sequence_gaps=_sequence_gaps(packets),
        decode_failures=failures,
        silence_frames=sum(1 for p in packets if p.opus == SILENCE_FRAME),
        first_at=packets[0].at if packets else None,
        last_at=packets[-1].at if packets else None,
    )


def decode(payloads: Sequence[bytes]) -> tuple[npt.NDArray[np.float64], int]:
    """Mono PCM in [-1, 1] at 48 kHz, and how many payloads failed to decode."""
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate = SAMPLE_RATE
    decoder.layout = "stereo"
    chunks: list[npt.NDArray[np.float64]] = []
    failures = 0
    for payload in payloads:
        if payload.startswith(OGG_HEADERS):
            failures += 1
            continue
        try:
            frames = decoder.decode(av.Packet(payload))
        except av.error.FFmpegError:
            failures += 1
            continue
        for frame in frames:
            chunks.append(_mono(frame.to_ndarray(), frame.format.name, len(frame.layout.channels)))
    if not chunks:
        return np.zeros(0), failures
    return np.concatenate(chunks), failures


def _mono(
    samples: npt.NDArray[np.generic], sample_format: str, channels: int
) -> npt.NDArray[np.float64]:
    values = samples.astype(np.float64)
    if sample_format.startswith("s16"):
        values /= 32768.0
    elif sample_format.startswith("s32"):
        values /= 2147483648.0
    if sample_format.endswith("p"):  # planar: one row per channel
        return np.asarray(values.mean(axis=0), dtype=np.float64)
    interleaved = values.reshape(-1, channels)  # packed: one row, channels interleaved
    return np.asarray(interleaved.mean(axis=1), dtype=np.float64)


def dominant_frequency(pcm: npt.NDArray[np.float64]) -> float | None:
    """The loudest frequency, or None with less than one frame of sound or only silence."""
    if pcm.size < SAMPLE_RATE * FRAME_SECONDS or not np.any(pcm):
        return None
    return analysis.dominant_frequency(pcm)


def _timing(packets: Sequence[RtpPacket]) -> tuple[list[float], list[float]]:
    if len(packets) < 2:
        return [], []
    arrivals = np.array([p.at for p in packets])
    slots = np.array(_unwrapped_sequences(packets), dtype=np.float64) * FRAME_SECONDS
    offsets = arrivals - slots
    lateness = (offsets - offsets.min()) * 1000.0
    spacing = np.diff(arrivals) * 1000.0
    return lateness.tolist(), spacing.tolist()


def _unwrapped_sequences(packets: Sequence[RtpPacket]) -> list[int]:
    numbers = [0]
    for before, after in itertools.pairwise(packets):
        step = (after.sequence - before.sequence) % 65536
        if step >= 32768:  # reordered or duplicated: a step back
            step -= 65536
        numbers.append(numbers[-1] + step)
    return numbers


def _sequence_gaps(packets: Sequence[RtpPacket]) -> int:
    if not packets:
        return 0
    numbers = sorted(set(_unwrapped_sequences(packets)))
    return numbers[-1] - numbers[0] + 1 - len(numbers)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0
