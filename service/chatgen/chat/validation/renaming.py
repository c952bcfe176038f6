"""Errors of a translated request (Messages, Responses) renamed to the fields the caller sent: the chat request a
translation stands for is validated as chat, so its errors first name chat's fields."""

from __future__ import annotations

import re

from chatgen.errors import ApiError

# A chat message's field: `messages[k]...`, which the translation's origins map back.
CHAT_MESSAGE = re.compile(r"^messages\[(\d+)\]")


def renamed(
    err: ApiError, origins: tuple[str, ...], renames: tuple[tuple[re.Pattern[str], str], ...], fallback: str
) -> ApiError:
    """`err` naming the other API's field: a chat message's by `origins` (the field each chat message came from;
    `fallback` past its end), any other by the first of `renames` (pattern -> replacement) that matches."""
    param = err.param
    if param is None:
        return err
    found = CHAT_MESSAGE.match(param)
    if found is not None:
        index = int(found.group(1))
        param = origins[index] if index < len(origins) else fallback
    else:
        for pattern, name in renames:
            if pattern.match(param):
                param = pattern.sub(name, param)
                break
    return ApiError(err.failure, err.message, param, err.retry_after)
