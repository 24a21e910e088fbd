"""FfmpegSource against real ffmpeg and the loopback media server, on real time."""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import sys
import termios
from collections.abc import Callable
from pathlib import Path

import imageio_ffmpeg
import pytest
import trio

from musicbot.audio import FfmpegSettings, FfmpegSource, TranscodedStream, open_transcoder
from musicbot.core.messages import Track
from musicbot.core.ports import FrameSource, SourceError
from musicbot.testing.analysis import decode_opus, dominant_frequency, rms_dbfs
from musicbot.testing.media import MediaServer, unreachable_url

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

# No reconnect back-off, so a cut-short download ends at once, not after seconds of retries.
FAST = FfmpegSettings(rw_timeout=5, reconnect_delay_max=0, check_crc=True)
# A short read timeout, for the links that stall: they fail in a second, not in the default 44.
IMPATIENT = FfmpegSettings(rw_timeout=0.5, reconnect_delay_max=0, check_crc=True)
TEST_TIMEOUT = 20


async def play(
    url: str, *, start: float = 0.0, volume: int = 100, settings: FfmpegSettings = FAST
) -> list[bytes]:
    source: FrameSource = FfmpegSource(settings)
    with trio.fail_after(TEST_TIMEOUT):
        async with source.open(Track("tone", url), start=start, volume=volume) as frames:
            return [frame async for frame in frames]


def children() -> list[int]:
    """Pids of this process's children, zombies included."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # it exited while we looked
            parent = int(stat.rpartition(")")[2].split()[1])
            if parent == me:
                found.append(int(entry.name))
    return found


def exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def pipes_open(inodes: set[int]) -> set[int]:
    """Which of these pipe inodes this process still has a descriptor for."""
    held = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("pipe:["):
            held.add(int(target[6:-1]))
    return held & inodes


def pipe_inodes(stream: TranscodedStream) -> set[int]:
    pipes = (stream.process.stdout, stream.process.stderr)
    return {
        os.fstat(pipe.fileno()).st_ino for pipe in pipes if isinstance(pipe, trio.lowlevel.FdStream)
    }


# --- playing ----------------------------------------------------------------------------------


async def test_a_three_second_mp3_is_150_frames_of_440hz_opus(media: MediaServer) -> None:
    frames = await play(media.tone_url(440, 3, "mp3"))
    assert abs(len(frames) - 150) <= 3
    assert not any(f.startswith((b"OpusHead", b"OpusTags")) for f in frames)
    pcm = decode_opus(frames)  # raises on any packet that is not valid Opus
    assert pcm.shape[1] == 2
    assert dominant_frequency(pcm) == pytest.approx(440, abs=2)
    assert rms_dbfs(pcm) == pytest.approx(-21.1, abs=1.0)  # the tone's level, kept


@pytest.mark.parametrize(("fmt", "freq"), [("opus", 660), ("ogg", 330), ("wav", 1000)])
async def test_other_formats_play_too(media: MediaServer, fmt: str, freq: int) -> None:
    frames = await play(media.tone_url(freq, 1, fmt))  # type: ignore[arg-type]
    assert abs(len(frames) - 50) <= 3
    assert dominant_frequency(decode_opus(frames)) == pytest.approx(freq, abs=3)


async def test_a_local_file_plays(media: MediaServer) -> None:
    path = await media.tone_file(440, 1, "mp3")
    frames = await play(str(path))
    assert abs(len(frames) - 50) <= 3
    assert dominant_frequency(decode_opus(frames)) == pytest.approx(440, abs=2)


async def test_volume_50_is_6_db_quieter(media: MediaServer) -> None:
    url = media.tone_url(440, 2, "mp3")
    full = rms_dbfs(decode_opus(await play(url)))
    half = rms_dbfs(decode_opus(await play(url, volume=50)))
    louder = rms_dbfs(decode_opus(await play(url, volume=200)))
    assert full - half == pytest.approx(6.02, abs=1.5)
    assert louder - full == pytest.approx(6.02, abs=1.5)


async def test_start_skips_into_the_track(media: MediaServer) -> None:
    frames = await play(media.tone_url(440, 4, "mp3"), start=2.0)
    assert abs(len(frames) - 100) <= 3
    assert dominant_frequency(decode_opus(frames)) == pytest.approx(440, abs=2)


async def test_a_start_past_the_end_is_an_empty_track(media: MediaServer) -> None:
    assert await play(media.tone_url(440, 1, "mp3"), start=5.0) == []


async def test_ffmpeg_runs_ahead_only_as_far_as_the_pipe_lets_it(media: MediaServer) -> None:
    source = FfmpegSource(FAST)
    await media.tone_file(440, 120, "mp3")  # made now: it takes a while
    async with source.open(Track("tone", media.tone_url(440, 120, "mp3"))) as frames:
        assert isinstance(frames, TranscodedStream)
        assert frames.demuxer.packets >= 1  # open() returned with a frame in hand
        stdout = frames.process.stdout
        assert isinstance(stdout, trio.lowlevel.FdStream)
        capacity = fcntl.fcntl(stdout.fileno(), fcntl.F_GETPIPE_SZ)
        assert capacity == FAST.pipe_size  # about 15 s of 128 kbps Opus
        levels: list[int] = []
        for _ in range(100):
            await trio.sleep(0.1)
            levels.append(waiting_bytes(stdout))
            if len(levels) > 3 and levels[-1] == levels[-4] > capacity // 2:
                break  # steady for 0.3 s: ffmpeg writes no more
        # Two minutes of tone (2 MB) do not fit: the pipe is full (to the page) and ffmpeg waits.
        assert capacity * 0.8 < levels[-1] <= capacity
        assert frames.process.poll() is None


def waiting_bytes(pipe: trio.lowlevel.FdStream) -> int:
    return struct.unpack("i", fcntl.ioctl(pipe.fileno(), termios.FIONREAD, b"\0" * 4))[0]


# --- failing before any audio: SourceError with a sentence for the user -------------------------


@pytest.mark.parametrize(
    ("make_url", "message"),
    [
        (lambda m: m.not_found_url(), "the server answered 404 Not Found"),
        (lambda m: unreachable_url(), "could not reach the host"),
        (lambda m: m.stalled_url(440, 3, after=0), "the server stopped sending audio"),
        (lambda m: m.not_audio_url("page"), "that link is not an audio file"),
        (lambda m: m.not_audio_url("noise"), "that link is not an audio file"),
        (lambda m: m.truncated_url(440, 3, keep=0.001, declared=False), "not an audio file"),
        (lambda m: "/nonexistent/store/track.opus", "the stored audio file is missing"),
    ],
    ids=["404", "unreachable", "stalled", "html", "noise", "tiny", "missing file"],
)
async def test_unplayable_links_say_why(
    media: MediaServer, make_url: Callable[[MediaServer], str], message: str
) -> None:
    url = make_url(media)
    await media.tone_file(440, 3, "mp3")  # made now, so the server answers at once
    started = trio.current_time()
    with pytest.raises(SourceError, match=message):
        await play(url, settings=IMPATIENT)
    assert trio.current_time() - started < 5
    assert children() == []


async def test_a_redirect_to_a_local_file_is_refused(media: MediaServer) -> None:
    path = await media.tone_file(440, 1, "mp3")
    with pytest.raises(SourceError, match="not allowed to read"):
        await play(media.redirect_url(path.as_uri()))
    assert media.request_count(media.redirect_url("")) == 1  # ffmpeg did ask, and was turned back


async def test_a_local_file_cannot_lead_to_the_network(media: MediaServer, tmp_path: Path) -> None:
    playlist = tmp_path / "store.m3u8"
    segment = media.tone_url(440, 1, "mp3")
    playlist.write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{segment}\n#EXT-X-ENDLIST\n"
    )
    with pytest.raises(SourceError, match="not allowed to read"):
        await play(str(playlist))
    assert media.request_count(segment) == 0


async def test_a_file_url_is_refused_without_running_ffmpeg(
    media: MediaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError("ffmpeg was started")

    monkeypatch.setattr(trio.lowlevel, "open_process", no_process)
    path = await media.tone_file(440, 1, "mp3")
    with pytest.raises(SourceError, match="only play http and https"):
        await play(path.as_uri())


async def test_output_without_audio_is_a_source_error() -> None:
    silence = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "level+warning",
               "-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo", "-t", "0",
               "-c:a", "libopus", "-b:a", "64k", "-f", "opus", "pipe:1"]  # fmt: skip
    with pytest.raises(SourceError, match="that link has no audio in it"):
        async with open_transcoder(silence):
            pass
    assert children() == []


async def test_an_ffmpeg_that_cannot_start_is_a_source_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(SourceError, match="could not start its audio converter"):
        async with open_transcoder(["/nonexistent/ffmpeg", "-version"]):
            pass
    assert "cannot run /nonexistent/ffmpeg" in caplog.text


def test_a_configured_ffmpeg_must_exist() -> None:
    with pytest.raises(ValueError, match="ffmpeg not found"):
        FfmpegSource(FfmpegSettings(executable="/nonexistent/ffmpeg"))
    bundled = imageio_ffmpeg.get_ffmpeg_exe()
    assert FfmpegSource(FfmpegSettings(executable=bundled)).executable == bundled
    assert FfmpegSource().executable == bundled


# --- failing after some audio: the stream ends, the log says why ------------------------------


async def test_a_truncated_download_plays_what_there_is(
    media: MediaServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="musicbot.audio"):
        frames = await play(media.truncated_url(440, 3, keep=0.5))
    assert abs(len(frames) - 75) <= 5
    decode_opus(frames)
    assert "Stream ends prematurely" in caplog.text


async def test_a_short_file_plays_what_there_is(media: MediaServer) -> None:
    frames = await play(media.truncated_url(440, 3, keep=0.5, declared=False))
    assert abs(len(frames) - 75) <= 5


async def test_a_stall_mid_track_ends_the_track(
    media: MediaServer, caplog: pytest.LogCaptureFixture
) -> None:
    size = (await media.tone_file(440, 4, "mp3")).stat().st_size
    with caplog.at_level(logging.WARNING, logger="musicbot.audio"):
        frames = await play(media.stalled_url(440, 4, after=size // 2), settings=IMPATIENT)
    assert abs(len(frames) - 100) <= 8
    assert "timed out" in caplog.text


# --- ownership: ffmpeg lives exactly as long as the context -----------------------------------


async def test_cancelling_the_consumer_kills_and_reaps_ffmpeg(media: MediaServer) -> None:
    source = FfmpegSource(FAST)
    with trio.CancelScope() as scope:
        async with source.open(Track("tone", media.tone_url(440, 30, "mp3"))) as frames:
            assert isinstance(frames, TranscodedStream)
            process, pipes = frames.process, pipe_inodes(frames)
            assert len(pipes) == 2 and pipes_open(pipes) == pipes
            async for _ in frames:
                if frames.demuxer.packets > 10:
                    scope.cancel()
                    await trio.sleep(1)  # cancelled here, mid-stream
    assert scope.cancelled_caught
    assert process.returncode == -9  # SIGKILL
    assert not exists(process.pid)  # reaped: not even a zombie
    assert children() == []
    assert pipes_open(pipes) == set()


async def test_leaving_early_kills_and_reaps_ffmpeg(media: MediaServer) -> None:
    async with FfmpegSource(FAST).open(Track("tone", media.tone_url(440, 30, "mp3"))) as frames:
        assert isinstance(frames, TranscodedStream)
        process, pipes = frames.process, pipe_inodes(frames)
        await frames.__anext__()
    assert process.returncode == -9
    assert children() == []
    assert pipes_open(pipes) == set()


async def test_cancelling_while_opening_kills_ffmpeg(media: MediaServer) -> None:
    patient = FfmpegSettings(rw_timeout=60)
    with trio.move_on_after(0.5) as waited:
        async with FfmpegSource(patient).open(Track("tone", media.stalled_url(440, 3))):
            pytest.fail("a stalled link produced audio")
    assert waited.cancelled_caught
    assert children() == []


async def test_a_finished_stream_leaves_nothing_behind(media: MediaServer) -> None:
    async with FfmpegSource(FAST).open(Track("tone", media.tone_url(440, 1, "mp3"))) as frames:
        assert isinstance(frames, TranscodedStream)
        pipes = pipe_inodes(frames)
        assert len([frame async for frame in frames]) > 0
        assert frames.process.returncode == 0
    assert children() == []
    assert pipes_open(pipes) == set()
