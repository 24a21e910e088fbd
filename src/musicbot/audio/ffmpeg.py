"""FfmpegSource: the FrameSource that transcodes a track's URL to Opus frames with ffmpeg.

One ffmpeg process per open stream, owned by the task that opened it: leaving the context, or
being cancelled inside it, kills (SIGKILL) and reaps the process and closes its pipes.
`open()` returns once the first frame is in hand, so a link that cannot be played raises
SourceError there, with a message for the user, before the track is announced.

An ffmpeg killed by a signal it was not sent by us (the OOM killer, an operator's `kill`) is
started again from where its audio ended, a few times at most: the listener hears a hiccup
instead of the song stopping short without a word.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
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

MAX_RESTARTS = 3
"""Times one stream starts ffmpeg again after a signal killed it, before the track counts as
failed: a process that keeps being killed is not worth waiting for."""

Restart = Callable[[float], list[str]]
"""The ffmpeg command that carries on from a position (seconds into the track)."""


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
        def command_from(position: float) -> list[str]:
            # A live stream cannot be wound: it is joined again where it is now.
            at = 0.0 if track.live else position
            return transcode_command(
                self.executable, track.url, self.settings, start=at, volume=volume
            )

        async with open_transcoder(
            command_from(start),
            title=track.title,
            start=start,
            settings=self.settings,
            restart=command_from,
        ) as frames:
            yield frames


@asynccontextmanager
async def open_transcoder(
    command: list[str],
    *,
    title: str = "",
    start: float = 0.0,
    settings: FfmpegSettings | None = None,
    restart: Restart | None = None,
) -> AsyncIterator[TranscodedStream]:
    """Run `command` (ffmpeg writing Ogg Opus to stdout) for the life of the context.

    Yields the stream of its Opus packets once the first one is ready; raises SourceError if
    ffmpeg ends without producing audio. With `restart`, an ffmpeg killed by a signal is run
    again as `restart(position)` from where its audio ended (at most MAX_RESTARTS times).
    """
    settings = settings or FfmpegSettings()
    stream = TranscodedStream(
        await _start_ffmpeg(command, settings),
        title=title,
        start=start,
        settings=settings,
        restart=restart,
    )
    try:
        async with open_service_nursery("ffmpeg stream closing") as helpers:
            stream.read_stderr_in(helpers)
            await stream.wait_first()
            yield stream
    finally:
        await _kill_and_reap(stream.process, title)


async def _start_ffmpeg(command: list[str], settings: FfmpegSettings) -> trio.Process:
    try:
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:  # ffmpeg gone since startup, out of processes or descriptors
        log.error("cannot run %s: %s", command[0], exc)
        raise SourceError("the bot could not start its audio converter; see its log") from exc
    assert process.stdout is not None and process.stderr is not None
    _grow_pipe(process.stdout, settings.pipe_size)
    return process


async def _kill_and_reap(process: trio.Process, title: str) -> None:
    """SIGKILL (nothing, once it has exited), close its pipes and wait for it: shielded and
    bounded, so that a cancelled player still leaves no process or descriptor behind."""
    with trio.move_on_after(REAP_TIMEOUT, shield=True) as reaping:
        process.kill()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                await pipe.aclose()
        await process.wait()
    if reaping.cancelled_caught:
        log.error("ffmpeg (pid %s) for %r did not exit after SIGKILL", process.pid, title)


class TranscodedStream(OpusStream):
    """The Opus packets of one ffmpeg run (or of a few, when one was killed and started again).
    Ends normally when ffmpeg's output ends, also when ffmpeg failed after some audio (the user
    hears what there was; the log says why)."""

    def __init__(
        self,
        process: trio.Process,
        *,
        title: str,
        start: float,
        settings: FfmpegSettings,
        restart: Restart | None = None,
    ) -> None:
        assert process.stdout is not None
        super().__init__(process.stdout, check_crc=settings.check_crc)
        self.process = process
        self.stderr = StderrTail()
        self.title = title
        self.start = start
        self.whole: bool | None = None
        """Once ended: whether ffmpeg read its input to the end without an error, in one run (a
        download cut short also ends the stream normally, but is not the whole song; nor is a
        song spliced from two runs kept as one)."""
        self.restarts = 0
        """Times ffmpeg was started again after a signal killed it."""
        self.packets_before = 0
        """Packets the earlier runs (before restarts) produced."""
        self._settings = settings
        self._restart = restart
        self._run_start = start
        self._helpers: trio.Nursery | None = None

    def read_stderr_in(self, helpers: trio.Nursery) -> None:
        """Keep the tail of ffmpeg's stderr (this run's and the restarts'), in `helpers`."""
        self._helpers = helpers
        assert self.process.stderr is not None
        helpers.start_soon(self.stderr.drain, self.process.stderr, name="ffmpeg stderr")

    async def _fill(self) -> None:
        try:
            if self._was_killed():
                await self._read_rest_of_run()
            else:
                await super()._fill()
        except OggError as exc:
            log.error("ffmpeg wrote bad Ogg for %r: %s", self.title, exc)
            raise SourceError("the audio could not be decoded") from exc

    def _was_killed(self) -> bool:
        """Whether a signal killed ffmpeg (and it is to be started again). Asked before each
        read: the pipe may still hold seconds of audio, which hides the restart if it is
        known now rather than when the pipe runs dry."""
        if self._restart is None:
            return False
        returncode = self.process.poll()
        return returncode is not None and returncode < 0

    async def _read_rest_of_run(self) -> None:
        """Take all that the dead ffmpeg wrote (the pipe's worth at most) into the queue, so
        that the next run starts while those packets play."""
        run = self.restarts
        while self.restarts == run and not self._at_eof:
            await super()._fill()

    async def _ended(self) -> None:
        returncode = await self.process.wait()
        await self.stderr.closed.wait()
        if returncode < 0 and self._restart is not None:
            await self._start_again(_signal_name(-returncode))
            return
        errors = self.stderr.errors()
        self.whole = returncode == 0 and not errors and not self.restarts
        if self.demuxer.packets == 0:
            if returncode == 0 and not errors:
                if self._run_start > 0:
                    return  # a seek past the end: nothing left to play
                raise SourceError("that link has no audio in it")
            log.info("ffmpeg exited %s for %r:\n%s", returncode, self.title, self.stderr.text)
            raise SourceError(explain(self.stderr.text))
        if returncode != 0 or errors:
            log.warning(
                "ffmpeg exited %s for %r after %.2f s of audio:\n%s",
                returncode,
                self.title,
                (self.packets_before + self.demuxer.packets) * FRAME_SECONDS,
                self.stderr.text,
            )

    async def _start_again(self, killed_by: str) -> None:
        """ffmpeg was killed, and not by us (we kill only once the stream is left): run it
        again from where its audio ended. The packets still queued play first."""
        assert self._restart is not None and self._helpers is not None
        position = self._run_start + self.demuxer.packets * FRAME_SECONDS
        if self.restarts >= MAX_RESTARTS:
            log.error(
                "ffmpeg for %r was killed by %s at %.2f s, %d times now; giving up on the track",
                self.title,
                killed_by,
                position,
                self.restarts + 1,
            )
            raise SourceError("the bot's audio converter kept being stopped")
        log.warning(
            "ffmpeg (pid %s) for %r was killed by %s at %.2f s; starting it again from there",
            self.process.pid,
            self.title,
            killed_by,
            position,
        )
        await _kill_and_reap(self.process, self.title)  # reaped already: this closes its pipes
        process = await _start_ffmpeg(self._restart(position), self._settings)
        self.restarts += 1
        self.packets_before += self.demuxer.packets
        self._run_start = position
        self.process = process
        self.stderr = StderrTail()
        assert process.stdout is not None and process.stderr is not None
        self._helpers.start_soon(self.stderr.drain, process.stderr, name="ffmpeg stderr")
        self._continue_with(process.stdout)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _grow_pipe(stream: trio.abc.ReceiveStream, size: int) -> None:
    """Let the writer run `size` bytes ahead (Linux: F_SETPIPE_SZ); keep the default elsewhere."""
    if sys.platform != "linux" or not isinstance(stream, trio.lowlevel.FdStream):
        return
    import fcntl

    try:
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, size)
    except OSError as exc:  # EPERM above /proc/sys/fs/pipe-max-size for unprivileged users
        log.debug("could not resize ffmpeg's stdout pipe to %d bytes: %s", size, exc)
