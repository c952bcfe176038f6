"""chat.validation.renaming: a translated request's errors name the caller's fields."""

from __future__ import annotations

import re

from chatgen.chat.validation.renaming import renamed
from chatgen.errors import ApiError, Failure

RENAMES = ((re.compile(r"^max_tokens"), "max_output_tokens"), (re.compile(r"^stop\b"), "stop_sequences"))


def test_chat_messages_map_back_to_their_origin_and_other_fields_are_renamed() -> None:
    origins = ("instructions", "input[0]", "input[2]")
    err = ApiError(Failure.INVALID_REQUEST, "bad", "messages[2].content", 3.0)
    out = renamed(err, origins, RENAMES, "input")
    assert (out.param, out.message, out.failure, out.retry_after) == ("input[2]", "bad", err.failure, 3.0)
    assert renamed(ApiError(Failure.INVALID_REQUEST, "x", "messages[9]"), origins, RENAMES, "input").param == "input"
    assert renamed(ApiError(Failure.INVALID_REQUEST, "x", "stop[1]"), origins, RENAMES, "input").param == (
        "stop_sequences[1]"
    )
    untouched = ApiError(Failure.INVALID_REQUEST, "x", "temperature")
    assert renamed(untouched, origins, RENAMES, "input").param == "temperature"
    no_param = ApiError(Failure.INVALID_REQUEST, "x")
    assert renamed(no_param, origins, RENAMES, "input") is no_param
