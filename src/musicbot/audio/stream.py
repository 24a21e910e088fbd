"""OpusStream: an async iterator of Opus packets read from a byte stream of Ogg Opus.

The hot path is one `deque.popleft()` per 20 ms frame: bytes are read a pipe-full at a time
(`read_size`), demuxed at once, and handed out from the queue. Reading only when the queue is
empty is the back-pressure: a writer that runs ahead (ffmpeg) blocks on a full pipe.
"""

from __future__ import annotations

from collections import deque

import trio

from musicbot.audio.ogg import OggOpusDemuxer

READ_SIZE = 64 * 1024


class OpusStream:
    """`async for packet in OpusStream(receive_stream): ...`

    Override `_ended()` to act when the bytes end (check an exit status, raise an error); it runs
    once, before the iteration stops. Packets already queued are handed out without a checkpoint,
    so a consumer that never sleeps should checkpoint itself; reads checkpoint as usual.
    """

    def __init__(
        self,
        receive: trio.abc.ReceiveStream,
        *,
        read_size: int = READ_SIZE,
        check_crc: bool = False,
    ) -> None:
        self._receive = receive
        self._read_size = read_size
        self._check_crc = check_crc
        self.demuxer = OggOpusDemuxer(check_crc=check_crc)
        self._ready: deque[bytes] = deque()
        self._at_eof = False
        self.bytes_read = 0
        self.reads = 0

    def __aiter__(self) -> OpusStream:
        return self

    async def __anext__(self) -> bytes:
        ready = self._ready
        while not ready:
            if self._at_eof:
                raise StopAsyncIteration
            await self._fill()
        return ready.popleft()

    async def wait_first(self) -> bool:
        """Read until a packet is queued (True) or the bytes ended without one (False)."""
        while not self._ready and not self._at_eof:
            await self._fill()
        return bool(self._ready)

    async def _fill(self) -> None:
        data = await self._receive.receive_some(self._read_size)
        if data:
            self.reads += 1
            self.bytes_read += len(data)
            self._ready.extend(self.demuxer.feed(data))
        else:
            self._at_eof = True
            await self._ended()

    async def _ended(self) -> None:
        """Called once when the byte stream ends. The default does nothing."""

    def _continue_with(self, receive: trio.abc.ReceiveStream) -> None:
        """Go on reading from `receive`, a new Ogg Opus stream, once this one ended (call it from
        `_ended`): the packets already queued are handed out first, then the new stream's."""
        self._receive = receive
        self.demuxer = OggOpusDemuxer(check_crc=self._check_crc)
        self._at_eof = False
