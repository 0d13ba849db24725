"""R10 output clean-up: `shape_output` and its streaming twin `OutputShaper`."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prompt_formats import OutputShaper, get_format, shape_output


def stream(deltas, *, continuation=False) -> tuple[list[str], str]:
    shaper = OutputShaper(continuation=continuation)
    return [shaper.feed(delta) for delta in deltas], shaper.finish()


@pytest.mark.parametrize(
    ("raw", "shaped"),
    [
        ("  Paris is the capital.  \n", "Paris is the capital."),
        ("Paris.\nUSER", "Paris."),
        ("Paris. USER:", "Paris."),
        ("Paris.\n\nASSISTANT:", "Paris."),
        ("Paris.\nASSIST", "Paris."),
        ("Paris. ASSI ", "Paris."),
        ("USER", ""),
        ("   ASSISTANT: ", ""),
    ],
)
def test_shape_output_strips_and_drops_a_trailing_header_fragment(raw, shaped):
    assert shape_output(raw) == shaped


@pytest.mark.parametrize(
    "text",
    [
        "It was made in the US",
        "Call me ASS",  # shorter than four characters: a word, not a fragment
        "Press U",
        "The field is called lastUSER",  # glued to a word: not a header
        "USER: is how the transcript marks the user",  # not trailing
        "Tell the USERS",
    ],
)
def test_shape_output_keeps_ordinary_trailing_words(text):
    assert shape_output(text) == text


def test_shape_output_drops_only_one_fragment():
    assert shape_output("Done. USER ASSISTANT") == "Done. USER"


def test_continuation_keeps_leading_whitespace():
    assert shape_output(" world.\n", continuation=True) == " world."


def test_streaming_holds_back_leading_whitespace_then_sends_text():
    sent, tail = stream(["  ", "\n", " Hel", "lo"])
    assert sent == ["", "", "Hel", "lo"]
    assert tail == ""


def test_streaming_holds_a_possible_header_until_proven_ordinary():
    sent, tail = stream(["Made in the", " US", "ER", "S manual", "."])
    assert sent == ["Made in the", "", "", " USERS manual", "."]
    assert tail == ""


def test_streaming_never_sends_a_trailing_header_fragment():
    sent, tail = stream(["Answer.", "\n", "ASSIS", "TANT:"])
    assert "".join(sent) == "Answer."
    assert tail == ""


def test_streaming_holds_trailing_whitespace_and_drops_it_at_the_end():
    sent, tail = stream(["One", " ", "two\n\n"])
    assert sent == ["One", "", " two"]
    assert tail == ""


def test_format_output_shaper_is_a_fresh_shaper():
    fmt = get_format()
    first, second = fmt.output_shaper(), fmt.output_shaper()
    assert first is not second
    assert first.feed(" Hi USER") == "Hi"
    assert second.feed(" Hi USER") == "Hi"


# The alphabet leans on the characters that matter so splits land inside headers and spaces.
shaping_text = st.text(
    alphabet=st.sampled_from(list("USERASITN: \n\tab.") + ["\u00a0", "é"]), max_size=40
) | st.text(max_size=40)


@st.composite
def text_and_split(draw):
    text = draw(shaping_text)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in zip(bounds, bounds[1:])]


@given(text_and_split(), st.booleans())
def test_streaming_equals_shape_output_for_any_split(case, continuation):
    text, deltas = case
    sent, tail = stream(deltas, continuation=continuation)
    assert "".join(sent) + tail == shape_output(text, continuation=continuation)


@given(text_and_split())
def test_streaming_never_sends_what_the_final_output_lacks(case):
    text, deltas = case
    final = shape_output(text)
    shaper = OutputShaper()
    sent = ""
    for delta in deltas:
        sent += shaper.feed(delta)
        assert final.startswith(sent)
