"""Agent frameworks on the server's tools (real engine, the embedded model): the OpenAI Agents
SDK runs an agent with a `function_tool` to a final output, on its chat-completions model and on
its Responses model. The run starts with `tool_choice="required"`; after the first call the SDK
resets it (`reset_tool_choice`, its default) so the model may answer.

LangChain and LiteLLM are not installed in this environment: their tests are not written yet.
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
