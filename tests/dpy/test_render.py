import pytest

from musicbot.core.messages import Enqueued, Track
from musicbot.dpy.render import enqueued_embed, format_duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "unknown"), (0, "0:00"), (59.9, "0:59"), (187, "3:07"), (3723, "1:02:03")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_enqueued_embed_says_now_playing_or_the_position() -> None:
    track = Track(title="Tone *440*", url="http://x/a.mp3", page_url="http://x/a", duration=3)
    now = enqueued_embed((track,), Enqueued(position=0, count=1))
    assert now.title == "Now playing"
    assert now.description == r"[Tone \*440\*](http://x/a)"
    later = enqueued_embed((track, track), Enqueued(position=4, count=2), left_out=7)
    assert later.title == "Queued at position 4"
    fields = {field.name: field.value for field in later.fields}
    assert fields == {"Duration": "0:03", "Tracks added": "2"}
    assert later.footer.text == "7 more tracks were left out (playlist limit)"
