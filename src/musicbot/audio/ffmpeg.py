"""FfmpegSource: the FrameSource that transcodes a track's URL to Opus frames with ffmpeg.

One ffmpeg process per open stream, owned by the task that opened it: leaving the context, or
being cancelled inside it, kills (SIGKILL) and reaps the process and closes its pipes.
`open()` returns once the first frame is in hand, so a link that cannot be played raises
SourceError there, with a message for the user, before the track is announced.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import imageio_ffmpeg
import trio

from musicbot.audio.command import FfmpegSettings, transcode_command
from musicbot.audio.diagnosis import StderrTail, explain
from musicbot.audio.ogg import OggError
from musicbot.audio.stream import OpusStream
from musicbot.core.messages import Track
from musicbot.core.ports import FRAME_SECONDS, SourceError
from musicbot.core.services import open_service_nursery

log = logging.getLogger(__name__)

REAP_TIMEOUT = 5.0
"""Seconds to wait for a killed ffmpeg to be reaped before giving up on it (and saying so)."""


class FfmpegSource:
    """A FrameSource over ffmpeg: `async with source.open(track) as frames: ...`."""

    def __init__(self, settings: FfmpegSettings | None = None) -> None:
        self.settings = settings or FfmpegSettings()
        configured = self.settings.executable
        executable = shutil.which(configured) if configured else imageio_ffmpeg.get_ffmpeg_exe()
        if executable is None:
            raise ValueError(f"ffmpeg not found at {configured!r}")
        self.executable: str = executable

    def open(
        self, track: Track, *, start: float = 0.0, volume: int = 100
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._open(track, start, volume)

    @asynccontextmanager
    async def _open(self, track: Track, start: float, volume: int) -> AsyncIterator[OpusStream]:
        command = transcode_command(
            self.executable, track.url, self.settings, start=start, volume=volume
        )
        async with open_transcoder(
            command, title=track.title, start=start, settings=self.settings
        ) as frames:
            yield frames


@asynccontextmanager
async def open_transcoder(
    command: list[str],
    *,
    title: str = "",
    start: float = 0.0,
    settings: FfmpegSettings | None = None,
) -> AsyncIterator[TranscodedStream]:
    """Run `command` (ffmpeg writing Ogg Opus to stdout) for the life of the context.

    Yields the stream of its Opus packets once the first one is ready; raises SourceError if
    ffmpeg ends without producing audio.
    """
    settings = settings or FfmpegSettings()
    try:
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:  # ffmpeg gone since startup, out of processes or descriptors
        log.error("cannot run %s: %s", command[0], exc)
        raise SourceError("the bot could not start its audio converter; see its log") from exc
    try:
        assert process.stdout is not None and process.stderr is not None
        _grow_pipe(process.stdout, settings.pipe_size)
        stderr = StderrTail()
        async with open_service_nursery("ffmpeg stream closing") as readers:
            readers.start_soon(stderr.drain, process.stderr, name="ffmpeg stderr")
            stream = TranscodedStream(process, stderr, title=title, start=start, settings=settings)
            await stream.wait_first()
            yield stream
    finally:
        with trio.move_on_after(REAP_TIMEOUT, shield=True) as reaping:
            process.kill()  # does nothing once it has exited
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    await pipe.aclose()
            await process.wait()
        if reaping.cancelled_caught:
            log.error("ffmpeg (pid %s) for %r did not exit after SIGKILL", process.pid, title)


class TranscodedStream(OpusStream):
    """The Opus packets of one ffmpeg run. Ends normally when ffmpeg's output ends, also when
    ffmpeg failed after some audio (the user hears what there was; the log says why)."""

    def __init__(
        self,
        process: trio.Process,
        stderr: StderrTail,
        *,
        title: str,
        start: float,
        settings: FfmpegSettings,
    ) -> None:
        assert process.stdout is not None
        super().__init__(process.stdout, check_crc=settings.check_crc)
        self.process = process
        self.stderr = stderr
        self.title = title
        self.start = start
        self.whole: bool | None = None
        """Once ended: whether ffmpeg read its input to the end without an error (a download
        cut short also ends the stream normally, but is not the whole song)."""

    async def _fill(self) -> None:
        try:
            await super()._fill()
        except OggError as exc:
            log.error("ffmpeg wrote bad Ogg for %r: %s", self.title, exc)
            raise SourceError("the audio could not be decoded") from exc

    async def _ended(self) -> None:
        returncode = await self.process.wait()
        await self.stderr.closed.wait()
        errors = self.stderr.errors()
        self.whole = returncode == 0 and not errors
        if self.demuxer.packets == 0:
            if returncode == 0 and not errors:
                if self.start > 0:
                    return  # a seek past the end: nothing left to play
                raise SourceError("that link has no audio in it")
            log.info("ffmpeg exited %s for %r:\n%s", returncode, self.title, self.stderr.text)
            raise SourceError(explain(self.stderr.text))
        if returncode != 0 or errors:
            log.warning(
                "ffmpeg exited %s for %r after %.2f s of audio:\n%s",
                returncode,
                self.title,
                self.demuxer.packets * FRAME_SECONDS,
                self.stderr.text,
            )


def _grow_pipe(stream: trio.abc.ReceiveStream, size: int) -> None:
    """Let the writer run `size` bytes ahead (Linux: F_SETPIPE_SZ); keep the default elsewhere."""
    if sys.platform != "linux" or not isinstance(stream, trio.lowlevel.FdStream):
        return
    import fcntl

    try:
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, size)
    except OSError as exc:  # EPERM above /proc/sys/fs/pipe-max-size for unprivileged users
        log.debug("could not resize ffmpeg's stdout pipe to %d bytes: %s", size, exc)
