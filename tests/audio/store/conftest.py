from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import imageio_ffmpeg
import pytest

from musicbot.audio.command import FfmpegSettings, transcode_command
from musicbot.audio.ogg import OggOpusDemuxer
from musicbot.audio.store import ProcessedSongStore, StoredSong
from musicbot.testing.tones import Tone

TONE_HZ = 440


@pytest.fixture(scope="session")
def tone_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10 s, 440 Hz stereo tone as WAV."""
    path = tmp_path_factory.mktemp("store-tones") / "tone.wav"
    tone = Tone(TONE_HZ, 10, "wav")
    subprocess.run(tone.command(imageio_ffmpeg.get_ffmpeg_exe(), path), check=True)
    return path


@pytest.fixture(scope="session")
def tone_packets(tone_file: Path) -> list[bytes]:
    """The tone as the bot transcodes it: ffmpeg's 20 ms Opus packets (501 of them)."""
    command = transcode_command(imageio_ffmpeg.get_ffmpeg_exe(), str(tone_file), FfmpegSettings())
    done = subprocess.run(command, capture_output=True, check=True)
    demuxer = OggOpusDemuxer(check_crc=True)
    packets = demuxer.feed(done.stdout)
    assert not demuxer.incomplete and len(packets) > 400
    return packets


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


async def _store_song(
    store: ProcessedSongStore, key: str, packets: Sequence[bytes], *, title: str = "A song"
) -> StoredSong:
    async with store.writer(key, title=title) as writer:
        for packet in packets:
            writer.add(packet)
        song = await writer.commit()
    assert song is not None, writer.reason
    return song


async def _read_song(
    store: ProcessedSongStore, song: StoredSong, *, start: float = 0.0
) -> list[bytes]:
    async with store.open_stored(song, start=start) as frames:
        return [frame async for frame in frames]


StoreSong = Callable[..., Awaitable[StoredSong]]
ReadSong = Callable[..., Awaitable[list[bytes]]]


@pytest.fixture
def store_song() -> StoreSong:
    """`await store_song(store, key, packets, title=...)`: write and commit a whole song."""
    return _store_song


@pytest.fixture
def read_song() -> ReadSong:
    """`await read_song(store, song, start=0.0)`: all the packets read back."""
    return _read_song
