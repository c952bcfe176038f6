"""`chatgen` command line: flags (each also a CHATGEN_<FLAG> variable, environment.py) in parser.py, turned
into typed settings (settings.py) that chatgen.app runs."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from chatgen.app import event_loop_factory, run_gateway, serve
from chatgen.cli import environment
from chatgen.cli.parser import build_parser
from chatgen.cli.settings import gateway_settings, serve_settings, standalone_gateway_settings
from chatgen.gateway import drain_gateway

__all__ = ["build_parser", "environment_names", "gateway_settings", "main", "serve_settings"]


def environment_names(command: str) -> set[str]:
    """The CHATGEN_<FLAG> variables `chatgen <command>` reads (CHATGEN_API_KEYS aside)."""
    return environment.environment_names(build_parser(), command)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(os.environ, next((a for a in argv if not a.startswith("-")), None))
    # What chatgen does not know goes to vLLM's own parser (chatgen.engine.vllm_args).
    args, engine_argv = parser.parse_known_args(argv)
    if args.command != "serve" and engine_argv:
        parser.error(f"unrecognized arguments: {' '.join(engine_argv)}")
    args.engine_argv = tuple(engine_argv)
    if getattr(args, "help_engine", False):
        from chatgen.engine.vllm_args import engine_help

        print(engine_help())
        return 0
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "info").upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "serve":
        settings = serve_settings(args)
        if settings.frontends > 1:
            from chatgen.frontends import supervise

            return supervise(settings, getattr(args, "log_level", "info"))
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(serve(settings))
    if args.command == "gateway":
        return run_gateway(standalone_gateway_settings(args), args.render_only)
    if args.command == "gateway-drain":
        return drain_gateway(args.envoy_admin_port, args.timeout, args.settle)
    return 2
