"""The one validation layer: every check a request gets before it is rendered, with the field it names."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format

from chatgen.chat.validation import MAX_N, ServedModel, validate_chat, validate_completion
from chatgen.chat.validation.sampling import SCALAR_FIELDS
from chatgen.engine.base import SamplingOptions
from chatgen.errors import ApiError, Failure
from chatgen.v1 import chatgen_pb2 as pb

MODEL = ServedModel("m", "vllm", tool_parser=False)
ASK = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}


def chat(**fields: Any) -> pb.CreateChatCompletionRequest:
    return json_format.ParseDict({"model": "m", "messages": ASK, **fields}, pb.CreateChatCompletionRequest())


def completion(**fields: Any) -> pb.CreateCompletionRequest:
    return json_format.ParseDict({"model": "m", "prompt": "p", **fields}, pb.CreateCompletionRequest())


CHAT_ERRORS: list[tuple[dict[str, Any], Failure, str]] = [
    ({"model": ""}, Failure.INVALID_REQUEST, "model"),
    ({"model": "other"}, Failure.MODEL_NOT_FOUND, "model"),
    ({"messages": []}, Failure.INVALID_REQUEST, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, Failure.INVALID_REQUEST, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, Failure.INVALID_REQUEST, "messages[0].content"),
    ({"messages": [{"role": "user", "content": None}]}, Failure.INVALID_REQUEST, "messages[0].content"),
    ({"messages": [{"role": "assistant"}]}, Failure.INVALID_REQUEST, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 3}]}, Failure.INVALID_REQUEST, "messages[0].content"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        Failure.INVALID_REQUEST,
        "messages[0].content[0]",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        Failure.INVALID_REQUEST,
        "messages[0].content[0].text",
    ),
    ({"messages": [{"role": "tool", "content": "42"}]}, Failure.INVALID_REQUEST, "messages[0].tool_call_id"),
    (
        {"messages": [{"role": "user", "content": "x", "tool_calls": [{"id": "a", "function": {"name": "f"}}]}]},
        Failure.INVALID_REQUEST,
        "messages[0].tool_calls",
    ),
    (
        {"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {}}]}]},
        Failure.INVALID_REQUEST,
        "messages[0].tool_calls[0].function.name",
    ),
    ({"temperature": 2.5}, Failure.INVALID_REQUEST, "temperature"),
    ({"top_p": 0}, Failure.INVALID_REQUEST, "top_p"),
    ({"top_k": -2}, Failure.INVALID_REQUEST, "top_k"),
    ({"min_p": 1.5}, Failure.INVALID_REQUEST, "min_p"),
    ({"presence_penalty": -3}, Failure.INVALID_REQUEST, "presence_penalty"),
    ({"frequency_penalty": 3}, Failure.INVALID_REQUEST, "frequency_penalty"),
    ({"repetition_penalty": 1.4e-45}, Failure.INVALID_REQUEST, "repetition_penalty"),
    ({"max_tokens": 0}, Failure.INVALID_REQUEST, "max_tokens"),
    ({"max_completion_tokens": -1}, Failure.INVALID_REQUEST, "max_tokens"),
    ({"n": 0}, Failure.INVALID_REQUEST, "n"),
    ({"n": MAX_N + 1}, Failure.INVALID_REQUEST, "n"),
    ({"stop": ["a", 1]}, Failure.INVALID_REQUEST, "stop[1]"),
    ({"stop": {"a": 1}}, Failure.INVALID_REQUEST, "stop"),
    ({"stop_token_ids": [-1]}, Failure.INVALID_REQUEST, "stop_token_ids[0]"),
    ({"allowed_token_ids": [3, -1]}, Failure.INVALID_REQUEST, "allowed_token_ids[1]"),
    ({"min_tokens": -1}, Failure.INVALID_REQUEST, "min_tokens"),
    ({"min_tokens": 9, "max_completion_tokens": 8}, Failure.INVALID_REQUEST, "min_tokens"),
    ({"cache_salt": "a@b"}, Failure.INVALID_REQUEST, "cache_salt"),
    ({"stream_interval": 0}, Failure.INVALID_REQUEST, "stream_interval"),
    ({"stream_interval": 1025}, Failure.INVALID_REQUEST, "stream_interval"),
    ({"stream_interval_ms": -1}, Failure.INVALID_REQUEST, "stream_interval_ms"),
    ({"stream_interval_ms": 60_001}, Failure.INVALID_REQUEST, "stream_interval_ms"),
    ({"continue_final_message": True}, Failure.INVALID_REQUEST, "continue_final_message"),
    ({"truncate_prompt_tokens": 0}, Failure.INVALID_REQUEST, "truncate_prompt_tokens"),
    ({"truncate_prompt_tokens": -2}, Failure.INVALID_REQUEST, "truncate_prompt_tokens"),
    ({"truncate_prompt_tokens": 5, "truncation_side": "middle"}, Failure.INVALID_REQUEST, "truncation_side"),
    ({"truncation_side": "left"}, Failure.INVALID_REQUEST, "truncation_side"),
    (
        {
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hel"}],
            "continue_final_message": True,
            "add_generation_prompt": True,
        },
        Failure.INVALID_REQUEST,
        "continue_final_message",
    ),
    (
        {"tools": [TOOL], "tool_choice": "required", "structured_outputs": {"regex": "a+"}},
        Failure.UNSUPPORTED,
        "structured_outputs",
    ),
    ({"logit_bias": {"x": 1}}, Failure.INVALID_REQUEST, "logit_bias.x"),
    ({"logit_bias": {"5": 101}}, Failure.INVALID_REQUEST, "logit_bias.5"),
    ({"top_logprobs": 2}, Failure.INVALID_REQUEST, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, Failure.INVALID_REQUEST, "top_logprobs"),
    ({"tools": [{"type": "function", "function": {}}]}, Failure.INVALID_REQUEST, "tools[0]"),
    ({"tools": [TOOL]}, Failure.UNSUPPORTED, "tools"),
    ({"tool_choice": "sometimes"}, Failure.INVALID_REQUEST, "tool_choice"),
    ({"tool_choice": "required"}, Failure.INVALID_REQUEST, "tool_choice"),
    (
        {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "later"}}},
        Failure.INVALID_REQUEST,
        "tool_choice",
    ),
    (
        {"tools": [TOOL], "tool_choice": "required", "response_format": {"type": "json_object"}},
        Failure.UNSUPPORTED,
        "response_format",
    ),
    ({"response_format": {"type": "xml"}}, Failure.INVALID_REQUEST, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, Failure.INVALID_REQUEST, "response_format.json_schema.schema"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
        Failure.INVALID_REQUEST,
        "response_format.json_schema.schema",
    ),
    (
        {"chat_template_kwargs": {"add_generation_prompt": False}},
        Failure.INVALID_REQUEST,
        "chat_template_kwargs.add_generation_prompt",
    ),
    ({"stream": True}, Failure.INVALID_REQUEST, "stream"),
    ({"stream_options": {"include_usage": True}}, Failure.INVALID_REQUEST, "stream_options"),
]


@pytest.mark.parametrize(
    ("fields", "failure", "param"), CHAT_ERRORS, ids=[json.dumps(f)[:60] for f, _, _ in CHAT_ERRORS]
)
def test_chat_errors_name_their_field(fields: dict[str, Any], failure: Failure, param: str) -> None:
    with pytest.raises(ApiError) as info:
        validate_chat(chat(**fields), MODEL, streaming=False)
    assert (info.value.failure, info.value.param) == (failure, param), info.value.message


@pytest.mark.parametrize(
    ("served", "fields", "failure", "param"),
    [
        (ServedModel("m", "hf", logprobs=False), {"logprobs": True}, Failure.UNSUPPORTED, "logprobs"),
        (ServedModel("m", "vllm", max_choices=4), {"n": 5}, Failure.UNSUPPORTED, "n"),
        (ServedModel("m", "vllm", chat_template=False), {}, Failure.NO_CHAT_TEMPLATE, "messages"),
    ],
)
def test_chat_errors_that_depend_on_the_deployment(
    served: ServedModel, fields: dict[str, Any], failure: Failure, param: str
) -> None:
    with pytest.raises(ApiError) as info:
        validate_chat(chat(**fields), served, streaming=False)
    assert (info.value.failure, info.value.param) == (failure, param)


def test_a_valid_chat_request_becomes_its_plan() -> None:
    request = chat(
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
            {"role": "user", "content": "q", "name": "bob"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "now", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "noon"},
        ],
        max_tokens=5,
        max_completion_tokens=7,
        temperature=0,
        seed=3,
        stop="END",
        n=2,
        logprobs=True,
        enable_thinking=False,
        chat_template_kwargs={"thinking": True},
        stream_options={"include_usage": True},
        request_id="r1",
    )
    plan = validate_chat(request, MODEL, streaming=True)
    assert [(m.role, m.content, m.name) for m in plan.messages] == [
        ("system", "be brief", None),
        ("user", "q", "bob"),
        ("assistant", "", None),
        ("tool", "noon", None),
    ]
    assert plan.messages[2].tool_calls[0].name == "now" and plan.messages[3].tool_call_id == "c1"
    assert plan.sampling.max_tokens == 7  # max_completion_tokens wins
    assert plan.sampling.n == 2
    options = plan.sampling.to_options(room=100)
    assert options.max_tokens == 7
    assert options.temperature == 0.0  # present-but-zero is not "unset"
    assert options.top_p == SamplingOptions.top_p  # unset: the engine's default
    assert (options.seed, options.stop, options.logprobs) == (3, ("END",), 0)
    assert plan.template_variables == {"thinking": True, "enable_thinking": False}
    assert (plan.include_usage, plan.request_id, plan.forced) == (True, "r1", None)


def test_max_tokens_left_to_the_context() -> None:
    plan = validate_chat(chat(), MODEL, streaming=False)
    assert plan.sampling.max_tokens is None
    assert plan.sampling.to_options(room=1234).max_tokens == 1234


def test_forced_tools_build_the_call_schema() -> None:
    named = validate_chat(
        chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "now"}}), MODEL, False
    )
    assert named.forced is not None and named.forced.function == "now"
    named_constraint = named.sampling.to_options(1).constraint
    assert named_constraint is not None and named_constraint.kind == "json"
    assert json.loads(named_constraint.text) == {"type": "object"}
    required = validate_chat(chat(tools=[TOOL], tool_choice="required", parallel_tool_calls=False), MODEL, False)
    required_constraint = required.sampling.to_options(1).constraint
    assert required_constraint is not None
    schema = json.loads(required_constraint.text)
    assert (schema["type"], schema["minItems"], schema["maxItems"]) == ("array", 1, 1)
    assert required.max_tool_calls == 1
    none = validate_chat(chat(tools=[TOOL], tool_choice="none"), MODEL, False)
    assert none.template_tools is None and not none.parses_tool_calls


def test_the_sampling_field_list_is_the_engines() -> None:
    assert set(SCALAR_FIELDS) == {
        "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
        "seed", "ignore_eos", "skip_special_tokens", "min_tokens", "cache_salt", "prompt_logprobs", "priority",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": ["a", ""]}, "prompt[1]"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a", [1]]}, "prompt"),
        ({"prompt": [1, 2.5]}, "prompt[1]"),
        ({"prompt": [[1], [-1]]}, "prompt[1][0]"),
        ({"prompt": [[1], []]}, "prompt[1]"),
        ({"prompt": [{"text": "a"}]}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"logprobs": 21}, "logprobs"),
        ({"n": 0}, "n"),
        ({"stop": [1]}, "stop[0]"),
        ({"model": "x"}, "model"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream_interval": -4}, "stream_interval"),
    ],
)
def test_completion_errors_name_their_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as info:
        validate_completion(completion(**fields), MODEL, streaming=False)
    assert info.value.param == param


@pytest.mark.parametrize(
    ("prompt", "prompts"),
    [
        ("a", ("a",)),
        (["a", "b"], ("a", "b")),
        ([1, 2, 3], ((1, 2, 3),)),
        ([[1, 2], [3]], ((1, 2), (3,))),
    ],
)
def test_every_prompt_shape_openai_takes(prompt: Any, prompts: tuple[Any, ...]) -> None:
    assert validate_completion(completion(prompt=prompt), MODEL, streaming=False).prompts == prompts


def test_a_batch_is_bounded_by_the_choices_the_server_runs() -> None:
    model = ServedModel("m", "vllm", max_choices=4)
    assert len(validate_completion(completion(prompt=["a", "b"], n=2), model, streaming=False).prompts) == 2
    with pytest.raises(ApiError) as info:
        validate_completion(completion(prompt=["a", "b", "c"], n=2), model, streaming=False)
    assert (info.value.failure, info.value.param) == (Failure.UNSUPPORTED, "prompt")


def test_a_valid_completion_request_becomes_its_plan() -> None:
    plan = validate_completion(completion(prompt=["once"], echo=True, logprobs=2, max_tokens=4), MODEL, streaming=False)
    assert (plan.prompts, plan.echo, plan.sampling.max_tokens) == (("once",), True, 4)
    assert plan.sampling.to_options(10).logprobs == 2


def test_the_stream_interval_is_the_servers_raised_by_the_requests() -> None:
    from chatgen.chat.coalescing import StreamInterval

    server = ServedModel("m", "vllm", stream_interval=StreamInterval(4, 20))
    plans = [
        validate_chat(chat(**fields), server, streaming=True).sampling
        for fields in ({}, {"stream_interval": 16}, {"stream_interval": 2, "stream_interval_ms": 100})
    ]
    assert [p.interval for p in plans] == [StreamInterval(4, 20), StreamInterval(16, 20), StreamInterval(4, 100)]
    # With a time bound the engine sends every token, for the chat layer to watch the clock.
    assert {p.to_options(10).stream_interval for p in plans} == {1}
    counted = validate_completion(completion(stream_interval=8), MODEL, streaming=True).sampling
    assert (counted.interval, counted.to_options(10).stream_interval) == (StreamInterval(8), 8)
    # A unary call takes the field and has nothing to coalesce, as vLLM ignores it there.
    assert validate_chat(chat(stream_interval=8), MODEL, streaming=False).sampling.interval == StreamInterval(8)


def test_template_options_and_echo() -> None:
    partial = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hel"}]
    plan = validate_chat(chat(messages=partial, continue_final_message=True, echo=True), MODEL, streaming=False)
    assert (plan.add_generation_prompt, plan.continue_final_message, plan.echo) == (False, True, "Hel")
    # echo repeats only an assistant's message; the default renders the generation prompt.
    plain = validate_chat(chat(echo=True), MODEL, streaming=False)
    assert (plain.add_generation_prompt, plain.continue_final_message, plain.echo) == (True, False, "")
    bare = validate_chat(chat(add_generation_prompt=False, add_special_tokens=True), MODEL, streaming=False)
    assert (bare.add_generation_prompt, bare.add_special_tokens) == (False, True)


def test_truncation_keeps_the_side_asked_for() -> None:
    plan = validate_completion(completion(truncate_prompt_tokens=3, truncation_side="left"), MODEL, streaming=False)
    truncation = plan.sampling.truncation
    assert truncation is not None
    assert truncation.apply([1, 2, 3, 4, 5], room=100, default_side="right") == [3, 4, 5]
    assert truncation.apply([1, 2], room=100, default_side="right") == [1, 2]
    right = validate_completion(completion(truncate_prompt_tokens=-1), MODEL, streaming=False).sampling.truncation
    assert right is not None and right.apply([1, 2, 3, 4], room=2, default_side="right") == [1, 2]
