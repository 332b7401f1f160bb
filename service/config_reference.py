"""Writes ``docs/configuration.md`` from the config models, so the reference cannot drift from them.

Every key, type, default and description comes from the pydantic models in ``service.config``
(a new field appears here by itself); the ``MODEL_SERVE_*`` override of a key is found by
asking the config module's own override step, not from a second list kept by hand.

    python -m service.config_reference > docs/configuration.md
    python -m service.config_reference --check docs/configuration.md   # exit 1 when stale
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from service import config

DOC_PATH = Path("docs") / "configuration.md"
REGENERATE = "python -m service.config_reference > docs/configuration.md"
_PROBE = "\x00probe"
_BOUNDS = {
    annotated_types.Ge: ("ge", ">="),
    annotated_types.Gt: ("gt", ">"),
    annotated_types.Le: ("le", "<="),
    annotated_types.Lt: ("lt", "<"),
}


@dataclass(frozen=True)
class Section:
    """One table of the reference: the keys of one config model, under a dotted prefix."""

    prefix: str  # "" at the top level, else "server", "models.<name>", ...
    model: type[BaseModel]


@dataclass(frozen=True)
class Key:
    """One documented key."""

    path: str
    type: str
    default: str
    env: str | None
    description: str


def sections(model: type[BaseModel] = config.ServeConfig, prefix: str = "") -> Iterator[Section]:
    """The model's own section, then one per nested model (depth first, in field order)."""
    yield Section(prefix, model)
    for name, field in model.model_fields.items():
        nested, suffix = _nested_model(field.annotation)
        if nested is not None:
            yield from sections(nested, _join(prefix, name) + suffix)


def keys(section: Section) -> list[Key]:
    """Every field of ``section``'s model, described."""
    return [
        Key(
            path=_join(section.prefix, name),
            type=_type_name(field.annotation) + _bounds(field),
            default=_default(field),
            env=env_override(_join(section.prefix, name)),
            description=field.description or "",
        )
        for name, field in section.model.model_fields.items()
    ]


def all_key_paths() -> list[str]:
    """Every dotted key of the configuration, e.g. ``models.<name>.batching.max_batch_size``."""
    return [key.path for section in sections() for key in keys(section)]


def env_override(path: str) -> str | None:
    """``MODEL_SERVE_<KEY>`` when the config module applies it to ``path``, else None."""
    parts = path.split(".")
    name = config.ENV_PREFIX + parts[-1].upper()
    data: Any = config._with_env_overrides({}, {name: _PROBE})
    for part in parts:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return name if data == _PROBE else None


def render() -> str:
    """The whole Markdown page."""
    lines = [_INTRO]
    for section in sections():
        title = f"`{section.prefix}`" if section.prefix else "Top level"
        summary = (section.model.__doc__ or "").strip().splitlines()[0].replace("``", "`")
        lines += [f"## {title}", "", summary, "", "| key | type | default | environment | description |"]
        lines.append("| --- | --- | --- | --- | --- |")
        lines += [_row(key) for key in keys(section)]
        lines.append("")
    lines.append(_ENVIRONMENT)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the page, or with ``--check FILE`` exit 1 when FILE differs from it."""
    parser = argparse.ArgumentParser(description="Write or check the configuration reference.")
    parser.add_argument("--check", type=Path, metavar="FILE", help="compare FILE instead of printing")
    args = parser.parse_args(argv)
    page = render()
    if args.check is None:
        sys.stdout.write(page)
        return 0
    if args.check.read_text() != page:
        print(f"{args.check} is out of date; regenerate it: {REGENERATE}", file=sys.stderr)
        return 1
    return 0


def _row(key: Key) -> str:
    env = f"`{key.env}`" if key.env else ""
    cells = [f"`{key.path}`", _cell(key.type), _cell(key.default), env, _cell(key.description)]
    return "| " + " | ".join(cells) + " |"


def _nested_model(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The config model a field holds (with ``.<name>`` for a mapping of them), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is dict and len(args) == 2:
        inner, _ = _nested_model(args[1])
        return inner, ".<name>" if inner is not None else ""
    return None, ""


def _type_name(annotation: Any) -> str:
    """A YAML reader's name for a Python annotation: ``int``, ``[int, int]``, ``"a" | "b"``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(f'"{arg}"' if isinstance(arg, str) else str(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "[" + ", ".join(_type_name(arg) for arg in args) + "]"
    if origin is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    """The field's numeric limits, e.g. `` (>= 1, <= 4096)``."""
    found = []
    for item in field.metadata:
        for kind, (attribute, symbol) in _BOUNDS.items():
            if isinstance(item, kind):
                found.append(f"{symbol} {_yaml(getattr(item, attribute))}")
    return f" ({', '.join(found)})" if found else ""


def _default(field: FieldInfo) -> str:
    """The default as YAML in backticks; ``required`` or a nested model's defaults in words."""
    if field.default_factory is not None:
        return f"`{_yaml(field.default_factory())}`"  # type: ignore[call-arg]
    if field.default is PydanticUndefined:
        return "required"
    if isinstance(field.default, BaseModel):
        return "every key's default"
    return f"`{_yaml(field.default)}`"


def _yaml(value: object) -> str:
    """A value as it would be written in the YAML file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return _yaml(value.value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


_INTRO = f"""# Configuration reference

<!-- Generated by `{REGENERATE}`; do not edit by hand.
     tests/unit/test_docs.py fails when this file and the config models disagree. -->

model-serve reads one YAML file, given by `model-serve serve --config PATH` or the
`MODEL_SERVE_CONFIG` environment variable (`--config` wins). Without either it serves the
built-in demo models. The file is read once at start; a change needs a restart (or, for a
model's weights, a [reload](reload.md)).

- **Unknown keys are errors** that name the key (`invalid configuration: unknown key
  'models.digits.batchin'`), never silently ignored. See [troubleshooting](troubleshooting.md).
- **Relative paths** in the file (`checkpoint`, `checkpoint_root`) are relative to the folder
  of the config file, not to the server's working directory. Paths given to the reload route
  are different: they are relative to `checkpoint_root` ([reload](reload.md)).
- **Environment overrides**: a key with a variable in the *environment* column takes that
  variable's value when it is set and not empty; the variable wins over the file.
- `<name>` stands for a model's name, the key under `models` (`digits` in
  `models.digits.input.size`).
- The server's address is not a config key: `model-serve serve --host H --port P`
  (default `127.0.0.1:8000`).

A minimal file:

```yaml
models:
  digits:
    architecture: models.lenet:lenet
    init_args: {{num_classes: 10}}
    checkpoint: checkpoints/digits.safetensors
    input: {{size: [32, 32], channels: 1, mean: [0.5], std: [0.5]}}
```
"""

_ENVIRONMENT = """## Environment variables that are not keys

| variable | what it does |
| --- | --- |
| `MODEL_SERVE_CONFIG` | the config file when `--config` is not given |
| `MODEL_SERVE_HOME` | where the demo checkpoints are trained if the shipped ones are missing \
(default `$XDG_CACHE_HOME/model-serve`, else `~/.cache/model-serve`) |
"""


if __name__ == "__main__":
    raise SystemExit(main())
