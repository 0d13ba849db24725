"""The rendered prompts as the GPT-NeoX-20B tokenizer (MPT-30B's) sees them: R2, R3, R8, R9."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from prompt_formats import get_format

G1 = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def neox_tokenize(neox_tokenizer_file):
    tokenizer = Tokenizer.from_file(str(neox_tokenizer_file))
    return lambda text: tokenizer.encode(text, add_special_tokens=False).ids


def test_g1_is_44_tokens_ending_in_assistant_colon_space(neox_tokenize):
    ids = neox_tokenize(get_format().render(G1))
    assert len(ids) == 44
    assert ids[-5:] == [21893, 6905, 5656, 27, 209]


def test_render_fitted_returns_the_ids_of_the_whole_prompt_without_bos(neox_tokenize):
    fitted = get_format().render_fitted(G1, tokenize=neox_tokenize, max_prompt_tokens=8192)
    assert fitted.token_ids == neox_tokenize(fitted.prompt)
    assert len(fitted.token_ids) == 44
    assert fitted.token_ids[0] != 0  # no <|endoftext|> BOS by default (R9)
    assert fitted.dropped_messages == 0


def test_end_of_reply_is_plain_text_followed_by_user(neox_tokenize):
    prompt = get_format().render(
        [
            {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Hi there"},
            {"role": "user", "content": "Bye."},
        ]
    )
    ids = neox_tokenize(prompt)
    start = ids.index(870)
    assert ids[start : start + 5] == [870, 84, 31, 23131, 27]  # "</s>" "USER" ":"


def test_empty_system_prompt_starts_with_space_user_tokens(neox_tokenize):
    prompt = get_format().render(
        [{"role": "system", "content": ""}, {"role": "user", "content": "Hello!"}]
    )
    assert neox_tokenize(prompt)[:3] == [1982, 947, 27]  # " US" "ER" ":" as in training (R8)
