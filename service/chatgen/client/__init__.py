"""Python clients for chatgen's gRPC API, for services that call it: blocking and asyncio, typed results.

from chatgen.client import ChatgenClient
with ChatgenClient("localhost:50051") as client:
    print(client.chat([{"role": "user", "content": "Hi"}], temperature=0).content)
"""

from chatgen.client.aio import AsyncChatgenClient
from chatgen.client.sync import ChatgenClient
from chatgen.client.types import (
    ChatChunk,
    ChatgenError,
    ChatResult,
    CompletionChunk,
    CompletionResult,
    ModelCard,
    Usage,
)

__all__ = [
    "AsyncChatgenClient",
    "ChatChunk",
    "ChatResult",
    "ChatgenClient",
    "ChatgenError",
    "CompletionChunk",
    "CompletionResult",
    "ModelCard",
    "Usage",
]
