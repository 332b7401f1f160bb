"""Build a model from a config's ``"importable.module:callable"`` spec and its keyword arguments.

The architecture may live in the user's own code: anything importable on ``PYTHONPATH`` works,
``torchvision.models:resnet18`` included. Every failure is a ``ConfigError`` that names the spec
and says what to fix, because it surfaces at start-up or in ``model-serve inspect``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any, cast

from torch import nn

from service.errors import ConfigError

_SPEC = re.compile(r"(?P<module>\w+(?:\.\w+)*):(?P<attr>\w+(?:\.\w+)*)")
_EXAMPLE = "'importable.module:callable', e.g. 'torchvision.models:resnet18'"


def build_model(architecture: str, init_args: Mapping[str, Any] | None = None) -> nn.Module:
    """Call the factory named by ``architecture`` with ``init_args``; always an nn.Module."""
    factory = _resolve(architecture)
    kwargs = dict(init_args or {})
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"architecture {architecture!r} does not accept init_args {kwargs}: {exc}; "
            "check the keyword names and values against the callable's signature"
        ) from exc
    except Exception as exc:  # user code: any failure is a configuration problem to report
        raise ConfigError(
            f"architecture {architecture!r} failed with init_args {kwargs}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"architecture {architecture!r} returned a {type(model).__name__}, not a "
            "torch.nn.Module; name a callable (a class or factory) that builds the model"
        )
    return model


def _resolve(architecture: str) -> Callable[..., Any]:
    """Import the module and walk the dotted attribute path after the colon."""
    match = _SPEC.fullmatch(architecture.strip())
    if match is None:
        raise ConfigError(f"architecture {architecture!r} must look like {_EXAMPLE}")
    module_name, attr_path = match["module"], match["attr"]
    target: Any = _import(architecture, module_name)
    walked = module_name
    for attr in attr_path.split("."):
        if not hasattr(target, attr):
            raise ConfigError(f"architecture {architecture!r}: {walked!r} has no attribute {attr!r}")
        target = getattr(target, attr)
        walked = f"{walked}.{attr}"
    if not callable(target):
        raise ConfigError(
            f"architecture {architecture!r}: {walked!r} is a {type(target).__name__}, "
            "not a callable that builds a model"
        )
    return cast(Callable[..., Any], target)


def _import(architecture: str, module_name: str) -> Any:
    """Import ``module_name``, telling a missing module apart from a failing one."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # exc.name is the module that was not found: the spec's own (or a parent package),
        # or a dependency that the user's module imports.
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise ConfigError(
                f"architecture {architecture!r}: cannot import module {module_name!r}; "
                "is it installed, or is its folder on the server's PYTHONPATH?"
            ) from exc
        raise ConfigError(
            f"architecture {architecture!r}: importing {module_name!r} failed because "
            f"{exc.name!r} is not installed or not on PYTHONPATH"
        ) from exc
    except Exception as exc:  # a user module may raise anything while importing
        raise ConfigError(
            f"architecture {architecture!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
