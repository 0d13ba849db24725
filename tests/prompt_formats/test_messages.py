"""Message rules R4-R7 and the prefill of R6: what renders, and each client mistake's code."""

from __future__ import annotations

import pytest

from prompt_formats import DEFAULT_SYSTEM, PromptFormatError, get_format


@pytest.fixture
def fmt():
    return get_format()


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text, role="system"):
    return {"role": role, "content": text}


def render_error(fmt, messages, **kwargs) -> PromptFormatError:
    with pytest.raises(PromptFormatError) as caught:
        fmt.render(messages, **kwargs)
    return caught.value


# --- R4: system and developer -------------------------------------------------------------


def test_developer_role_replaces_the_preamble_like_system(fmt):
    assert fmt.render([system("Be brief.", "developer"), user("Hi")]) == (
        "Be brief. USER: Hi ASSISTANT: "
    )


def test_leading_system_messages_are_joined_with_newline(fmt):
    prompt = fmt.render([system(" One. "), system("Two.", "developer"), user("Hi")])
    assert prompt == "One.\nTwo. USER: Hi ASSISTANT: "


def test_whitespace_only_system_counts_as_empty(fmt):
    assert fmt.render([system("  \n "), user("Hi")]) == " USER: Hi ASSISTANT: "


def test_system_after_the_conversation_began_is_misplaced(fmt):
    error = render_error(fmt, [user("Hi"), system("Now be rude."), user("Again")])
    assert (error.code, error.param) == ("misplaced_system_message", "messages")
    assert "messages[1]" in error.message


def test_developer_after_the_conversation_began_is_misplaced(fmt):
    error = render_error(fmt, [user("Hi"), assistant("Hello"), system("x", "developer"), user("y")])
    assert error.code == "misplaced_system_message"


# --- R5: roles ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["function", "ipython", "User"])
def test_unknown_role_is_refused_with_the_role_quoted(fmt, role):
    error = render_error(fmt, [user("Hi"), {"role": role, "content": "x"}, user("Go on")])
    assert (error.code, error.param) == ("unsupported_role", "messages")
    assert repr(role) in error.message


def test_a_legacy_function_call_is_refused_not_dropped(fmt):
    # tool_calls are rendered (tests/prompt_formats/test_tools.py); the legacy form is refused, never dropped.
    messages = [user("Hi"), {"role": "assistant", "content": None, "function_call": {"name": "f"}}, user("?")]
    assert render_error(fmt, messages).code == "unsupported_tool_calls"


def test_message_without_string_role_is_invalid(fmt):
    assert render_error(fmt, [{"content": "Hi"}]).code == "invalid_message"


def test_message_that_is_not_an_object_is_invalid(fmt):
    assert render_error(fmt, ["Hi"]).code == "invalid_message"


# --- R6: order, runs, prefill -------------------------------------------------------------


def test_empty_message_list_is_refused(fmt):
    assert render_error(fmt, []).code == "empty_messages"


def test_only_system_messages_is_missing_a_user_message(fmt):
    assert render_error(fmt, [system("You are terse.")]).code == "missing_user_message"


def test_conversation_starting_with_assistant_is_refused(fmt):
    error = render_error(fmt, [system("S"), assistant("Hello"), user("Hi")])
    assert error.code == "first_message_not_user"


def test_consecutive_assistant_messages_are_joined_with_newline(fmt):
    prompt = fmt.render([user("Q"), assistant("part one"), assistant(" part two "), user("More")])
    assert prompt.endswith(" USER: Q ASSISTANT: part one\npart two</s>USER: More ASSISTANT: ")


def test_prefill_continues_the_final_assistant_message(fmt):
    prompt = fmt.render([user("Count to 3."), assistant("1, 2,")], continue_final_message=True)
    assert prompt == DEFAULT_SYSTEM + " USER: Count to 3. ASSISTANT: 1, 2,"


def test_prefill_keeps_its_trailing_whitespace_but_not_its_leading(fmt):
    prompt = fmt.render(
        [user("Write code."), assistant("  ```python\n")], continue_final_message=True
    )
    assert prompt.endswith(" ASSISTANT: ```python\n")


def test_prefill_after_earlier_exchanges_has_no_end_of_reply(fmt):
    prompt = fmt.render(
        [user("a"), assistant("b"), user("c"), assistant("d")], continue_final_message=True
    )
    assert prompt.endswith(" USER: a ASSISTANT: b</s>USER: c ASSISTANT: d")


def test_continue_final_message_with_final_user_message_is_refused(fmt):
    error = render_error(fmt, [user("Hi")], continue_final_message=True)
    assert error.code == "nothing_to_continue"


# --- R7: content --------------------------------------------------------------------------


def test_text_parts_are_joined_with_newline(fmt):
    content = [{"type": "text", "text": "Line one"}, {"type": "text", "text": "line two "}]
    assert fmt.render([user(content)]).endswith(" USER: Line one\nline two ASSISTANT: ")


def test_text_parts_work_for_system_messages(fmt):
    prompt = fmt.render([system([{"type": "text", "text": "Be kind."}]), user("Hi")])
    assert prompt == "Be kind. USER: Hi ASSISTANT: "


@pytest.mark.parametrize("part_type", ["image_url", "input_audio", "file"])
def test_non_text_part_is_refused(fmt, part_type):
    content = [{"type": "text", "text": "Look:"}, {"type": part_type, part_type: {}}]
    error = render_error(fmt, [user(content)])
    assert (error.code, error.param) == ("unsupported_content_type", "messages")
    assert repr(part_type) in error.message


def test_null_user_content_is_invalid(fmt):
    assert render_error(fmt, [user(None)]).code == "invalid_content"


def test_missing_content_is_invalid(fmt):
    assert render_error(fmt, [{"role": "user"}]).code == "invalid_content"


def test_null_assistant_content_without_tool_calls_is_invalid(fmt):
    assert render_error(fmt, [user("a"), assistant(None), user("b")]).code == "invalid_content"


def test_empty_part_list_is_invalid(fmt):
    assert render_error(fmt, [user([])]).code == "invalid_content"


def test_text_part_without_string_text_is_invalid(fmt):
    assert render_error(fmt, [user([{"type": "text", "text": 5}])]).code == "invalid_content"


def test_non_text_content_value_is_invalid(fmt):
    assert render_error(fmt, [user(42)]).code == "invalid_content"


def test_name_field_is_ignored(fmt):
    named = {"role": "user", "content": "Hi", "name": "alice"}
    assert fmt.render([named]) == fmt.render([user("Hi")])


def test_per_message_error_wins_over_ordering_error(fmt):
    # A tool message answering no call, then an assistant start: the tool message is reported.
    error = render_error(fmt, [user("Hi"), {"role": "tool", "content": "42"}, {"role": "assistant", "content": "x"}])
    assert error.code == "unexpected_tool_message"


# --- R12: plainformat ---------------------------------------------------------------------


def test_plainformat_is_not_doubled(fmt):
    prompt = fmt.render([user("Reverse a string. PLAINFORMAT")], plainformat=True)
    assert prompt.endswith(" USER: Reverse a string. PLAINFORMAT ASSISTANT: ")


def test_plainformat_applies_to_the_last_user_message_only(fmt):
    prompt = fmt.render([user("a"), assistant("b"), user("c")], plainformat=True)
    assert prompt.endswith(" USER: a ASSISTANT: b</s>USER: c PLAINFORMAT ASSISTANT: ")
