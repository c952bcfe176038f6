"""A model without a chat template: it serves Generate, and Chat is a clear FAILED_PRECONDITION / 400."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from chatgen.client import ChatgenClient, ChatgenError
from tests.conftest import Service, running_service
from tests.support.error_rows import check_row
from tests.support.models import BASE_MODEL_NAME, base_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base_service(model_dir: Path) -> Iterator[Service]:
    # The check is in the chat layer, the same for both engines: the quick-starting one is enough.
    with running_service("hf", "--model", str(base_model(model_dir)), "--served-model-name", BASE_MODEL_NAME) as svc:
        yield svc


def test_chat_without_template_is_failed_precondition(base_service: Service) -> None:
    with ChatgenClient(base_service.grpc_address) as client:
        with pytest.raises(ChatgenError) as info:
            client.chat([{"role": "user", "content": "Hi"}])
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert client.generate("The capital of France", max_tokens=3, temperature=0).text == " is Paris."


def test_chat_without_template_is_400_over_rest(base_service: Service) -> None:
    import openai

    client = base_service.openai()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=BASE_MODEL_NAME, messages=[{"role": "user", "content": "Hi"}])
    check_row("no-chat-template", info.value.body)  # type: ignore[arg-type]
    assert client.models.retrieve(BASE_MODEL_NAME).model_extra["model_ability"] == ["generate"]  # type: ignore[index]
