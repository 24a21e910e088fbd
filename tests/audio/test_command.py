from __future__ import annotations

import pytest

from musicbot.audio.command import FfmpegSettings, input_options, transcode_command
from musicbot.core.ports import SourceError

SETTINGS = FfmpegSettings(rw_timeout=2.5, reconnect_delay_max=3, bitrate_kbps=96)


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_an_http_url_gets_the_network_protocols_reconnects_and_a_timeout() -> None:
    command = transcode_command("ffmpeg", "https://example.test/a.mp3", SETTINGS)
    assert option(command, "-protocol_whitelist") == "http,https,tcp,tls,crypto"
    assert option(command, "-rw_timeout") == "2500000"  # microseconds
    assert option(command, "-reconnect") == "1"
    assert option(command, "-reconnect_streamed") == "1"
    assert option(command, "-reconnect_delay_max") == "3"
    assert option(command, "-i") == "https://example.test/a.mp3"
    assert command.index("-protocol_whitelist") < command.index("-i")


def test_the_output_is_48khz_stereo_opus_in_20ms_frames_one_per_page() -> None:
    command = transcode_command("/opt/ffmpeg", "http://example.test/a.mp3", SETTINGS)
    assert command[0] == "/opt/ffmpeg"
    assert option(command, "-c:a") == "libopus"
    assert option(command, "-b:a") == "96k"
    assert option(command, "-ar") == "48000"
    assert option(command, "-ac") == "2"
    assert option(command, "-frame_duration") == "20"
    assert option(command, "-page_duration") == "20000"
    assert option(command, "-f") == "opus"
    assert option(command, "-map") == "0:a:0"
    assert "-vn" in command and "-nostdin" in command
    assert command[-1] == "pipe:1"


def test_a_local_path_is_read_as_file_with_only_the_file_protocol() -> None:
    command = transcode_command("ffmpeg", "/var/lib/musicbot/concat:x|y.opus", SETTINGS)
    assert option(command, "-protocol_whitelist") == "file"
    # The file: prefix keeps ffmpeg from reading "concat:" in a path as a protocol.
    assert option(command, "-i") == "file:/var/lib/musicbot/concat:x|y.opus"
    assert "-reconnect" not in command


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "FILE:/etc/passwd",
        "concat:/a.mp3|/b.mp3",
        "ftp://example.test/a.mp3",
        "rtmp://example.test/live",
        "data:audio/mpeg;base64,AAAA",
        "relative/path.mp3",
        "",
    ],
)
def test_anything_else_is_refused_before_ffmpeg_runs(url: str) -> None:
    with pytest.raises(SourceError, match="only play http and https links"):
        input_options(url, SETTINGS)


def test_seek_is_an_input_option_and_volume_a_filter() -> None:
    command = transcode_command("ffmpeg", "http://e.test/a", SETTINGS, start=83.25, volume=50)
    assert option(command, "-ss") == "83.250"
    assert command.index("-ss") < command.index("-i")
    assert option(command, "-af") == "volume=0.5"


def test_defaults_add_neither_seek_nor_filter() -> None:
    command = transcode_command("ffmpeg", "http://e.test/a", SETTINGS)
    assert "-ss" not in command and "-af" not in command


@pytest.mark.parametrize(("start", "volume"), [(-1.0, 100), (float("nan"), 100), (0, 201), (0, -1)])
def test_nonsense_positions_and_volumes_are_bugs(start: float, volume: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        transcode_command("ffmpeg", "http://e.test/a", SETTINGS, start=start, volume=volume)


@pytest.mark.parametrize(
    "options",
    [{"bitrate_kbps": 5}, {"bitrate_kbps": 511}, {"rw_timeout": 0}, {"reconnect_delay_max": -1}],
)
def test_settings_are_validated(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        FfmpegSettings(**options)  # type: ignore[arg-type]
