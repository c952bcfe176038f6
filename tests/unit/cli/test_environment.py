"""CHATGEN_<FLAG> environment variables as flag defaults (how a Kubernetes ConfigMap configures chatgen)."""

from __future__ import annotations

import pytest

from chatgen.cli import build_parser, environment_names


def parse(environ: dict[str, str], *argv: str):  # type: ignore[no-untyped-def]
    args, rest = build_parser(environ, argv[0]).parse_known_args(list(argv))
    assert rest == []
    return args


def test_variables_set_defaults_and_the_command_line_wins() -> None:
    env = {"CHATGEN_MAX_RUNNING": "7", "CHATGEN_ENGINE": "hf", "CHATGEN_NO_GATEWAY": "true", "CHATGEN_HOST": "::"}
    args = parse(env, "serve")
    assert (args.max_running, args.engine, args.no_gateway, args.host) == (7, "hf", True, "::")
    args = parse(env, "serve", "--max-running", "9", "--engine", "vllm")
    assert (args.max_running, args.engine) == (9, "vllm")
    assert parse({"CHATGEN_NO_GATEWAY": "0"}, "serve").no_gateway is False
    assert parse({}, "serve").max_running == 32  # no variable: the built-in default


def test_a_bad_value_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    for env in ({"CHATGEN_MAX_RUNNING": "many"}, {"CHATGEN_ENGINE": "tpu"}, {"CHATGEN_NO_GATEWAY": "maybe"}):
        with pytest.raises(SystemExit) as info:
            build_parser(env, "serve")
        assert info.value.code == 2
        name = next(iter(env))
        assert f"{name}={env[name]!r} is not a valid value" in capsys.readouterr().err


def test_each_command_reads_only_its_own_variables() -> None:
    # A shared ConfigMap holds the server's model settings too: the gateway neither uses nor checks them.
    args = parse({"CHATGEN_ENGINE": "tpu", "CHATGEN_MAX_WAITING": "5"}, "gateway")
    assert args.max_waiting == 5 and not hasattr(args, "engine")
    assert "CHATGEN_ENGINE" in environment_names("serve") and "CHATGEN_ENGINE" not in environment_names("gateway")
    assert {"CHATGEN_MAX_RUNNING", "CHATGEN_GRPC_PORT", "CHATGEN_GRPC_HOST"} <= environment_names("gateway")
    assert "CHATGEN_API_KEY" not in environment_names("serve")  # keys: CHATGEN_API_KEYS, a list
