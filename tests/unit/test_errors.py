"""The error table: one source for the server, the gateway's own replies and docs/api.md."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from chatgen.errors import CASES, FAILURES, GATEWAY_REPLIES, Failure, markdown_table
from chatgen.gateway import GatewaySettings, render_config
from chatgen.gateway.config import ConfigFiles, lua_settings

REPO = Path(__file__).resolve().parents[2]

# Failures a client's request may cause: none of them may be a 5xx.
CLIENT_FAULTS = {
    Failure.INVALID_REQUEST,
    Failure.CONTEXT_LENGTH_EXCEEDED,
    Failure.UNSUPPORTED,
    Failure.MODEL_NOT_FOUND,
    Failure.RESPONSE_NOT_FOUND,
    Failure.ADAPTER_NOT_FOUND,
    Failure.NO_CHAT_TEMPLATE,
    Failure.REQUEST_TOO_LARGE,
    Failure.HEADERS_TOO_LARGE,
    Failure.UNSUPPORTED_MEDIA_TYPE,
    Failure.NOT_FOUND,
    Failure.INVALID_API_KEY,
}


def test_the_api_docs_carry_the_generated_table() -> None:
    docs = (REPO / "docs" / "api.md").read_text()
    block = re.search(r"<!-- errors:begin[^\n]*-->\n(.*?)<!-- errors:end -->", docs, re.S)
    assert block is not None
    assert block.group(1) == markdown_table()


def test_every_failure_has_a_wire_status_and_a_row() -> None:
    assert set(FAILURES) == set(Failure)
    assert {case.failure for case in CASES} == set(Failure)
    assert len({case.id for case in CASES}) == len(CASES)


def test_client_faults_are_never_5xx() -> None:
    for failure in CLIENT_FAULTS:
        assert 400 <= FAILURES[failure].http_status < 500, failure
    for failure in set(Failure) - CLIENT_FAULTS:
        assert FAILURES[failure].http_status in (429, 500, 503, 504), failure


def test_gateway_replies_agree_with_the_table() -> None:
    for status, failure in GATEWAY_REPLIES.items():
        assert FAILURES[failure].http_status == status


def test_the_lua_filter_gets_the_table(tmp_path: Path) -> None:
    settings = GatewaySettings("127.0.0.1", 8000, "127.0.0.1", 50051, 9901, tmp_path)
    files = ConfigFiles(tmp_path / "chatgen.pb", tmp_path / "openai_compat.lua", tmp_path / "request_types.json")
    errors = lua_settings(settings, files)["http_errors"]
    assert errors == {
        str(s): [FAILURES[f].openai_type, f.value, FAILURES[f].anthropic_type] for s, f in GATEWAY_REPLIES.items()
    }


def test_envoy_local_replies_come_from_the_table(tmp_path: Path) -> None:
    settings = GatewaySettings("127.0.0.1", 8000, "127.0.0.1", 50051, 9901, tmp_path)
    doc = yaml.safe_load(render_config(settings).read_text())
    manager = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    mappers = manager["local_reply_config"]["mappers"]
    by_status = {
        m["filter"]["status_code_filter"]["comparison"]["value"]["default_value"]: m["body_format_override"]
        for m in mappers
        if "status_code_filter" in m["filter"] and m["filter"]["status_code_filter"]["comparison"]["op"] == "EQ"
    }
    assert set(by_status) == set(GATEWAY_REPLIES)
    for status, failure in GATEWAY_REPLIES.items():
        error = by_status[status]["json_format"]["error"]
        assert (error["type"], error["code"]) == (FAILURES[failure].openai_type, failure.value)
