"""cpu: CPU seconds per stream-minute to play a song from the store (passthrough), to transcode
it with ffmpeg (what a song not yet stored costs), and the discord.py FFmpegPCMAudio way: ffmpeg
decoding to PCM, then libopus encoding in the bot's own process (here through PyAV's libopus,
the same library discord.py loads)."""

from __future__ import annotations

import resource
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import imageio_ffmpeg
import numpy as np
import trio

from musicbot.audio.ffmpeg import FfmpegSource
from musicbot.audio.store import open_store
from musicbot.core.messages import Track

FRAME = 960  # samples per 20 ms at 48 kHz


def _cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime


def _song(directory: Path, seconds: int) -> Path:
    """Pink noise under a tone: harder to encode than a bare sine, like music."""
    path = directory / f"song-{seconds}s.mp3"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi",
         "-i", f"anoisesrc=c=pink:d={seconds}:a=0.15", "-f", "lavfi",
         "-i", f"sine=frequency=440:duration={seconds}", "-filter_complex", "amix=inputs=2",
         "-ac", "2", "-ar", "48000", "-b:a", "192k", str(path)],
        check=True,
    )  # fmt: skip
    return path


async def _transcode(song: Path) -> tuple[list[bytes], float]:
    before_me, before_children = _cpu()
    packets = []
    async with FfmpegSource().open(Track("song", str(song))) as frames:
        async for packet in frames:
            packets.append(packet)
    after_me, after_children = _cpu()
    return packets, (after_me - before_me) + (after_children - before_children)


async def _from_store(directory: Path, packets: list[bytes]) -> tuple[int, float]:
    async with open_store(directory / "store") as store:
        async with store.writer("bench:song", title="song") as writer:
            for packet in packets:
                writer.add(packet)
            song = await writer.commit()
        assert song is not None
        before, _ = _cpu()
        count = 0
        async with store.open_stored(song) as stored:
            async for _packet in stored:
                count += 1
        after, _ = _cpu()
    return count, after - before


def _pcm_then_encode(song: Path) -> tuple[int, float]:
    before_me, before_children = _cpu()
    decoder = subprocess.Popen(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(song),
         "-f", "s16le", "-ac", "2", "-ar", "48000", "pipe:1"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = 48_000
    encoder.layout = "stereo"
    encoder.format = "s16"
    encoder.bit_rate = 128_000
    encoder.open()
    frames = 0
    assert decoder.stdout is not None
    while chunk := decoder.stdout.read(FRAME * 4):
        if len(chunk) < FRAME * 4:
            chunk += b"\0" * (FRAME * 4 - len(chunk))
        samples = np.frombuffer(chunk, dtype=np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        frame.sample_rate = 48_000
        frame.pts = frames * FRAME
        frame.time_base = Fraction(1, 48_000)
        frames += len(encoder.encode(frame))
    decoder.wait()
    after_me, after_children = _cpu()
    return frames, (after_me - before_me) + (after_children - before_children)


def run(quick: bool) -> dict[str, Any]:
    seconds = 60 if quick else 180
    with tempfile.TemporaryDirectory(prefix="musicbot-bench-") as scratch:
        directory = Path(scratch)
        song = _song(directory, seconds)
        packets, transcode_cpu = trio.run(_transcode, song)
        read, store_cpu = trio.run(_from_store, directory, packets)
        encoded, pcm_cpu = _pcm_then_encode(song)
    minutes = seconds / 60
    per_minute = {
        "store passthrough": store_cpu / minutes,
        "ffmpeg transcoding (Ogg Opus)": transcode_cpu / minutes,
        "FFmpegPCMAudio way (PCM + libopus in-process)": pcm_cpu / minutes,
    }
    ratio = per_minute["ffmpeg transcoding (Ogg Opus)"] / max(per_minute["store passthrough"], 1e-9)
    return {
        "song_seconds": seconds,
        "packets": {"transcoded": len(packets), "read_back": read, "encoded": encoded},
        "cpu_seconds_per_stream_minute": per_minute,
        "transcoding_over_passthrough": ratio,
        "goal": "passthrough at least 20 times cheaper than transcoding",
        "met": ratio >= 20,
    }
