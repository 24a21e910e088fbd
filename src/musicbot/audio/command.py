"""The ffmpeg command line that turns a track into Discord-ready Ogg Opus on stdout.

Which inputs are played (the rule the protocol whitelist enforces):
- `http://` and `https://` URLs, read with protocols http, https, tcp, tls and crypto only.
  That is all HTTP(S) and HLS need (crypto: AES-128 HLS segments; verified with ffmpeg 9.0.2).
  ffmpeg itself refuses anything else such a URL leads to: a redirect to `file:`, an HLS
  playlist naming local files, `concat:` and friends.
- Absolute local paths (the processed-song store), read as `file:PATH` with protocol file only,
  so a path is never taken for a protocol prefix.
- Everything else, `file:` URLs included, is refused before ffmpeg starts: a track URL comes
  from a user's query through yt-dlp and must never read this machine's files.
"""

from __future__ import annotations

from pathlib import PurePath
from urllib.parse import urlsplit

import attrs

from musicbot.core.ports import SourceError

HTTP_PROTOCOLS = "http,https,tcp,tls,crypto"
FILE_PROTOCOLS = "file"

MAX_VOLUME = 200


@attrs.frozen
class FfmpegSettings:
    """How FfmpegSource runs ffmpeg. The defaults suit a Discord voice channel."""

    executable: str | None = None
    """Path to ffmpeg; None means the static build bundled by imageio-ffmpeg."""
    bitrate_kbps: int = attrs.field(default=128)
    """Opus bitrate. Discord channels take 64-96 kbps (384 when boosted); more is wasted."""
    rw_timeout: float = attrs.field(default=10.0)
    """Seconds an HTTP connect or read may wait for data before ffmpeg gives up (or reconnects)."""
    reconnect_delay_max: int = attrs.field(default=5)
    """ffmpeg reconnects a dropped HTTP stream after 0, 1, 2, 4... seconds, up to this delay."""
    pipe_size: int = 256 * 1024
    """Bytes of encoded audio ffmpeg may run ahead of the player (about 15 s at 128 kbps): the
    cushion that hides a network stall. Linux only; elsewhere the system default (64 KiB)."""
    check_crc: bool = False
    """Verify each Ogg page's checksum (costs CPU; a pipe does not corrupt bytes)."""

    @bitrate_kbps.validator
    def _check_bitrate(self, _attribute: object, value: int) -> None:
        if not 6 <= value <= 510:
            raise ValueError(f"Opus bitrate must be 6-510 kbps, got {value}")

    @rw_timeout.validator
    def _check_rw_timeout(self, _attribute: object, value: float) -> None:
        if value <= 0:
            raise ValueError(f"rw_timeout must be positive, got {value}")

    @reconnect_delay_max.validator
    def _check_reconnect_delay(self, _attribute: object, value: int) -> None:
        if value < 0:
            raise ValueError(f"reconnect_delay_max must not be negative, got {value}")


def input_options(url: str, settings: FfmpegSettings) -> list[str]:
    """The options before and including `-i` for `url`; SourceError for inputs not played."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return [
            "-protocol_whitelist", HTTP_PROTOCOLS,
            "-rw_timeout", str(round(settings.rw_timeout * 1_000_000)),
            "-reconnect", "1",
            "-reconnect_streamed", "1",
            "-reconnect_delay_max", str(settings.reconnect_delay_max),
            "-i", url,
        ]  # fmt: skip
    if PurePath(url).is_absolute() and "://" not in url:
        return ["-protocol_whitelist", FILE_PROTOCOLS, "-i", f"file:{url}"]
    raise SourceError("I can only play http and https links")


def transcode_command(
    executable: str, url: str, settings: FfmpegSettings, *, start: float = 0.0, volume: int = 100
) -> list[str]:
    """ffmpeg arguments: read `url` from `start` seconds at `volume` percent, write Ogg Opus
    (48 kHz stereo, 20 ms frames, one frame per Ogg page) to stdout."""
    if not 0 <= volume <= MAX_VOLUME:
        raise ValueError(f"volume must be 0-{MAX_VOLUME} %, got {volume}")
    if not start >= 0:  # also refuses NaN
        raise ValueError(f"start must be a number of seconds >= 0, got {start}")
    seek = ["-ss", f"{start:.3f}"] if start > 0 else []
    gain = ["-af", f"volume={volume / 100:g}"] if volume != 100 else []
    return [
        executable,
        "-nostdin", "-hide_banner", "-nostats",
        "-loglevel", "level+warning",
        *seek,
        *input_options(url, settings),
        "-map", "0:a:0", "-vn",
        *gain,
        "-ac", "2", "-ar", "48000",
        "-c:a", "libopus",
        "-b:a", f"{settings.bitrate_kbps}k",
        "-vbr", "on",
        "-application", "audio",
        "-frame_duration", "20",
        "-f", "opus",
        "-page_duration", "20000",
        "pipe:1",
    ]  # fmt: skip
