"""The OpenAI Agents SDK (openai-agents) running agents against chatgen, through its Responses model (the SDK's
default) and its chat-completions model: a plain answer, a streamed run, and a function tool the SDK executes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    Model,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)

from tests.conftest import MODEL_NAME, Service
from tests.support.models import TOOLS_MODEL_NAME

pytestmark = pytest.mark.integration

# The SDK exports traces to OpenAI by default; there is no internet here, and nothing to trace.
set_tracing_disabled(True)
QUESTION = "What is the capital of France?"
MODELS: dict[str, Callable[[str, openai.AsyncOpenAI], Model]] = {
    "responses": OpenAIResponsesModel,
    "chat_completions": OpenAIChatCompletionsModel,
}


def model(kind: str, name: str, service: Service) -> Model:
    client = openai.AsyncOpenAI(api_key="unused", base_url=f"{service.http_base}/v1", max_retries=0, timeout=180)
    return MODELS[kind](name, client)


@pytest.mark.parametrize("kind", list(MODELS))
async def test_agent_answers_as_chat_does(service: Service, kind: str) -> None:
    agent = Agent(
        name="geographer",
        instructions="You answer questions about places.",
        model=model(kind, MODEL_NAME, service),
        model_settings=ModelSettings(temperature=0, max_tokens=16),
    )
    result = await Runner.run(agent, QUESTION)
    chat = service.openai().chat.completions.create(
        model=MODEL_NAME,
        messages=[
            {"role": "system", "content": "You answer questions about places."},
            {"role": "user", "content": QUESTION},
        ],
        max_tokens=16,
        temperature=0,
    )
    assert result.final_output == chat.choices[0].message.content and result.final_output


async def test_streamed_agent_run(service: Service) -> None:
    agent = Agent(
        name="geographer",
        model=model("responses", MODEL_NAME, service),
        model_settings=ModelSettings(temperature=0, max_tokens=12),
    )
    whole = await Runner.run(agent, QUESTION)
    run = Runner.run_streamed(agent, QUESTION)
    deltas = []
    async for event in run.stream_events():
        if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
            deltas.append(event.data.delta)  # type: ignore[union-attr]
    assert "".join(deltas) == run.final_output == whole.final_output and len(deltas) > 1


@pytest.mark.parametrize("kind", list(MODELS))
async def test_agent_runs_a_function_tool(tools_service: Service, kind: str) -> None:
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city.

        Args:
            city: The city.
        """
        calls.append(city)
        return f"sunny in {city}"

    agent: Agent[Any] = Agent(
        name="forecaster",
        model=model(kind, TOOLS_MODEL_NAME, tools_service),
        tools=[get_weather],
        # The scripted model calls get_weather whatever it is asked: the tool's result is the run's answer.
        tool_use_behavior="stop_on_first_tool",
        model_settings=ModelSettings(max_tokens=40),
    )
    result = await Runner.run(agent, "What is the weather in Paris?")
    assert calls == ["Paris"] and result.final_output == "sunny in Paris"
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item"]
