"""A track's key: the same song gets the same key, different songs never share one."""

import pytest

from musicbot.sources.info import read_candidate


@pytest.mark.parametrize(
    ("info", "key"),
    [
        (
            {"extractor_key": "Youtube", "id": "dQw4w9WgXcQ", "url": "https://x/a"},
            "Youtube:dQw4w9WgXcQ",
        ),
        ({"extractor_key": "Soundcloud", "id": 12345, "url": "https://x/b"}, "Soundcloud:12345"),
        # Generic ids are file names: two different files may both be "1".
        (
            {"extractor_key": "Generic", "id": "1", "url": "http://h/440/1.mp3"},
            "url:http://h/440/1.mp3",
        ),
        (
            {"extractor_key": "HTML5MediaEmbed", "id": "1-1", "url": "http://h/a.mp3"},
            "url:http://h/a.mp3",
        ),
        ({"extractor_key": "Youtube", "url": "https://x/c"}, ""),
        ({"id": "7"}, ""),
    ],
)
def test_keys(info: dict[str, object], key: str) -> None:
    candidate = read_candidate(info, page_url="http://page")
    assert candidate.key == key
    assert candidate.to_track().key == key


def test_live_streams_are_marked_live() -> None:
    info = {"extractor_key": "Twitch", "id": "x", "url": "https://x/live", "is_live": True}
    track = read_candidate(info, page_url="http://page").to_track()
    assert track.live
    assert track.duration is None
