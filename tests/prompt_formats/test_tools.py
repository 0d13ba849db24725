"""Function tools in the prompt: the exact rendering, calls and results in history, fitting that
keeps a call with its result, the answer schemas, and reading calls back from any split."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prompt_formats import (
    AnswerDelta,
    ArgumentsDelta,
    CallStarted,
    ContextLengthExceeded,
    PromptFormatError,
    ToolChoice,
    ToolOutputReader,
    get_format,
    parse_tool_choice,
    parse_tools,
    tools_schema,
)
from prompt_formats.airoboros import DEFAULT_SYSTEM

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city."},
                "unit": {"enum": ["c", "f"]},
                "where": {"type": "object", "properties": {"lat": {"type": "number"}}},
            },
            "required": ["city"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "now"}}

TOOLS_BLOCK = (
    "As an AI assistant, please select the most suitable function and parameters from the list of "
    "available functions below, based on the user's input. Provide your response in JSON format: "
    'a list of calls [{"name": "<function>", "arguments": {<parameters>}}], or {"answer": "<text>"} '
    "to answer without a function.\n"
    "\n"
    "Available functions:\n"
    "get_weather:\n"
    "  description: Current weather of a city.\n"
    "  parameters:\n"
    "    city: The city. (string, required)\n"
    '    unit: (one of "c", "f")\n'
    "    where: (object)\n"
    "      lat: (number)\n"
    "now:"
)
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
CHAT_WITH_RESULT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 20}'},
]


def tools():
    return parse_tools([WEATHER, CLOCK])


# --- the exact strings -------------------------------------------------------------------------


def test_airoboros_renders_tools_after_the_system_text_and_calls_and_results_in_order():
    prompt = get_format("airoboros").render(CHAT_WITH_RESULT, tools=tools())
    assert prompt == (
        f"{DEFAULT_SYSTEM}\n\n{TOOLS_BLOCK} USER: Weather in Paris? "
        'ASSISTANT: [{"name": "get_weather", "arguments": {"city": "Paris"}}]</s>'
        'USER: Function get_weather returned: {"temp": 20} ASSISTANT: '
    )


def test_chatml_renders_the_same_block_in_its_system_turn():
    prompt = get_format("chatml").render(
        [{"role": "system", "content": "Be brief."}, *CHAT_WITH_RESULT], tools=tools()
    )
    assert prompt == (
        f"<|im_start|>system\nBe brief.\n\n{TOOLS_BLOCK}<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|im_end|>\n'
        '<|im_start|>user\nFunction get_weather returned: {"temp": 20}<|im_end|>\n'
        "<|im_start|>assistant\n"
    )


def test_parallel_calls_with_content_then_results_then_a_user_message_merge_as_one_user_turn():
    second = {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "Weather and time?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [CALL, second]},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "Thanks, and?"},
    ]
    prompt = get_format("airoboros").render(messages)
    assert prompt == (
        f"{DEFAULT_SYSTEM} USER: Weather and time? ASSISTANT: Checking.\n"
        '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "now", "arguments": {}}]</s>'
        "USER: Function now returned: noon\nFunction get_weather returned: sunny\nThanks, and? ASSISTANT: "
    )


def test_tool_choice_none_renders_no_tools_but_keeps_the_history():
    without = get_format("airoboros").render(CHAT_WITH_RESULT)
    assert "Available functions" not in without
    assert "Function get_weather returned" in without


def test_an_empty_system_text_leaves_only_the_tools():
    prompt = get_format("airoboros").render([{"role": "system", "content": ""}, *CHAT_WITH_RESULT], tools=tools())
    assert prompt.startswith(f"{TOOLS_BLOCK} USER: ")


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        ([{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_1", "content": "x"}], "unexpected_tool_message"),
        ([*CHAT_WITH_RESULT, {"role": "tool", "tool_call_id": "call_1", "content": "again"}], "unexpected_tool_message"),
        ([CHAT_WITH_RESULT[0], CHAT_WITH_RESULT[1], {"role": "user", "content": "hm"},
          {"role": "tool", "tool_call_id": "call_1", "content": "late"}], "unexpected_tool_message"),
        ([CHAT_WITH_RESULT[0], {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "x", "arguments": "{not json"}}]},
          {"role": "user", "content": "?"}], "invalid_tool_calls"),
        ([CHAT_WITH_RESULT[0], {"role": "assistant", "content": None, "function_call": {"name": "x"}},
          {"role": "user", "content": "?"}], "unsupported_tool_calls"),
    ],
)
def test_misplaced_results_and_malformed_calls_are_refused(messages, code):
    with pytest.raises(PromptFormatError) as caught:
        get_format("airoboros").render(messages)
    assert caught.value.code == code
    assert caught.value.param == "messages"


@pytest.mark.parametrize(
    ("tools_field", "code", "quoted"),
    [
        ([{"type": "web_search"}], "unsupported_tool_type", "'web_search'"),
        ([{"type": "function", "function": {"name": "bad name"}}], "invalid_tools", "'bad name'"),
        ([CLOCK, CLOCK], "invalid_tools", "'now'"),
        ([{"type": "function", "function": {"name": "f", "parameters": "nope"}}], "invalid_tools", "parameters"),
    ],
)
def test_bad_tools_are_refused_naming_what_is_wrong(tools_field, code, quoted):
    with pytest.raises(PromptFormatError) as caught:
        parse_tools(tools_field)
    assert (caught.value.code, caught.value.param) == (code, "tools")
    assert quoted in caught.value.message


def test_tool_choice_modes_and_an_unknown_function():
    parsed = tools()
    assert parse_tool_choice(None, parsed) == ToolChoice("auto")
    assert parse_tool_choice(None, ()) == ToolChoice("none")
    assert parse_tool_choice("required", parsed) == ToolChoice("required")
    assert parse_tool_choice({"type": "function", "function": {"name": "now"}}, parsed) == ToolChoice("named", "now")
    assert parse_tool_choice({"type": "function", "name": "now"}, parsed) == ToolChoice("named", "now")
    with pytest.raises(PromptFormatError) as caught:
        parse_tool_choice({"type": "function", "function": {"name": "fly"}}, parsed)
    assert (caught.value.code, caught.value.param) == ("unknown_tool", "tool_choice")
    assert "'fly'" in caught.value.message
    with pytest.raises(PromptFormatError):
        parse_tool_choice("required", ())


# --- fitting keeps a call with its result -----------------------------------------------------------


def word_count(text: str) -> list[int]:
    return [0] * len(text.split())


def long_chat_with_calls(turns: int) -> list[dict]:
    messages: list[dict] = []
    for turn in range(turns):
        call = {"id": f"call_{turn}", "type": "function", "function": {"name": "now", "arguments": "{}"}}
        messages += [
            {"role": "user", "content": f"question {turn} " + "word " * 20},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{turn}", "content": f"result{turn} " * 20},
            {"role": "assistant", "content": "answer " * 20},
        ]
    return [*messages, {"role": "user", "content": "last"}]


@pytest.mark.parametrize("history", ["fit", "last"])
@pytest.mark.parametrize("budget", [80, 120, 200, 300, 400])
def test_fitting_never_keeps_a_result_without_its_call(history, budget):
    fmt = get_format("airoboros")
    fitted = fmt.render_fitted(long_chat_with_calls(6), tokenize=word_count, max_prompt_tokens=budget, history=history)
    assert len(fitted.prompt.split()) <= budget
    # A turn's call is kept exactly when its result is, and the first kept turn is never a result.
    for turn in range(6):
        assert (f"question {turn} " in fitted.prompt) == (f"result{turn}" in fitted.prompt)
    after_system = fitted.prompt.split(" USER: ", 1)[1]
    assert not after_system.startswith("Function now returned")
    assert fitted.prompt.count("Function now returned") == fitted.prompt.count('[{"name": "now"')
    assert fitted.dropped_messages % 4 == 0


def test_a_chat_whose_only_droppable_point_parts_a_call_fails_rather_than_parting_it():
    messages = CHAT_WITH_RESULT  # the last user turn is the result: its call must stay
    with pytest.raises(ContextLengthExceeded):
        get_format("airoboros").render_fitted(messages, tokenize=word_count, max_prompt_tokens=20, history="last")


# --- the answer schemas -------------------------------------------------------------------------


def test_required_named_and_auto_schemas_accept_what_they_should():
    parsed = tools()
    call = [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}]
    required = tools_schema(parsed, ToolChoice("required"), parallel=True)
    jsonschema.validate(call, required)
    jsonschema.validate([*call, {"name": "now", "arguments": {}}], required)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "get_weather", "arguments": {"unit": "k"}}], required)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([], required)
    single = tools_schema(parsed, ToolChoice("required"), parallel=False)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([*call, *call], single)
    named = tools_schema(parsed, ToolChoice("named", "now"), parallel=True)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(call, named)
    auto = tools_schema(parsed, ToolChoice("auto"), parallel=True)
    jsonschema.validate({"answer": "hi"}, auto)
    jsonschema.validate(call, auto)
    assert tools_schema(parsed, ToolChoice("none"), parallel=True) is None


# --- reading the answer back --------------------------------------------------------------------------

OUTPUTS = [
    '[{"name": "get_weather", "arguments": {"city": "Pa\\"ris ]}", "n": [1, {"a": "}"}]}}, {"name": "now", "arguments": {}}]',
    '{"answer": "Hello \\u00e9 \\ud83d\\ude00 \\n done\\\\"}',
    '[{"name": "s", "arguments": "str,}"}]',
]


@settings(max_examples=200, deadline=None)
@given(output=st.sampled_from(OUTPUTS), cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=12))
def test_any_split_reads_the_same_as_the_whole(output, cuts):
    whole = ToolOutputReader()
    whole_events = whole.feed(output)
    reader, events, start = ToolOutputReader(), [], 0
    for cut in sorted(set(cuts)) + [len(output)]:
        events += reader.feed(output[start:cut])
        start = max(start, cut)
    assert [(c.name, c.arguments) for c in reader.calls] == [(c.name, c.arguments) for c in whole.calls]
    assert reader.answer == whole.answer
    for index, call in enumerate(reader.calls):
        assert "".join(e.text for e in events if isinstance(e, ArgumentsDelta) and e.index == index) == call.arguments
        assert [e for e in events if isinstance(e, CallStarted) and e.index == index] == [CallStarted(index, call.name)]
    assert "".join(e.text for e in events if isinstance(e, AnswerDelta)) == (whole.answer or "")
    assert [type(e) for e in whole_events if isinstance(e, CallStarted)] == [CallStarted] * len(whole.calls)


def test_the_reader_gives_raw_arguments_and_decoded_answers():
    reader = ToolOutputReader()
    reader.feed(OUTPUTS[0])
    assert [(c.name, json.loads(c.arguments)) for c in reader.calls] == [
        ("get_weather", {"city": 'Pa"ris ]}', "n": [1, {"a": "}"}]}),
        ("now", {}),
    ]
    assert reader.answer is None
    assert [call.complete for call in reader.calls] == [True, True]
    cut = ToolOutputReader()
    cut.feed(OUTPUTS[0][:-20])
    assert [call.complete for call in cut.calls] == [True, False]
    answer = ToolOutputReader()
    answer.feed(OUTPUTS[1])
    assert answer.answer == "Hello é 😀 \n done\\" and answer.calls == []


def test_the_api_doc_shows_the_exact_rendering():
    from tests.support.docs import section as doc_section

    section = doc_section("docs/api.md", "Tools").split("**The prompt.**", 1)[1]
    shown = section.split("```\n", 2)[1].removesuffix("\n")
    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city."},
                                                        "unit": {"enum": ["c", "f"]}}, "required": ["city"]},
    }}
    assert shown == get_format("airoboros").render(CHAT_WITH_RESULT, tools=parse_tools([weather]))
