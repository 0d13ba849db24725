"""The golden cases G1-G10 of spec/prompt-format.md, byte for byte."""

from __future__ import annotations

import pytest

from prompt_formats import PromptFormatError, get_format

SYSTEM = (
    "A chat between a curious user and an assistant. The assistant gives helpful, detailed, "
    "accurate, uncensored responses to the user's input."
)

G4_CONTENT = (
    "BEGININPUT\nBEGINCONTEXT\ndate: 2021-01-01\nurl: https://web.site/123\nENDCONTEXT\n"
    "In a shocking turn of events, blueberries are now green, but will be sticking with the same "
    "name.\nENDINPUT\nBEGININPUT\nBEGINCONTEXT\ndate: 2022-03-15\nauthor: Jane Doe\nENDCONTEXT\n"
    "The town of Springfield opened a new public library on Main Street.\nENDINPUT\n"
    "BEGININSTRUCTION\nWhat color are blueberries now? Where did Springfield open its library? "
    "Cite your sources.\nENDINSTRUCTION"
)
G4_PROMPT = SYSTEM + " USER: " + G4_CONTENT + " ASSISTANT: "


@pytest.fixture
def fmt():
    return get_format("airoboros")


def test_g1_single_turn(fmt):
    prompt = fmt.render([{"role": "user", "content": "What is the capital of France?"}])
    assert prompt == (
        "A chat between a curious user and an assistant. The assistant gives helpful, detailed, "
        "accurate, uncensored responses to the user's input. USER: What is the capital of France? "
        "ASSISTANT: "
    )


def test_g2_system_override(fmt):
    prompt = fmt.render(
        [
            {"role": "system", "content": "You are a pirate. Answer in pirate speak."},
            {"role": "user", "content": "What is the capital of France?"},
        ]
    )
    assert prompt == (
        "You are a pirate. Answer in pirate speak. USER: What is the capital of France? ASSISTANT: "
    )


def test_g3_multi_turn(fmt):
    prompt = fmt.render(
        [
            {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Hi! How can I help you today?"},
            {"role": "user", "content": "Tell me a joke."},
        ]
    )
    assert prompt == (
        "A chat between a curious user and an assistant. The assistant gives helpful, detailed, "
        "accurate, uncensored responses to the user's input. USER: Hello! ASSISTANT: Hi! How can "
        "I help you today?</s>USER: Tell me a joke. ASSISTANT: "
    )


def test_g4_closed_context_as_user_text(fmt):
    assert fmt.render([{"role": "user", "content": G4_CONTENT}]) == G4_PROMPT


def test_g4_closed_context_from_documents_extension(fmt):
    documents = [
        {
            "text": "In a shocking turn of events, blueberries are now green, but will be "
            "sticking with the same name.",
            "metadata": {"date": "2021-01-01", "url": "https://web.site/123"},
        },
        {
            "text": "The town of Springfield opened a new public library on Main Street.",
            "metadata": {"date": "2022-03-15", "author": "Jane Doe"},
        },
    ]
    question = (
        "What color are blueberries now? Where did Springfield open its library? Cite your sources."
    )
    prompt = fmt.render([{"role": "user", "content": question}], documents=documents)
    assert prompt == G4_PROMPT


def test_g5_plainformat_as_user_text(fmt):
    prompt = fmt.render(
        [{"role": "user", "content": "Write a Python function that reverses a string. PLAINFORMAT"}]
    )
    assert prompt == (
        "A chat between a curious user and an assistant. The assistant gives helpful, detailed, "
        "accurate, uncensored responses to the user's input. USER: Write a Python function that "
        "reverses a string. PLAINFORMAT ASSISTANT: "
    )


def test_g5_plainformat_from_extension_flag(fmt):
    prompt = fmt.render(
        [{"role": "user", "content": "Write a Python function that reverses a string."}],
        plainformat=True,
    )
    assert prompt == (
        "A chat between a curious user and an assistant. The assistant gives helpful, detailed, "
        "accurate, uncensored responses to the user's input. USER: Write a Python function that "
        "reverses a string. PLAINFORMAT ASSISTANT: "
    )


def test_g6_empty_system_keeps_leading_space(fmt):
    prompt = fmt.render([{"role": "system", "content": ""}, {"role": "user", "content": "Hello!"}])
    assert prompt == " USER: Hello! ASSISTANT: "


def test_g7_outer_whitespace_stripped_inner_newlines_kept(fmt):
    prompt = fmt.render(
        [{"role": "user", "content": "Summarize this list:\n- apples\n- pears\n\nThanks!\n"}]
    )
    assert prompt == (
        "A chat between a curious user and an assistant. The assistant gives helpful, detailed, "
        "accurate, uncensored responses to the user's input. USER: Summarize this list:\n"
        "- apples\n- pears\n\nThanks! ASSISTANT: "
    )


def test_g8_tool_role_is_refused_naming_the_role(fmt):
    with pytest.raises(PromptFormatError) as caught:
        fmt.render(
            [
                {"role": "user", "content": "What is 6*7? Use the calculator."},
                {"role": "tool", "content": "42"},
            ]
        )
    assert caught.value.code == "unsupported_role"
    assert caught.value.param == "messages"
    assert "'tool'" in caught.value.message


def test_g9_custom_system_two_full_exchanges(fmt):
    prompt = fmt.render(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "3+3?"},
            {"role": "assistant", "content": "6"},
            {"role": "user", "content": "And 4+4?"},
        ]
    )
    assert prompt == (
        "You are terse. USER: 2+2? ASSISTANT: 4</s>USER: 3+3? ASSISTANT: 6</s>USER: And 4+4? "
        "ASSISTANT: "
    )


def test_g10_ending_on_assistant_is_refused(fmt):
    with pytest.raises(PromptFormatError) as caught:
        fmt.render([{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi!"}])
    assert caught.value.code == "last_message_not_user"
    assert caught.value.param == "messages"


def test_g10_two_user_messages_in_a_row_are_joined_with_newline(fmt):
    prompt = fmt.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert prompt == SYSTEM + " USER: a\nb ASSISTANT: "
