from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from musicbot.audio.ogg import OggError, OggOpusDemuxer
from musicbot.audio.stream import OpusStream
from musicbot.testing.media import MediaServer


class RecordingStream(OpusStream):
    ended = 0

    async def _ended(self) -> None:
        self.ended += 1


async def send_in_chunks(send: trio.testing.MemorySendStream, data: bytes, seed: int) -> None:
    chunks = random.Random(seed)
    offset = 0
    while offset < len(data):
        size = chunks.randint(1, 3000)
        await send.send_all(data[offset : offset + size])
        offset += size
    await send.aclose()


@pytest.mark.parametrize("seed", range(3))
async def test_a_stream_yields_the_packets_of_its_bytes(media: MediaServer, seed: int) -> None:
    data = (await media.tone_file(440, 1, "opus")).read_bytes()
    expected = OggOpusDemuxer().feed(data)
    send, receive = trio.testing.memory_stream_one_way_pair()
    stream = RecordingStream(receive, read_size=1000)
    async with trio.open_nursery() as writer:
        writer.start_soon(send_in_chunks, send, data, seed)
        assert await stream.wait_first()
        packets = [packet async for packet in stream]
    assert packets == expected
    assert len(packets) == 51
    assert stream.ended == 1
    assert stream.bytes_read == len(data)


async def test_an_empty_stream_ends_at_once() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.aclose()
    stream = RecordingStream(receive)
    assert not await stream.wait_first()
    assert [packet async for packet in stream] == []
    assert stream.ended == 1


async def test_the_end_hook_can_fail_the_stream() -> None:
    class Failing(OpusStream):
        async def _ended(self) -> None:
            raise LookupError("the writer failed")

    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.aclose()
    with pytest.raises(LookupError, match="the writer failed"):
        await Failing(receive).wait_first()


async def test_bytes_that_are_not_ogg_fail_the_iteration() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(b"<!doctype html><html>")
    with pytest.raises(OggError, match="OggS"):
        await OpusStream(receive).__anext__()
