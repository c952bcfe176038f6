from __future__ import annotations

import pytest
from google.protobuf import json_format, struct_pb2

from chatgen.errors import ChatgenError, Failure
from chatgen.transport import convert
from chatgen.v1 import chatgen_pb2 as pb


def value(obj: object) -> struct_pb2.Value:
    v = struct_pb2.Value()
    json_format.ParseDict(obj, v)
    return v


def test_content_string_and_parts() -> None:
    assert convert.content_text(value("hi"), "c") == "hi"
    assert convert.content_text(value([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]), "c") == "ab"
    assert convert.content_text(struct_pb2.Value(), "c") == ""


@pytest.mark.parametrize(
    ("content", "param"),
    [([{"type": "image_url", "image_url": {"url": "x"}}], "c[0]"), ([{"type": "text"}], "c[0].text"), (3, "c")],
)
def test_content_rejects_other_shapes(content: object, param: str) -> None:
    with pytest.raises(ChatgenError) as info:
        convert.content_text(value(content), "c")
    assert info.value.failure is Failure.INVALID_REQUEST
    assert info.value.param == param


def test_stop_string_or_list() -> None:
    assert convert.stop_strings(value("x")) == ("x",)
    assert convert.stop_strings(value(["a", "", "b"])) == ("a", "b")
    assert convert.stop_strings(struct_pb2.Value()) == ()
    with pytest.raises(ChatgenError) as info:
        convert.stop_strings(value(["a", 1]))
    assert info.value.param == "stop[1]"


def test_prompt_forms() -> None:
    assert convert.prompt_text(value("p")) == "p"
    assert convert.prompt_text(value(["p"])) == "p"
    for bad in (value(["a", "b"]), value(1), struct_pb2.Value()):
        with pytest.raises(ChatgenError) as info:
            convert.prompt_text(bad)
        assert info.value.param == "prompt"


def test_chat_request_fields() -> None:
    req = json_format.ParseDict(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "q", "name": "bob"}],
            "max_tokens": 5,
            "max_completion_tokens": 7,
            "temperature": 0,
            "seed": 3,
            "stop": "END",
        },
        pb.ChatCompletionRequest(),
    )
    out = convert.chat_request(req)
    assert out.messages[0].name == "bob"
    assert out.sampling.max_tokens == 7  # max_completion_tokens wins
    assert out.sampling.temperature == 0.0  # present-but-zero is not "unset"
    assert out.sampling.top_p is None
    assert out.sampling.seed == 3
    assert out.sampling.stop == ("END",)


def test_openai_error_body_is_single_line_ascii() -> None:
    err = ChatgenError(Failure.MODEL_NOT_FOUND, "model 'é\n' not found", "model")
    text = err.openai_json()
    assert text.isascii() and "\n" not in text
    assert err.openai_body()["error"] == {
        "message": "model 'é\n' not found",
        "type": "not_found_error",
        "param": "model",
        "code": "model_not_found",
    }
