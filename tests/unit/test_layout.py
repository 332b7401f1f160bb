"""The layout stays drawn and layered: docs/architecture.md names every subpackage and module of
``service/`` (and nothing that is gone), and every import points down the layers it states."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support.serving import REPO

SERVICE = REPO / "service"
ARCHITECTURE = REPO / "docs" / "architecture.md"

# The layers of docs/architecture.md, top to bottom. A module imports its own group or one
# that group may import; `ops` sits beside the pipeline and imports only the base.
SUBPACKAGES = ("doors", "pipeline", "images", "checkpoints", "ops")
TOP = {"app", "cli", "lifecycle", "demo", "config_reference"}
BASE = {"__init__", "config", "errors", "allocator"}  # `service/__init__.py` holds only the version
MAY_IMPORT = {
    "top": {"top", *SUBPACKAGES, "base"},
    "doors": {"doors", "pipeline", "images", "checkpoints", "ops", "base"},
    "pipeline": {"pipeline", "images", "checkpoints", "ops", "base"},
    "images": {"images", "ops", "base"},  # images and checkpoints never import each other
    "checkpoints": {"checkpoints", "ops", "base"},
    "ops": {"ops", "base"},
    "base": {"base"},
}
_TREE_LINE = re.compile(r"^(?P<indent>(?:│   |    )*)[├└]── (?P<name>\S+)(?:\s+(?P<what>\S.*))?$")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> list[Path]:
    return sorted(path for path in SERVICE.rglob("*.py") if "__pycache__" not in path.parts)


def _drawn_tree() -> dict[str, str]:
    """Each entry of the layout's tree (``service/...``, folders ending in ``/``) and its line."""
    page = ARCHITECTURE.read_text()
    section = page[page.index("\n## Layout") :]
    block = section[section.index("```text\n") + 8 : section.index("\n```", section.index("```text"))]
    lines = block.splitlines()
    assert lines[0].split()[0] == "service/", "the tree starts at service/"
    drawn: dict[str, str] = {"service/": lines[0]}
    folders = ["service/"]
    for line in lines[1:]:
        found = _TREE_LINE.match(line)
        assert found, f"not a tree line: {line!r}"
        depth = len(found["indent"]) // 4 + 1
        assert depth <= len(folders), f"{line!r} is deeper than its folder"
        del folders[depth:]
        path = folders[-1] + found["name"]
        assert found["what"], f"{path} has no description"
        drawn[path] = line
        if path.endswith("/"):
            folders.append(path)
    return drawn


def test_the_architecture_page_names_every_module_and_subpackage() -> None:
    drawn = _drawn_tree()
    missing = []
    for source in _sources():
        relative = source.relative_to(REPO).as_posix()
        named = relative in drawn or (
            source.name == "__init__.py" and f"{source.parent.relative_to(REPO).as_posix()}/" in drawn
        )
        if not named:
            missing.append(relative)
    assert not missing, (
        f"docs/architecture.md does not name: {missing} (add one line each to its Layout tree)"
    )


def test_the_architecture_page_names_nothing_that_is_gone() -> None:
    gone = [path for path in _drawn_tree() if not (REPO / path).exists()]
    assert not gone, f"docs/architecture.md names what service/ no longer has: {gone}"


def _group(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in SUBPACKAGES:
        return parts[1]
    name = parts[1] if len(parts) > 1 else "__init__"
    if name in TOP:
        return "top"
    if name in BASE:
        return "base"
    raise AssertionError(
        f"{module} is in no layer: add it to tests/unit/test_layout.py and docs/architecture.md"
    )


def _is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(source: Path, text: str | None = None) -> set[str]:
    """Every ``service`` module ``source`` (or ``text`` as if it were there) imports anywhere:
    at the top level, inside functions and under ``TYPE_CHECKING``."""
    module = _module_name(source)
    package = module if source.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text() if text is None else text, str(source))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:  # `from service.pipeline import served` imports a module
                found.add(f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
    return {name for name in found if name == "service" or name.startswith("service.")}


def _edges() -> set[tuple[str, str]]:
    return {(_module_name(source), target) for source in _sources() for target in _imports(source)}


def test_imports_point_down_the_layers() -> None:
    upward = sorted(
        f"{module} ({_group(module)}) imports {target} ({_group(target)})"
        for module, target in _edges()
        if _group(target) not in MAY_IMPORT[_group(module)]
    )
    assert not upward, "imports that point up the layers of docs/architecture.md:\n" + "\n".join(upward)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("from service.pipeline import served\n", {"service.pipeline.served"}),
        ("from service import __version__\n", {"service"}),
        ("from . import tensors\n", {"service.doors.v2.tensors"}),
        ("from ..render import x\n", {"service.doors.render"}),
        ("def f():\n    import service.ops.metrics\n", {"service.ops.metrics"}),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from service.app import A\n",
            {"service.app"},
        ),
    ],
    ids=[
        "package-member",
        "package-attribute",
        "relative",
        "relative-parent",
        "in-function",
        "type-checking",
    ],
)
def test_every_kind_of_import_is_found(text: str, expected: set[str]) -> None:
    assert _imports(SERVICE / "doors" / "v2" / "infer.py", text) == expected
