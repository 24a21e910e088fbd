"""Sine-tone audio files made with the bundled ffmpeg and cached on disk by their parameters.

The tone is ffmpeg's `sine` source: a sine at 1/8 of full scale, that is a peak of -18.1 dBFS
and an RMS level of -21.1 dBFS (lossy formats land within about 0.5 dB of that), the same on
both channels of a stereo file. (Stereo, so a player's stereo output keeps that level: ffmpeg
spreads a mono source over two channels 3 dB down.)
"""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path
from typing import Literal

import attrs
import imageio_ffmpeg
import trio

ToneFormat = Literal["mp3", "opus", "ogg", "wav"]

TONE_FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    # extension: (content type, ffmpeg output options)
    "mp3": ("audio/mpeg", ("-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3")),
    "opus": ("audio/ogg", ("-c:a", "libopus", "-b:a", "96k", "-f", "opus")),
    "ogg": ("audio/ogg", ("-c:a", "libvorbis", "-q:a", "4", "-f", "ogg")),
    "wav": ("audio/wav", ("-c:a", "pcm_s16le", "-f", "wav")),
}
"""What each tone format is: mp3 (MPEG-1 layer 3), opus (Ogg Opus), ogg (Ogg Vorbis), wav."""

TONE_PEAK_DBFS = 20 * math.log10(1 / 8)
TONE_RMS_DBFS = TONE_PEAK_DBFS - 10 * math.log10(2)

_VERSION = "v3"
"""Part of every cached file's name: change it when the generation options change."""


@attrs.frozen
class Tone:
    """One tone file's parameters."""

    frequency: int = 440
    seconds: float = 3.0
    fmt: ToneFormat = "mp3"

    def __attrs_post_init__(self) -> None:
        if self.fmt not in TONE_FORMATS:
            raise ValueError(f"unknown tone format {self.fmt!r}; known: {sorted(TONE_FORMATS)}")
        if not 20 <= self.frequency <= 20_000:
            raise ValueError(f"tone frequency {self.frequency} Hz is outside 20-20000 Hz")
        if not 0 < self.seconds <= 3600:
            raise ValueError(f"tone length {self.seconds} s is outside (0, 3600]")

    @property
    def content_type(self) -> str:
        return TONE_FORMATS[self.fmt][0]

    @property
    def name(self) -> str:
        """`440/3.mp3`: the tone's path below /tone/ on the media server."""
        return f"{self.frequency}/{self.seconds:g}.{self.fmt}"

    def command(self, ffmpeg: str, output: Path) -> list[str]:
        source = f"sine=frequency={self.frequency}:duration={self.seconds:g}:sample_rate=48000"
        options = TONE_FORMATS[self.fmt][1]
        return [
            ffmpeg, "-nostdin", "-loglevel", "error",
            "-f", "lavfi", "-i", source,
            "-af", "pan=stereo|c0=c0|c1=c0", *options,
            "-y", str(output),
        ]  # fmt: skip


class ToneCache:
    """Tone files in `directory`, generated on first use, one ffmpeg run per tone ever.

    Files are written under a temporary name and renamed into place, so a directory shared by
    several processes never shows a half-written file.
    """

    def __init__(self, directory: Path, *, ffmpeg: str | None = None) -> None:
        self.directory = directory
        self.ffmpeg = ffmpeg or imageio_ffmpeg.get_ffmpeg_exe()
        self._lock = trio.Lock()
        self.generated = 0
        """How many files this cache made (the rest were found on disk)."""

    def path_of(self, tone: Tone) -> Path:
        return self.directory / f"tone-{_VERSION}-{tone.frequency}-{tone.seconds:g}.{tone.fmt}"

    async def path(self, tone: Tone) -> Path:
        """The file of `tone`, made now if it is not on disk yet."""
        path = self.path_of(tone)
        if path.exists():
            return path
        async with self._lock:
            if path.exists():  # made while we waited for the lock
                return path
            self.directory.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            try:
                done = await trio.run_process(
                    tone.command(self.ffmpeg, partial),
                    stdin=subprocess.DEVNULL,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
                if done.returncode != 0:
                    stderr = done.stderr.decode(errors="replace").strip()
                    raise RuntimeError(f"ffmpeg could not make {tone}: {stderr}")
                partial.replace(path)
            finally:
                partial.unlink(missing_ok=True)
            self.generated += 1
        return path

    async def read(self, tone: Tone) -> bytes:
        return await trio.Path(await self.path(tone)).read_bytes()
