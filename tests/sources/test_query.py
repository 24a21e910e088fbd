"""QueryRules: cleaning and classifying what a user typed."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from musicbot.core.ports import ResolveError
from musicbot.sources.query import Query, QueryKind, QueryRules, clean

RULES = QueryRules()

BIDI_AND_ZERO_WIDTH = (
    "\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
)


@pytest.mark.parametrize(
    ("typed", "text"),
    [
        ("never gonna give you up", "never gonna give you up"),
        ("  never\tgonna\n\ngive  you up  ", "never gonna give you up"),
        ("ne\u200bver\u00adgonna", "nevergonna"),
        ("\u202eevil\u202c song", "evil song"),
        ("bell\x07 \x1b[31mred", "bell [31mred"),
        ("東京事変　群青日和", "東京事変 群青日和"),  # an ideographic space is a space
        ("أم كلثوم - انت عمري", "أم كلثوم - انت عمري"),
        ("Ёлка — Прованс", "Ёлка — Прованс"),
        ("🎵 lofi 🎧 beats", "🎵 lofi 🎧 beats"),
        ("👨\u200d👩\u200d👧 family", "👨\u200d👩\u200d👧 family"),  # ZWJ inside an emoji
        ("❤️\u200d🔥 song", "❤️\u200d🔥 song"),
        ("می\u200cخواهم", "می\u200cخواهم"),  # noqa: RUF001  (ZWNJ inside a Persian word)
        ("a\u200db\u200c c", "ab c"),  # joiners between ASCII letters hide things
        ("\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f anthem",
         "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f anthem"),
        ("tag\U000e0041\U000e0042s", "tags"),  # tag characters outside a flag
        ("e\u0301cole", "e\u0301cole"),  # combining marks stay as typed
        ("\u0600\u0661\u0662", "\u0600\u0661\u0662"),  # Arabic number sign
    ],
)  # fmt: skip
def test_searches_are_cleaned_but_keep_what_is_visible(typed: str, text: str) -> None:
    query = RULES.parse(typed)
    assert query == Query(QueryKind.SEARCH, text, "ytsearch1:" + text)


@pytest.mark.parametrize(
    ("typed", "link"),
    [
        ("https://youtu.be/dQw4w9WgXcQ", "https://youtu.be/dQw4w9WgXcQ"),
        ("  <https://youtu.be/dQw4w9WgXcQ>  ", "https://youtu.be/dQw4w9WgXcQ"),
        ("HTTP://example.com/a", "HTTP://example.com/a"),
        ("\u200bhttps://example.com/\u202ea", "https://example.com/a"),
        ("file:///etc/passwd", "file:///etc/passwd"),
        ("file:/etc/passwd", "file:/etc/passwd"),
        ("javascript:alert(1)", "javascript:alert(1)"),
        ("data:text/html,hi", "data:text/html,hi"),
        ("ftp://host/x", "ftp://host/x"),
        ("smb://host/share", "smb://host/share"),
    ],
)
def test_links_are_recognised_for_the_policy_to_judge(typed: str, link: str) -> None:
    assert RULES.parse(typed) == Query(QueryKind.LINK, link, link)


@pytest.mark.parametrize(
    "typed",
    ["artist: song title", "ytsearchall:everything", "spotify:track:4uLU6hMC", "re:zero ost"],
)
def test_words_with_a_colon_stay_words(typed: str) -> None:
    query = RULES.parse(typed)
    assert query.kind is QueryKind.SEARCH
    assert query.target == "ytsearch1:" + typed


@pytest.mark.parametrize("typed", ["", "   ", "\n\t", "\u200b\u200b", "\x00\x01", "<>", " < > "])
def test_nothing_to_play_is_said_plainly(typed: str) -> None:
    with pytest.raises(ResolveError) as caught:
        RULES.parse(typed)
    assert str(caught.value) == "tell me what to play: a link, or some words to search for"


def test_too_long_a_search_is_refused_with_the_numbers() -> None:
    RULES.parse("x" * 500)
    with pytest.raises(ResolveError) as caught:
        RULES.parse("x" * 501)
    assert str(caught.value) == "that search is too long: 501 characters, the limit is 500"


def test_length_counts_what_is_left_after_cleaning() -> None:
    assert RULES.parse("x" * 500 + "\u200b" * 100 + "   ").text == "x" * 500


def test_absurd_input_is_refused_before_any_work() -> None:
    with pytest.raises(ResolveError, match="far too long"):
        RULES.parse("x" * 1_000_000)


def test_the_prefix_and_limit_are_settings() -> None:
    rules = QueryRules(search_prefix="scsearch1:", max_length=10)
    assert rules.parse("lofi").target == "scsearch1:lofi"
    with pytest.raises(ResolveError, match="limit is 10"):
        rules.parse("x" * 11)


@pytest.mark.parametrize("prefix", ["", "ytsearch1", "yt search1:", "https://", "ytsearch1:x"])
def test_a_bad_prefix_is_refused_at_startup(prefix: str) -> None:
    with pytest.raises(ValueError, match="search_prefix"):
        QueryRules(search_prefix=prefix)


# --- properties -------------------------------------------------------------------------------

INVISIBLE_CATEGORIES = ("Cc", "Cs")


def assert_clean(text: str) -> None:
    assert text == text.strip()
    assert "  " not in text
    for char in text:
        assert unicodedata.category(char) not in INVISIBLE_CATEGORIES
        assert char not in BIDI_AND_ZERO_WIDTH
        assert char == " " or not char.isspace()


nasty = st.characters(categories=("Cc", "Cf", "Cs", "Zs", "Zl", "Zp")) | st.sampled_from(
    list(BIDI_AND_ZERO_WIDTH + "\u200c\u200d\U0001f3f4\U000e0067\U000e007f<>:/ ")
)
any_text = st.text(alphabet=st.characters() | nasty, max_size=700)


@given(any_text)
@example("\x00")
@example("\ud800 lone surrogate")
@example("\u202e" * 600)
@example("https://" + "\u200b" * 3)
def test_any_input_gives_a_clean_query_or_a_plain_refusal(typed: str) -> None:
    try:
        query = RULES.parse(typed)
    except ResolveError as refusal:
        message = str(refusal)
        assert message and "\n" not in message
        return
    assert query.text
    assert_clean(query.text)
    if query.kind is QueryKind.SEARCH:
        assert len(query.text) <= RULES.max_length
        assert query.target == RULES.search_prefix + query.text


@given(any_text)
def test_cleaning_is_idempotent(typed: str) -> None:
    once = clean(typed)
    assert clean(once) == once
    assert_clean(once)


visible = st.text(
    alphabet=st.characters(
        categories=("L", "M", "N", "P", "S"),
        exclude_characters="<>\u115f\u1160\u3164\uffa0",  # Hangul fillers draw nothing
    ),
    min_size=1,
    max_size=60,
)


@given(st.lists(visible, min_size=1, max_size=5))
def test_visible_text_in_any_script_survives_whole(words: list[str]) -> None:
    typed = "  ".join(words)
    assert clean(typed) == " ".join(words)
