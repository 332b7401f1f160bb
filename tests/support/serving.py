"""The test suite's real servers: ``load_tests.server_process`` with one torch thread each,
since tests share the machine with each other's clients."""

from __future__ import annotations

from pathlib import Path

from load_tests.server_process import REPO, free_port
from load_tests.server_process import ServerProcess as _ServerProcess

__all__ = ["REPO", "ServerProcess", "free_port"]


class ServerProcess(_ServerProcess):
    def __init__(self, config: Path | None, log_path: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(config, log_path, {"MODEL_SERVE_TORCH_THREADS": "1", **(env or {})})
