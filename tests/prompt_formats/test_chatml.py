"""ChatML, the embedded stand-in's own format: the same text as SmolLM2's chat template.

The template is read from the GGUF file the stand-in ships in and rendered with Jinja, as
transformers' `apply_chat_template` does, so the comparison is with the model's own template and
not with a copy of it.
"""

from __future__ import annotations

import jinja2
import pytest

from prompt_formats import get_format, shape_output
from prompt_formats.chatml import ChatMLFormat


@pytest.fixture(scope="module")
def smollm2_template() -> jinja2.Template:
    import gguf

    from server.engine.default_model import find_gguf

    field = gguf.GGUFReader(find_gguf()).fields["tokenizer.chat_template"]
    return jinja2.Environment().from_string(field.contents())


CONVERSATIONS = {
    "one question": [{"role": "user", "content": "What is the capital of France?"}],
    "a system message": [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Hello!"},
    ],
    "an empty system message": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}],
    "two exchanges": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6"},
        {"role": "user", "content": "And 4+4?\nThanks."},
    ],
}


@pytest.mark.parametrize("messages", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_the_prompt_is_what_the_models_own_template_renders(smollm2_template, messages):
    expected = smollm2_template.render(messages=messages, add_generation_prompt=True)
    assert get_format("chatml").render(messages) == expected


def test_the_extensions_go_into_the_last_user_turn():
    prompt = get_format("chatml").render(
        [{"role": "user", "content": "Reverse a string."}],
        plainformat=True,
        documents=[{"text": "Strings are immutable.", "metadata": {"source": "docs"}}],
    )
    assert prompt.endswith(
        "<|im_start|>user\nBEGININPUT\nBEGINCONTEXT\nsource: docs\nENDCONTEXT\nStrings are immutable.\n"
        "ENDINPUT\nBEGININSTRUCTION\nReverse a string. PLAINFORMAT\nENDINSTRUCTION<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_a_prefill_continues_the_assistant_turn():
    prompt = get_format("chatml").render(
        [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "1, 2,"}],
        continue_final_message=True,
    )
    assert prompt.endswith("<|im_start|>user\nCount.<|im_end|>\n<|im_start|>assistant\n1, 2,")


def test_a_reply_is_only_stripped_turn_words_are_text():
    # The model ends its turn with the <|im_end|> token, which the engine stops on; a word such as
    # "USER:" is its own text here, unlike in airoboros, where it starts a turn.
    shaper = ChatMLFormat().output_shaper()
    streamed = "".join(shaper.feed(delta) for delta in [" Paris", " is", " USER:"]) + shaper.finish()
    assert streamed == "Paris is USER:"
    assert shape_output(" Paris is ASSISTANT", headers=()) == "Paris is ASSISTANT"
    assert get_format("chatml").stops(["END"]) == ["END"]
