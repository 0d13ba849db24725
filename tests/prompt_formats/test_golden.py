"""The golden cases G1-G10 of spec/prompt-format.md, byte for byte, on the pure renderer."""

from __future__ import annotations

import pytest

from prompt_formats import PromptFormatError, get_format
from tests.support.golden_cases import GOLDEN_CASES, GoldenCase


@pytest.fixture
def fmt():
    return get_format("airoboros")


@pytest.mark.parametrize("case", [c for c in GOLDEN_CASES if c.prompt is not None], ids=lambda c: c.name)
def test_golden_prompt_byte_for_byte(fmt, case: GoldenCase):
    assert fmt.render(case.messages, **case.extensions) == case.prompt


@pytest.mark.parametrize("case", [c for c in GOLDEN_CASES if c.prompt is None], ids=lambda c: c.name)
def test_golden_refusal(fmt, case: GoldenCase):
    with pytest.raises(PromptFormatError) as caught:
        fmt.render(case.messages, **case.extensions)
    assert caught.value.code == case.error_code
    assert caught.value.param == "messages"


def test_g8_refusal_names_the_role(fmt):
    case = next(c for c in GOLDEN_CASES if c.name == "G8")
    with pytest.raises(PromptFormatError) as caught:
        fmt.render(case.messages)
    assert "'tool'" in caught.value.message
