"""``model-serve serve`` and ``model-serve inspect``."""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import uvicorn

from service.allocator import keep_tensor_memory
from service.app import create_app
from service.config import ServeConfig, config_path_from_env, load_config
from service.doors.http_protocol import PROBE_RESERVE, bounded_protocol, connection_cap
from service.errors import ServeError
from service.lifecycle import DrainingServer, shutdown_timeout_s
from service.ops.logs import configure_logging
from service.pipeline.devices import available_cores

log = logging.getLogger("service")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args.config, host=args.host, port=args.port, grpc_port=args.grpc_port)
        return _inspect(args)
    except ServeError as error:
        print(f"model-serve: {error.message}", file=sys.stderr)
        return 2


# Help text is plain text (argparse prints it as it is): no markup from the docstrings.
_DESCRIPTION = "Serve PyTorch checkpoints over HTTP, or inspect a checkpoint file."
_EPILOG = "Run 'model-serve serve --help' or 'model-serve inspect --help' for a command's options."
_SERVE_DESCRIPTION = (
    "Serve the models of a YAML config (--config, else $MODEL_SERVE_CONFIG), or with neither "
    "the built-in demo models. Ready when GET /readyz answers 200."
)
_INSPECT_DESCRIPTION = (
    "Say what a checkpoint file holds (format, wrapper key, key prefixes, device tags, dtypes, "
    "parameters) and, with --architecture, whether and how it loads into that model."
)
_INSPECT_EPILOG = (
    "Exit status: 0 the file is readable (and loads into the architecture, if given); "
    "1 it would not load into the architecture; 2 the file is unreadable or refused, or the "
    "architecture cannot be built."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="model-serve", description=_DESCRIPTION, epilog=_EPILOG)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser(
        "serve", help="serve the configured (or demo) models", description=_SERVE_DESCRIPTION
    )
    serve_cmd.add_argument(
        "--config", type=Path, default=None, help="YAML config (default: $MODEL_SERVE_CONFIG, else the demo)"
    )
    serve_cmd.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    serve_cmd.add_argument(
        "--grpc-port",
        type=_grpc_port,
        default=None,
        help="v2 gRPC port, or 'off' (default: server.grpc_port, $MODEL_SERVE_GRPC_PORT, else 8081)",
    )
    inspect_cmd = commands.add_parser(
        "inspect",
        help="what a checkpoint holds; does it load?",
        description=_INSPECT_DESCRIPTION,
        epilog=_INSPECT_EPILOG,
    )
    inspect_cmd.add_argument(
        "checkpoint",
        type=Path,
        help="a .pt/.pth/.bin (torch.save) or .safetensors file, a torch.distributed.checkpoint "
        "folder, or a Hugging Face *.index.json (or its folder)",
    )
    inspect_cmd.add_argument(
        "--architecture", metavar="MOD:CALLABLE", help="importable.module:callable that builds the model"
    )
    inspect_cmd.add_argument(
        "--init-args",
        metavar="JSON",
        default="{}",
        help="its keyword arguments, e.g. '{\"num_classes\": 10}'",
    )
    inspect_cmd.add_argument(
        "--state-dict-key", default=None, help="the entry to report on, as the model key state_dict_key"
    )
    inspect_cmd.add_argument(
        "--trust-pickle", action="store_true", help="allow arbitrary unpickling (only for files you trust)"
    )
    return parser


def serve(config_path: Path | None, *, host: str, port: int, grpc_port: int | str | None = None) -> int:
    """Runs the server until SIGINT/SIGTERM; drains in-flight requests before exiting.

    ``grpc_port`` (an int, or ``"off"``) overrides the config's ``server.grpc_port``."""
    config = _with_grpc_port(_load(config_path), grpc_port)
    configure_logging(config.server.log_format, access_log=config.server.access_log)
    keep_tensor_memory()
    torch.set_num_threads(config.server.torch_threads or available_cores())
    failures: list[BaseException] = []
    server: DrainingServer | None = None

    def on_fatal(error: BaseException) -> None:
        failures.append(error)
        if server is not None:
            server.should_exit = True

    def on_ready() -> None:
        if server is not None:
            server.models_ready()

    app = create_app(config, on_fatal=on_fatal, on_ready=on_ready, grpc_host=host)
    limits = config.server
    max_connections = connection_cap(limits.max_connections, _raise_descriptor_limit())
    lowered = limits.max_connections and max_connections < limits.max_connections
    log.log(
        logging.WARNING if lowered else logging.INFO,
        "serving at most %d connections (+%d for health probes)%s",
        max_connections,
        PROBE_RESERVE,
        f", not {limits.max_connections}: too few descriptors" if lowered else "",
    )
    uvicorn_config = uvicorn.Config(
        app,
        http=bounded_protocol(
            limits.max_header_bytes,
            limits.header_timeout_s,
            max_connections,
            app.state.runtime.metrics.evicted_connections.inc,
        ),
        host=host,
        port=port,
        access_log=False,
        log_config=None,
        server_header=False,  # "server: uvicorn" tells a scanner which server's flaws to try
        timeout_graceful_shutdown=shutdown_timeout_s(config.server),
        timeout_keep_alive=limits.keep_alive_timeout_s,
    )
    server = DrainingServer(uvicorn_config, app.state.lifecycle)
    server.run()
    if failures:  # after uvicorn's shutdown lines, so that the reason is the last line
        error = failures[0]
        log.error(
            "model loading failed: %s; exiting",
            error.message if isinstance(error, ServeError) else f"{type(error).__name__}: {error}",
            exc_info=None if isinstance(error, ServeError) else error,
        )
        return 1
    return 0


def _raise_descriptor_limit() -> int:
    """Raise the soft open-file limit to the hard one (each connection holds a descriptor; 1024,
    a common default, refused every new client under a few hundred idle sockets); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    if soft == resource.RLIM_INFINITY:
        log.info("open-file limit: unlimited")
        return 1 << 20
    log.info("open-file limit: %d (hard %d)", soft, hard)
    return soft


def _grpc_port(text: str) -> int | str:
    if text.lower() == "off":
        return "off"
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number or 'off'")
    return int(text)


def _with_grpc_port(config: ServeConfig, grpc_port: int | str | None) -> ServeConfig:
    if grpc_port is None:
        return config
    server = config.server.model_copy(update={"grpc_port": None if grpc_port == "off" else grpc_port})
    return config.model_copy(update={"server": server})


def _load(config_path: Path | None) -> ServeConfig:
    path = config_path or config_path_from_env()
    if path is not None:
        return load_config(path)
    from service.demo import demo_config

    return demo_config()


def _inspect(args: argparse.Namespace) -> int:
    from service.checkpoints.inspection import inspect_checkpoint

    init_args = _json_object(args.init_args)
    return inspect_checkpoint(
        args.checkpoint,
        architecture=args.architecture,
        init_args=init_args,
        trust_pickle=args.trust_pickle,
        state_dict_key=args.state_dict_key,
        out=sys.stdout,
    )


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ServeError(f"--init-args is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ServeError('--init-args must be a JSON object such as {"num_classes": 10}')
    return value


if __name__ == "__main__":
    raise SystemExit(main())
