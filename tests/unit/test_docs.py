"""The users' documentation stays true: generated reference current, links alive, no outside paths."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from load_tests.server_process import REPO
from service import config, config_reference
from service.cli import main

# Pages other helpers write; a link to one of them may precede the page itself.
PAGES_WRITTEN_ELSEWHERE = {"docs/kserve.md", "docs/metrics.md", "docs/publishing-checkpoints.md"}
# Paths of a developer's machine, spelt so that this file does not match itself.
OUTSIDE_PATHS = re.compile(
    r"\.\./shared"  # the sibling folder of a checkout
    r"|/wor[k]/"  # the development machines' root
    r"|/home/(?!app\b)[a-z_][\w.-]*"  # a user's home (the image's own /home/app is in the tree)
    r"|/roo[t]/"
    r"|/User[s]/[A-Za-z]"
)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _markdown_pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _expected_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key, walked here independently of the generator's own walk."""
    found = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        found.append(path)
        annotation: Any = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += _expected_keys(annotation, path + ".")
        elif getattr(annotation, "__origin__", None) is dict:
            value = annotation.__args__[1]
            if isinstance(value, type) and issubclass(value, BaseModel):
                found += _expected_keys(value, path + ".<name>.")
    return found


def test_configuration_reference_is_up_to_date() -> None:
    committed = (REPO / config_reference.DOC_PATH).read_text()
    assert committed == config_reference.render(), (
        f"docs/configuration.md is stale; regenerate it: {config_reference.REGENERATE}"
    )


def test_configuration_reference_names_every_key_and_override() -> None:
    page = (REPO / config_reference.DOC_PATH).read_text()
    keys = _expected_keys(config.ServeConfig)
    assert {"server.admin_token", "models.<name>.input.resize", "models.<name>.cpu_replicas"} <= set(keys)
    missing = [key for key in keys if f"| `{key}` |" not in page]
    assert not missing, f"keys missing from docs/configuration.md: {missing}"
    overrides = [config.ENV_PREFIX + suffix for suffix in config._SERVER_ENV]
    overrides += ["MODEL_SERVE_DEFAULT_MODEL", "MODEL_SERVE_CHECKPOINT_ROOT", "MODEL_SERVE_CONFIG"]
    assert [name for name in overrides if f"`{name}`" not in page] == []


def test_overrides_are_found_by_asking_the_config_module() -> None:
    assert config_reference.env_override("server.max_body_bytes") == "MODEL_SERVE_MAX_BODY_BYTES"
    assert config_reference.env_override("checkpoint_root") == "MODEL_SERVE_CHECKPOINT_ROOT"
    assert config_reference.env_override("server.watch_interval_s") is None
    assert config_reference.env_override("models.<name>.watch") is None


def test_check_mode_fails_on_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(config_reference.render().replace("max_body_bytes", "max_bdy_bytes"))
    assert config_reference.main(["--check", str(stale)]) == 1
    assert "regenerate" in capsys.readouterr().err
    stale.write_text(config_reference.render())
    assert config_reference.main(["--check", str(stale)]) == 0


def test_readme_config_example_is_a_valid_config(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    example = readme[readme.index("## Your own model") :]
    block = example[example.index("```yaml\n") + 8 : example.index("```\n", example.index("```yaml"))]
    loaded = config.build_config(yaml.safe_load(block), base_dir=tmp_path, environ={})
    assert loaded.models["resnet"].input.resize == "stretch"


def test_no_tracked_file_refers_outside_the_repository() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=30
    ).stdout.decode()
    offenders = []
    for name in filter(None, listed.split("\0")):
        path = REPO / name
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue  # binary files (checkpoints, images); deleted but not yet committed
        offenders += [f"{name}: {match.group(0)}" for match in OUTSIDE_PATHS.finditer(text)]
    assert not offenders, "paths outside the repository: " + ", ".join(offenders)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {_slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


@pytest.mark.parametrize("page", _markdown_pages(), ids=lambda page: page.name)
def test_relative_links_point_into_the_repository(page: Path) -> None:
    broken = []
    for target in _LINK.findall(re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        relative = linked.relative_to(REPO).as_posix() if linked.is_relative_to(REPO) else None
        if relative is None:
            broken.append(f"{target} (outside the repository)")
        elif not linked.exists():
            if relative not in PAGES_WRITTEN_ELSEWHERE:
                broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.name}: " + ", ".join(broken)


@pytest.mark.parametrize("command", [[], ["serve"], ["inspect"]], ids=lambda c: " ".join(["model-serve", *c]))
def test_help_is_plain_text(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: model-serve")
    assert "``" not in text


def test_torch_index_feeds_pip(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "venv"

    def dry_run(*variables: str) -> str:
        command = ["make", "-n", "-C", str(REPO), f"VENV={venv}", *variables, f"{venv}/bin/.installed"]
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout

    index = "https://download.pytorch.org/whl/cpu"
    steps = dry_run(f"TORCH_INDEX={index}").splitlines()
    torch_step = next(i for i, step in enumerate(steps) if f"torch torchvision --index-url {index}" in step)
    project_step = next(i for i, step in enumerate(steps) if "-e '.[dev]'" in step)
    assert torch_step < project_step  # torch first, so the project's install keeps that build
    assert "--index-url" not in dry_run()
