"""Agent frameworks on the server's tools (real engine, the embedded model): the OpenAI Agents
SDK runs an agent with a `function_tool` to a final output, on its chat-completions model and on
its Responses model. The run starts with `tool_choice="required"`; after the first call the SDK
resets it (`reset_tool_choice`, its default) so the model may answer. LangChain's `bind_tools`
with `tool_choice="any"` gets `tool_calls` with parsed arguments, and LiteLLM's `completion`
with `tools` gets the call in OpenAI's shape.
"""

from __future__ import annotations

import asyncio

import openai
import pytest

pytestmark = pytest.mark.engine


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
def test_an_agent_calls_its_function_tool_and_reaches_a_final_output(default_server, default_model_name, api):
    import agents  # openai-agents, a test dependency
    from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel
    from agents.models.openai_responses import OpenAIResponsesModel

    agents.set_tracing_disabled(True)  # traces would go to OpenAI's servers
    cities: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather of a city."""
        cities.append(city)
        return f"Sunny and 21 degrees in {city}."

    client = openai.AsyncOpenAI(base_url=default_server.openai_base_url, api_key="unused", max_retries=0)
    model_class = OpenAIChatCompletionsModel if api == "chat_completions" else OpenAIResponsesModel
    agent = agents.Agent(
        name="Forecaster",
        instructions="Look the weather up with the tool, then tell the user.",
        model=model_class(model=default_model_name, openai_client=client),
        tools=[get_weather],
        model_settings=agents.ModelSettings(
            tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=96,
        ),
    )
    result = asyncio.run(agents.Runner.run(agent, "What is the weather in Paris?", max_turns=6))
    assert cities, "the agent never called its tool"
    assert all(isinstance(city, str) for city in cities)
    assert isinstance(result.final_output, str) and result.final_output


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


def test_langchain_bind_tools_with_any_gets_parsed_tool_calls(default_server, default_model_name):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=default_model_name, base_url=default_server.openai_base_url, api_key="unused",
                      temperature=0, max_tokens=96, max_retries=0, timeout=300)
    reply = chat.bind_tools([WEATHER_TOOL], tool_choice="any").invoke("What is the weather in Paris?")
    assert reply.tool_calls, reply
    for call in reply.tool_calls:
        assert call["name"] == "get_weather" and call["id"].startswith("call_")
        assert set(call["args"]) == {"city", "unit"} and call["args"]["unit"] in {"celsius", "fahrenheit"}
    assert not reply.invalid_tool_calls


def test_litellm_completion_with_tools_gets_a_valid_call(default_server, default_model_name, monkeypatch):
    import json

    # LiteLLM fetches its model price list from GitHub at import unless told to use its own copy.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    reply = litellm.completion(
        model=f"openai/{default_model_name}", api_base=default_server.openai_base_url, api_key="unused",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=96,
        timeout=300, num_retries=0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls  # parallel_tool_calls=False: exactly one
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city", "unit"} and arguments["unit"] in {"celsius", "fahrenheit"}
