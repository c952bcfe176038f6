"""Property-based fuzzing (hypothesis) of the REST JSON and the gRPC messages against the real server.

Every run sends 1,600 generated inputs per engine (1,000 REST bodies, 600 gRPC payloads): malformed JSON, JSON of
the wrong shape, requests that are almost valid with odd values in any field, protobuf messages with
out-of-range fields and raw bytes that are not a protobuf at all. Whatever comes in: never a 5xx / INTERNAL /
UNKNOWN, always a well-formed reply or a well-formed OpenAI error, and the server healthy afterwards.

Generated requests always carry a small `max_tokens` (or an invalid one), so the valid ones finish in a few
tokens: what is under test is input handling, not generation.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chatgen.v1 import chatgen_pb2 as pb
from tests.conftest import MODEL_NAME, Service
from tests.support.error_rows import observe

pytestmark = pytest.mark.integration

REST_EXAMPLES = 1000
GRPC_EXAMPLES = 600


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        # CI runs the same inputs every time (a red CI must mean a change broke something); runs elsewhere
        # explore new ones, and hypothesis's local database replays what failed before.
        derandomize=bool(os.environ.get("CI")),
        database=None if os.environ.get("CI") else settings.default.database,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )


# --- strategies -------------------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)  # fmt: skip


# Valid choices stop after a few tokens; everything else here is invalid in some way.
# (No null and no other number here: a request without a usable limit would generate up to the context length.)
max_tokens = st.one_of(
    st.integers(1, 3),
    st.integers(1, 3),
    st.sampled_from([0, -1, -(2**31), 2**31, 10**6, 2.5, 0.5, "3", "", True, [], {}]),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)


def _ascii(text: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() else "x" for c in text)


def _calls_on_assistant_turns(message: dict[str, Any]) -> dict[str, Any]:
    """Tool calls and reasoning only where they may be: on assistant turns."""
    if message["role"] == "assistant":
        return message
    return {k: v for k, v in message.items() if k not in ("tool_calls", "reasoning_content")}


def requests(odd: bool) -> tuple[st.SearchStrategy[dict[str, Any]], st.SearchStrategy[dict[str, Any]]]:
    """Chat and completion bodies. odd: any field may hold anything at all (mostly rejected by type checks);
    otherwise fields hold values of the right type, in range or not, so more requests reach the model."""

    def text(max_size: int) -> st.SearchStrategy[str]:
        # Typed bodies carry no NUL (a 400 by rule, which test_hostile_input tests), so that as many as before
        # reach the model.
        strings = st.text(max_size=max_size)
        return strings if odd else strings.map(lambda t: t.replace("\x00", " "))

    def odd_or(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(valid, valid, valid, json_values) if odd else valid

    numbers = st.one_of(st.floats(-3, 3), st.sampled_from([0, 1, -1e30, 1e30, 2.0000001])) if odd else st.floats(0, 1)
    limit = max_tokens if odd else st.one_of(st.integers(1, 3), st.sampled_from([1, 2, 3, 0, -1, 10**6]))
    roles = st.sampled_from(["system", "user", "assistant", "tool", "developer", "function", "", "User", "robot"])
    text_part = st.fixed_dictionaries({"type": st.just("text"), "text": text(max_size=40)})
    content_parts = st.lists(
        st.one_of(
            text_part,
            st.fixed_dictionaries(
                {"type": st.sampled_from(["image_url", "input_audio", "file"]), "image_url": json_values}
            ),
            json_values,
        ),
        max_size=3,
    )
    content = (
        st.one_of(text(max_size=60), content_parts, st.none(), json_values)
        if odd
        else st.one_of(text(max_size=60), text(max_size=60), st.lists(text_part, max_size=2), st.none())
    )
    # Valid messages have content (OpenAI requires it but on assistant turns that only call tools); the odd ones
    # may lack it.
    required = {"content": content} if not odd else {}
    message = st.fixed_dictionaries(
        {
            "role": odd_or(roles) if odd else st.sampled_from(["system", "user", "user", "assistant", "robot"]),
            **required,
        },
        optional={
            **({"content": content} if odd else {}),
            "name": odd_or(text(max_size=10)),
            "tool_call_id": odd_or(text(max_size=10)),
            "tool_calls": odd_or(
                st.lists(
                    st.fixed_dictionaries(
                        {
                            "id": text(max_size=5),
                            "type": st.just("function"),
                            "function": st.fixed_dictionaries(
                                {"name": text(max_size=8), "arguments": text(max_size=9)}
                            ),
                        }
                    ),
                    max_size=2,
                )
            ),
            "reasoning_content": odd_or(text(max_size=20)),
        },
    )
    if not odd:
        # Typed: tool calls and reasoning only on assistant turns (elsewhere a 400 the odd bodies still send), so
        # that a fair share of bodies reaches the model.
        message = message.map(_calls_on_assistant_turns)
    tool = st.fixed_dictionaries(
        {
            "type": odd_or(st.just("function")),
            "function": odd_or(
                st.fixed_dictionaries({"name": text(max_size=10)}, optional={"parameters": json_values})
            ),
        }
    )
    sampling = {
        "temperature": odd_or(numbers),
        "top_p": odd_or(numbers),
        "top_k": odd_or(st.integers(-3, 100)),
        "min_p": odd_or(numbers),
        "presence_penalty": odd_or(numbers),
        "frequency_penalty": odd_or(numbers),
        "repetition_penalty": odd_or(numbers),
        "seed": odd_or(st.integers(-(2**63), 2**64)),
        "stop": odd_or(st.one_of(text(max_size=5), st.lists(text(max_size=5), max_size=5))),
        "n": odd_or(st.integers(-2, 40)),
        "ignore_eos": odd_or(st.booleans()),
        "logit_bias": odd_or(st.dictionaries(st.integers(-5, 60000).map(str), numbers, max_size=3)),
        "stop_token_ids": odd_or(st.lists(st.integers(-5, 2**31), max_size=3)),
        "skip_special_tokens": odd_or(st.booleans()),
        # Typed: printable ASCII, as request ids must be (anything else is a 400, which odd bodies still send).
        "request_id": odd_or(text(max_size=20)) if odd else text(max_size=20).map(_ascii),
        "user": odd_or(text(max_size=10)),
        "stream": st.booleans(),
        "stream_options": odd_or(st.fixed_dictionaries({"include_usage": st.booleans()})),
        "response_format": odd_or(
            st.one_of(
                st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])}),
                st.fixed_dictionaries(
                    {
                        "type": st.just("json_schema"),
                        "json_schema": st.fixed_dictionaries(
                            {"name": text(max_size=5)}, optional={"schema": json_values}
                        ),
                    }
                ),
            )
        ),
        "some_unknown_field": json_values,
    }
    chat_bodies = st.fixed_dictionaries(
        {
            "model": odd_or(st.just(MODEL_NAME)),
            "messages": odd_or(st.lists(message, max_size=4)),
            "max_tokens": limit,
        },
        optional={
            **sampling,
            "max_completion_tokens": limit,
            "logprobs": odd_or(st.booleans()),
            "top_logprobs": odd_or(st.integers(-3, 30)),
            "tools": odd_or(st.lists(tool, max_size=2)),
            "tool_choice": odd_or(
                st.one_of(
                    st.sampled_from(["auto", "none", "required", "sometimes"]),
                    st.fixed_dictionaries(
                        {"type": st.just("function"), "function": st.fixed_dictionaries({"name": text(max_size=8)})}
                    ),
                )
            ),
            "parallel_tool_calls": odd_or(st.booleans()),
            "chat_template_kwargs": odd_or(st.dictionaries(text(max_size=15), json_values, max_size=3)),
            "enable_thinking": odd_or(st.booleans()),
        },
    )
    completion_bodies = st.fixed_dictionaries(
        {
            "model": odd_or(st.just(MODEL_NAME)),
            "prompt": odd_or(
                st.one_of(
                    text(max_size=80),
                    st.lists(text(max_size=10), max_size=3),
                    st.lists(st.integers(-5, 60000), max_size=5),
                )
            ),
            "max_tokens": limit,
        },
        optional={**sampling, "logprobs": odd_or(st.integers(-3, 30)), "echo": odd_or(st.booleans())},
    )
    return chat_bodies, completion_bodies


odd_chat_bodies, odd_completion_bodies = requests(odd=True)
typed_chat_bodies, typed_completion_bodies = requests(odd=False)
paths = st.sampled_from(["/v1/chat/completions", "/v1/completions"])


def raw_bytes() -> st.SearchStrategy[bytes]:
    """Bodies that are not valid JSON, or JSON of the wrong top-level shape."""
    return st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        json_values.map(lambda v: json.dumps(v).encode()),
        typed_chat_bodies.map(lambda b: json.dumps(b)[:-3].encode()),  # truncated
        st.just(b'{"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": NaN}'),
    )


def valid_requests() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """Bodies valid by construction, each answered 200 whatever hypothesis's example sequence is: the share of
    inputs that reach the model no longer depends on how many generated typed bodies happen to pass."""
    words = st.text(st.characters(categories=["L", "N", "P", "Zs"]), min_size=1, max_size=40)
    message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": words})
    sampling = {
        "temperature": st.floats(0, 1),
        "top_p": st.floats(0.05, 1),
        "seed": st.integers(0, 2**31),
        "stop": st.lists(words, max_size=2),
        "stream": st.booleans(),
        "user": words,
    }
    chat = st.fixed_dictionaries(
        {"model": st.just(MODEL_NAME), "messages": st.lists(message, min_size=1, max_size=3).map(
            lambda turns: [*turns, {"role": "user", "content": "Hi"}]
        ), "max_tokens": st.integers(1, 3)},
        optional={**sampling, "logprobs": st.booleans(), "enable_thinking": st.booleans()},
    )  # fmt: skip
    completion = st.fixed_dictionaries(
        {"model": st.just(MODEL_NAME), "prompt": words, "max_tokens": st.integers(1, 3)},
        optional={**sampling, "echo": st.booleans()},
    )
    return st.one_of(
        st.tuples(st.just("/v1/chat/completions"), chat), st.tuples(st.just("/v1/completions"), completion)
    )


def _as_case(must_succeed: bool) -> Any:
    return lambda case: (case[0], case[1] if isinstance(case[1], bytes) else json.dumps(case[1]).encode(), must_succeed)


# (path, body, must_succeed): must_succeed only for the bodies valid by construction.
rest_inputs = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), odd_chat_bodies),
    st.tuples(st.just("/v1/chat/completions"), typed_chat_bodies),
    st.tuples(st.just("/v1/completions"), odd_completion_bodies),
    st.tuples(st.just("/v1/completions"), typed_completion_bodies),
    st.tuples(paths, raw_bytes()),
).map(_as_case(False)) | valid_requests().map(_as_case(True))

# --- checks -----------------------------------------------------------------------------------------------------

SERVER_FAULTS = {"internal", "engine_unavailable"}


def check_error_body(body: bytes) -> None:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] not in SERVER_FAULTS, error


def check_rest_reply(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.content[:500])
    if response.status_code != 200:
        assert response.headers["content-type"].startswith("application/json")
        check_error_body(response.content)
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", response.text[-300:]
        for event in events[:-1]:
            chunk = json.loads(event)
            if "error" in chunk:
                assert chunk["error"]["code"] not in SERVER_FAULTS, chunk
            else:
                assert chunk["object"] in ("chat.completion.chunk", "text_completion")
        return
    reply = response.json()
    assert reply["object"] in ("chat.completion", "text_completion")
    assert len(reply["choices"]) >= 1 and reply["usage"]["completion_tokens"] >= 0


def assert_healthy(service: Service) -> None:
    with grpc.insecure_channel(service.grpc_address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    ok = httpx.post(
        f"{service.http_base}/v1/chat/completions",
        json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        timeout=120,
    )
    assert ok.status_code == 200
    assert service.process.poll() is None


# --- tests ------------------------------------------------------------------------------------------------------


def test_rest_fuzz(service: Service) -> None:
    statuses: collections.Counter[int] = collections.Counter()
    valid: collections.Counter[int] = collections.Counter()  # replies to the bodies valid by construction
    with httpx.Client(base_url=service.http_base, timeout=120) as http:

        @fuzz_settings(REST_EXAMPLES)
        @given(rest_inputs)
        # Found by fuzzing: characters the tokenizer drops entirely left an empty prompt (500 / 503).
        @example(
            ("/v1/completions", b'{"model": "%s", "prompt": "\\u0006", "max_tokens": 1}' % MODEL_NAME.encode(), False)
        )
        # ...and a denormal repetition_penalty overflowed HF's logits (503).
        @example(
            (
                "/v1/chat/completions",
                b'{"model": "%s", "messages": [{"role": "system"}], "max_tokens": 1, '
                b'"repetition_penalty": 1.401298464324817e-45}' % MODEL_NAME.encode(),
                False,
            )
        )
        def one(case: tuple[str, bytes, bool]) -> None:
            path, body, must_succeed = case
            response = http.post(path, content=body, headers={"content-type": "application/json"})
            statuses[response.status_code] += 1
            check_rest_reply(response)
            if must_succeed:
                valid[response.status_code] += 1

        one()
    print(f"REST fuzz statuses: {dict(statuses)}; valid by construction: {dict(valid)}")
    assert sum(statuses.values()) >= REST_EXAMPLES
    # The inputs reach past the JSON parser: a fair share is valid and generates, and many fail validation.
    # Every body valid by construction was served.
    assert set(valid) == {200} and valid[200] >= REST_EXAMPLES // 20, valid
    assert statuses[200] >= REST_EXAMPLES // 10, statuses
    assert statuses[400] >= REST_EXAMPLES // 4, statuses
    assert_healthy(service)
    # Nothing sent was answered as a server fault: the error table's "internal" row holds (it is never expected).
    observe("internal")


GRPC_OK_OR_CLIENT_FAULT = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

METHODS = {
    "chat": (
        "/chatgen.v1.ChatService/CreateChatCompletion",
        "/chatgen.v1.ChatService/StreamChatCompletion",
        pb.CreateChatCompletionRequest,
    ),
    "completion": (
        "/chatgen.v1.GenerateService/CreateCompletion",
        "/chatgen.v1.GenerateService/StreamCompletion",
        pb.CreateCompletionRequest,
    ),
}


def as_message(kind: str, body: dict[str, Any]) -> bytes | None:
    """The JSON body as the gRPC message, when it fits the proto's types at all (the odd values that do are
    the interesting ones); None when protobuf itself would refuse to build it."""
    try:
        return json_format.ParseDict(body, METHODS[kind][2](), ignore_unknown_fields=True).SerializeToString()
    except (json_format.ParseError, ValueError, TypeError, OverflowError, RecursionError):
        return None


grpc_inputs = st.one_of(
    st.tuples(st.just("chat"), odd_chat_bodies.map(lambda b: as_message("chat", b))),
    st.tuples(st.just("chat"), typed_chat_bodies.map(lambda b: as_message("chat", b))),
    st.tuples(st.just("completion"), odd_completion_bodies.map(lambda b: as_message("completion", b))),
    st.tuples(st.just("completion"), typed_completion_bodies.map(lambda b: as_message("completion", b))),
    st.tuples(st.sampled_from(["chat", "completion"]), st.binary(max_size=200)),  # not a protobuf, or a strange one
).filter(lambda case: case[1] is not None)


def test_grpc_fuzz(service: Service) -> None:
    codes: collections.Counter[grpc.StatusCode] = collections.Counter()
    with grpc.insecure_channel(service.grpc_address) as channel:

        @fuzz_settings(GRPC_EXAMPLES)
        @given(grpc_inputs, st.booleans(), st.integers(0, 3))
        def one(case: tuple[str, bytes], streaming: bool, agree: int) -> None:
            kind, payload = case
            unary_path, stream_path, message_type = METHODS[kind]
            # A request whose `stream` is set must go to the matching RPC: most of them do, some do not (a 400).
            with contextlib.suppress(Exception):
                message = message_type.FromString(payload)
                if message.HasField("stream") and agree:
                    streaming = message.stream
            details = ""
            # Raw bytes in and out: the server, not this client, decides whether the payload is a message.
            if streaming:
                call = channel.unary_stream(stream_path)(payload, timeout=120)
                try:
                    for _ in call:
                        pass
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
            else:
                try:
                    channel.unary_unary(unary_path)(payload, timeout=120)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
            codes[code] += 1
            assert code in GRPC_OK_OR_CLIENT_FAULT, (code, details, payload[:200])

        one()
    print(f"gRPC fuzz codes: { {c.name: n for c, n in codes.items()} }")
    assert sum(codes.values()) >= GRPC_EXAMPLES
    assert codes[grpc.StatusCode.OK] >= GRPC_EXAMPLES // 20, codes
    assert codes[grpc.StatusCode.INVALID_ARGUMENT] >= GRPC_EXAMPLES // 4, codes
    assert_healthy(service)
    # Nothing sent was answered as a server fault: the error table's "internal" row holds (it is never expected).
    observe("internal")
