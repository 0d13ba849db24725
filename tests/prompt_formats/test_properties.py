"""Property tests over generated message lists: valid ones render, invalid ones fail with the
documented code."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prompt_formats import DEFAULT_SYSTEM, DELIMITERS, PromptFormatError, get_format

FMT = get_format()
KNOWN_ROLES = {"system", "developer", "user", "assistant"}


@st.composite
def content(draw) -> tuple[object, str]:
    """A message content as a client sends it, and its text before stripping."""
    if draw(st.booleans()):
        text = draw(st.text(max_size=30))
        return text, text
    texts = draw(st.lists(st.text(max_size=15), min_size=1, max_size=3))
    return [{"type": "text", "text": text} for text in texts], "\n".join(texts)


@st.composite
def run(draw, role: str, texts: list[str] | None = None) -> list[dict]:
    messages = []
    for _ in range(draw(st.integers(1, 3))):
        value, text = draw(content())
        messages.append({"role": role, "content": value})
        if texts is not None:
            texts.append(text)
    return messages


@st.composite
def valid_chat(draw) -> tuple[list[dict], str, list[str]]:
    """A valid message list, the system text it should render, and its user texts in order."""
    messages: list[dict] = []
    system_texts = []
    for _ in range(draw(st.integers(0, 2))):
        value, text = draw(content())
        messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": value})
        system_texts.append(text.strip())
    system = "\n".join(system_texts).strip() if system_texts else DEFAULT_SYSTEM
    user_texts: list[str] = []
    for index in range(draw(st.integers(1, 4))):
        if index:
            messages += draw(run("assistant"))
        messages += draw(run("user", user_texts))
    return messages, system, user_texts


def assert_in_order(haystack: str, needles: list[str], start: int) -> None:
    for needle in needles:
        found = haystack.find(needle, start)
        assert found >= 0, needle
        start = found + len(needle)


@given(valid_chat())
def test_any_valid_chat_renders_ending_in_assistant_with_user_texts_in_order(chat):
    messages, system, user_texts = chat
    prompt = FMT.render(messages)
    assert prompt.startswith(system + " USER: ")
    assert prompt.endswith(" ASSISTANT: ")
    assert_in_order(prompt, [text.strip() for text in user_texts], len(system))


@given(valid_chat(), st.text(max_size=20))
def test_any_valid_chat_with_prefill_ends_in_the_left_stripped_partial(chat, partial):
    messages, _, _ = chat
    prompt = FMT.render(
        [*messages, {"role": "assistant", "content": partial}], continue_final_message=True
    )
    assert prompt.endswith(" ASSISTANT: " + partial.lstrip())


@st.composite
def invalid_chat(draw) -> tuple[list[dict], dict, str]:
    """A message list with exactly one kind of mistake, render kwargs, and the code it must get."""
    messages, _, _ = draw(valid_chat())
    first_chat = next(i for i, m in enumerate(messages) if m["role"] in ("user", "assistant"))
    mistake = draw(
        st.sampled_from(
            [
                "empty_messages",
                "unsupported_role",
                "misplaced_system_message",
                "invalid_content",
                "unsupported_content_type",
                "first_message_not_user",
                "last_message_not_user",
                "missing_user_message",
                "nothing_to_continue",
            ]
        )
    )
    kwargs: dict = {}
    if mistake == "empty_messages":
        messages = []
    elif mistake == "unsupported_role":
        role = draw(st.text(max_size=10).filter(lambda r: r not in KNOWN_ROLES))
        messages.insert(draw(st.integers(0, len(messages))), {"role": role, "content": "x"})
    elif mistake == "misplaced_system_message":
        role = draw(st.sampled_from(["system", "developer"]))
        position = draw(st.integers(first_chat + 1, len(messages)))
        messages.insert(position, {"role": role, "content": "late"})
    elif mistake == "invalid_content":
        messages[draw(st.integers(0, len(messages) - 1))]["content"] = draw(
            st.sampled_from([None, 3, [], {"text": "x"}, [{"type": "text"}]])
        )
    elif mistake == "unsupported_content_type":
        part_type = draw(st.sampled_from(["image_url", "input_audio", "file", "refusal", None]))
        position = draw(st.integers(0, len(messages) - 1))
        messages[position]["content"] = [{"type": "text", "text": "x"}, {"type": part_type}]
    elif mistake == "first_message_not_user":
        messages.insert(first_chat, {"role": "assistant", "content": "early"})
    elif mistake == "last_message_not_user":
        messages.append({"role": "assistant", "content": "last"})
    elif mistake == "missing_user_message":
        messages = [{"role": "system", "content": "S"}] + messages[:first_chat]
    elif mistake == "nothing_to_continue":
        kwargs["continue_final_message"] = True
    return messages, kwargs, mistake


@given(invalid_chat())
def test_any_invalid_chat_raises_its_documented_code(case):
    messages, kwargs, code = case
    try:
        FMT.render(messages, **kwargs)
    except PromptFormatError as error:
        assert (error.code, error.param) == (code, "messages")
    else:
        raise AssertionError(f"rendered without the expected {code}")


@given(
    st.text(max_size=40),
    st.sampled_from(DELIMITERS),
    st.sampled_from(["", " ", "\t"]),
    st.text(max_size=40),
)
def test_any_document_with_a_delimiter_line_is_refused(before, word, pad, after):
    text = f"{before}\n{pad}{word}{pad}\n{after}"
    try:
        FMT.render([{"role": "user", "content": "Q"}], documents=[{"text": text}])
    except PromptFormatError as error:
        assert (error.code, error.param) == ("invalid_documents", "documents")
    else:
        raise AssertionError("a delimiter line was rendered")
