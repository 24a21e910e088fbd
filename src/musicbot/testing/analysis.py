"""What was heard: decode Opus packets and measure the sound (needs the `loopback` extra).

    pcm = decode_opus(packets)              # float32, shape (samples, 2), 48 kHz, in [-1, 1]
    dominant_frequency(pcm)                 # Hz, e.g. 440.0
    rms_dbfs(pcm)                           # dB relative to full scale, e.g. -21.1

Each packet is decoded on its own, so a packet that is not Opus (an Ogg header, garbage) raises
InvalidOpus naming its index, instead of being skipped silently.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import av
import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 48_000

Pcm = npt.NDArray[np.float32]


class InvalidOpus(ValueError):
    """A packet could not be decoded as Opus."""


def decode_opus(packets: Iterable[bytes], *, channels: int = 2, mono: bool = False) -> Pcm:
    """Decode 48 kHz Opus packets to float PCM: shape (samples, channels), or (samples,) mixed
    down when `mono`. An empty input gives an empty array."""
    decoder = av.CodecContext.create("opus", "r")
    decoder.sample_rate = SAMPLE_RATE
    decoder.layout = "stereo" if channels == 2 else "mono"
    blocks: list[Pcm] = []
    for index, packet in enumerate(packets):
        if not packet:
            raise InvalidOpus(f"packet {index} is empty")  # to the decoder, b"" means 'flush'
        if packet.startswith((b"OpusHead", b"OpusTags")):
            raise InvalidOpus(f"packet {index} is an Ogg Opus header, not audio")
        try:
            frames = decoder.decode(av.Packet(packet))
        except av.error.FFmpegError as exc:
            raise InvalidOpus(f"packet {index} ({len(packet)} bytes) is not Opus: {exc}") from exc
        for frame in frames:
            # Opus decodes to planar float: (channels, samples).
            blocks.append(np.asarray(frame.to_ndarray(), dtype=np.float32).T)
    pcm = np.concatenate(blocks) if blocks else np.zeros((0, channels), dtype=np.float32)
    if mono:
        return np.asarray(pcm.mean(axis=1), dtype=np.float32)
    return pcm


def _mono(pcm: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    samples = np.asarray(pcm, dtype=np.float64)
    return samples.mean(axis=1) if samples.ndim == 2 else samples


def dominant_frequency(pcm: npt.NDArray[np.floating], rate: int = SAMPLE_RATE) -> float:
    """The frequency (Hz) with the most energy, to a fraction of a bin (Hann window, parabolic
    interpolation of the log magnitude). Stereo is mixed to mono first."""
    samples = _mono(pcm)
    if samples.size < 4:
        raise ValueError("too few samples to find a frequency")
    window = np.hanning(samples.size)
    spectrum = np.abs(np.fft.rfft((samples - samples.mean()) * window))
    peak = int(np.argmax(spectrum[1:])) + 1
    offset = 0.0
    if 1 <= peak < spectrum.size - 1:
        left, centre, right = np.log(spectrum[peak - 1 : peak + 2] + 1e-12)
        denominator = left - 2 * centre + right
        if denominator != 0:
            offset = 0.5 * (left - right) / denominator
    return float((peak + offset) * rate / samples.size)


def rms_dbfs(pcm: npt.NDArray[np.floating]) -> float:
    """RMS level in dB relative to a full-scale square wave (a full-scale sine is -3.0 dBFS);
    -inf for digital silence. All channels count alike."""
    samples = np.asarray(pcm, dtype=np.float64)
    if samples.size == 0:
        raise ValueError("no samples")
    rms = math.sqrt(float(np.mean(samples * samples)))
    return 20 * math.log10(rms) if rms > 0 else -math.inf
