"""Audio for the player: ffmpeg transcoding to Opus frames, and the Ogg Opus demuxer under it.

`FfmpegSource` implements the core's FrameSource port. Nothing here imports discord or asyncio.
"""

from musicbot.audio.command import FfmpegSettings
from musicbot.audio.ffmpeg import FfmpegSource, TranscodedStream, open_transcoder
from musicbot.audio.ogg import OggError, OggOpusDemuxer, OpusHead
from musicbot.audio.stream import OpusStream

__all__ = [
    "FfmpegSettings",
    "FfmpegSource",
    "OggError",
    "OggOpusDemuxer",
    "OpusHead",
    "OpusStream",
    "TranscodedStream",
    "open_transcoder",
]
