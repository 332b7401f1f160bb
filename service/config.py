"""Configuration: read once from YAML into frozen pydantic models, then passed down.

This is the only module that reads the environment (``MODEL_SERVE_*``). Unknown keys are
errors that name the key, never silent defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.errors import ConfigError

ENV_PREFIX = "MODEL_SERVE_"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Frozen):
    """How an image becomes the model's input tensor: channels, stretch-resize to size, normalise."""

    size: tuple[int, int] = Field(description="[H, W] the image is resized to")
    channels: Literal[1, 3] = 3
    mean: tuple[float, ...] = _IMAGENET_MEAN
    std: tuple[float, ...] = _IMAGENET_STD
    resize: Literal["stretch", "center_crop"] = "stretch"

    @model_validator(mode="before")
    @classmethod
    def _default_statistics(cls, data: Any) -> Any:
        """ImageNet's statistics (their channel average for grey images) when none are given."""
        if isinstance(data, dict):
            grey = data.get("channels", 3) == 1
            data = {
                "mean": (0.449,) if grey else _IMAGENET_MEAN,
                "std": (0.226,) if grey else _IMAGENET_STD,
                **data,
            }
        return data

    @model_validator(mode="after")
    def _check_lengths(self) -> InputSpec:
        if min(self.size) < 1:
            raise ValueError(f"size must be positive, got {list(self.size)}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise ValueError(
                    f"{name} has {len(values)} values; give 1 or one per channel ({self.channels})"
                )
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class BatchingSpec(_Frozen):
    """Dynamic batching: at most ``max_batch_size`` images per forward."""

    max_batch_size: int = Field(32, ge=1, le=4096)
    max_delay_ms: float = Field(0.0, ge=0, le=10_000)
    max_queue_size: int = Field(1024, ge=1, description="images queued before 503 queue_full")

    @property
    def max_delay_s(self) -> float:
        return self.max_delay_ms / 1000.0


class ModelSpec(_Frozen):
    """One served model: its architecture, checkpoint, input and serving policy."""

    task: Literal["classification", "segmentation"] = "classification"
    architecture: str
    init_args: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Path
    input: InputSpec
    labels: tuple[str, ...] | None = None
    batching: BatchingSpec = BatchingSpec()
    devices: Literal["auto", "cpu"] | tuple[str, ...] = "auto"
    output: int | str | None = None
    trust_pickle: bool = False
    watch: bool = False
    torch_threads: int | None = Field(
        None, ge=1, description="fixed intra-op threads per CPU replica; default: share the cores"
    )
    cpu_replicas: int | None = Field(
        None, ge=1, le=64, description="replicas for devices cpu/auto-without-GPU; default: the cores"
    )

    @field_validator("architecture")
    @classmethod
    def _check_architecture(cls, value: str) -> str:
        module, _, attr = value.partition(":")
        if not module or not attr:
            raise ValueError(f"expected 'importable.module:callable', got {value!r}")
        return value


class ServerSpec(_Frozen):
    """Process-wide limits and behaviour; every field has a production default."""

    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="request line + headers; 431 above")
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request head must arrive within this of connect or the last answer"
    )
    keep_alive_timeout_s: int = Field(
        5, ge=1, description="an idle keep-alive connection is closed after this (uvicorn's, whole seconds)"
    )
    max_connections: int | None = Field(
        None, ge=1, description="open connections served; above, 503 except probes; default 2048"
    )
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_images_per_request: int = Field(64, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    drain_grace_s: float = Field(20.0, ge=0)
    torch_threads: int | None = Field(None, ge=1, description="CPU replicas' intra-op threads")
    watch_interval_s: float = Field(1.0, gt=0, description="how often watched checkpoints are checked")
    log_format: Literal["text", "json"] = "text"
    admin_token: str | None = Field(None, repr=False)


class ServeConfig(_Frozen):
    """The whole configuration; paths are absolute once loaded."""

    default_model: str | None = None
    checkpoint_root: Path = Path("checkpoints")
    server: ServerSpec = ServerSpec()
    models: dict[str, ModelSpec]

    @model_validator(mode="after")
    def _check_models(self) -> ServeConfig:
        if not self.models:
            raise ValueError("models: at least one model is needed")
        if self.default_model is not None and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not one of {sorted(self.models)}")
        return self

    @property
    def default_model_name(self) -> str:
        return self.default_model or next(iter(self.models))


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> ServeConfig:
    """Read and validate a YAML file; relative paths resolve against the file's folder."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a YAML mapping with a 'models' key")
    return build_config(raw, base_dir=path.resolve().parent, environ=environ)


def build_config(
    raw: Mapping[str, Any], *, base_dir: Path, environ: Mapping[str, str] | None = None
) -> ServeConfig:
    """Validate a config mapping, apply ``MODEL_SERVE_*`` overrides, and resolve its paths."""
    data = _with_env_overrides(dict(raw), os.environ if environ is None else environ)
    try:
        config = ServeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc)) from None
    return _resolve_paths(config, base_dir)


_SERVER_ENV = {
    "MAX_BODY_BYTES": "max_body_bytes",
    "MAX_HEADER_BYTES": "max_header_bytes",
    "HEADER_TIMEOUT_S": "header_timeout_s",
    "KEEP_ALIVE_TIMEOUT_S": "keep_alive_timeout_s",
    "MAX_CONNECTIONS": "max_connections",
    "MAX_IMAGE_PIXELS": "max_image_pixels",
    "MAX_IMAGES_PER_REQUEST": "max_images_per_request",
    "REQUEST_TIMEOUT_S": "request_timeout_s",
    "DRAIN_GRACE_S": "drain_grace_s",
    "TORCH_THREADS": "torch_threads",
    "LOG_FORMAT": "log_format",
    "ADMIN_TOKEN": "admin_token",
}


def _with_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    server = dict(data.get("server") or {})
    for suffix, key in _SERVER_ENV.items():
        value = environ.get(ENV_PREFIX + suffix)
        if value:
            server[key] = value
    data["server"] = server
    for suffix, key in (("DEFAULT_MODEL", "default_model"), ("CHECKPOINT_ROOT", "checkpoint_root")):
        value = environ.get(ENV_PREFIX + suffix)
        if value:
            data[key] = value
    return data


def _resolve_paths(config: ServeConfig, base_dir: Path) -> ServeConfig:
    root = (base_dir / config.checkpoint_root).resolve()
    models = {
        name: spec.model_copy(update={"checkpoint": (base_dir / spec.checkpoint).resolve()})
        for name, spec in config.models.items()
    }
    return config.model_copy(update={"checkpoint_root": root, "models": models})


def _describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown key '{where}'")
        else:
            lines.append(f"'{where}': {error['msg']}")
    return "invalid configuration: " + "; ".join(lines)


def config_path_from_env(environ: Mapping[str, str] | None = None) -> Path | None:
    """``MODEL_SERVE_CONFIG`` when set (the CLI's ``--config`` wins over it)."""
    value = (os.environ if environ is None else environ).get(ENV_PREFIX + "CONFIG")
    return Path(value) if value else None


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where model-serve may write (demo checkpoints made on first run): ``MODEL_SERVE_HOME``."""
    env = os.environ if environ is None else environ
    value = env.get(ENV_PREFIX + "HOME")
    if value:
        return Path(value)
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "model-serve"
