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
    channels: Literal[1, 3] = Field(3, description="1: converted to grey; 3: converted to RGB")
    mean: tuple[float, ...] = Field(
        _IMAGENET_MEAN,
        description="subtracted after scaling to [0, 1]; 1 value or one per channel "
        "(default ImageNet's; with channels 1 their average, [0.449])",
    )
    std: tuple[float, ...] = Field(
        _IMAGENET_STD,
        description="divided by after the mean; positive, 1 value or one per channel "
        "(default ImageNet's; with channels 1 their average, [0.226])",
    )
    resize: Literal["stretch", "center_crop"] = Field(
        "stretch",
        description="stretch: straight to size (no crop, bilinear); center_crop: scale to cover "
        "size, then crop the centre",
    )

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

    max_batch_size: int = Field(32, ge=1, le=4096, description="the most images in one forward")
    max_delay_ms: float = Field(
        0.0,
        ge=0,
        le=10_000,
        description="0: an idle replica takes what is queued at once; above 0: a batch may wait "
        "this long to fill",
    )
    max_queue_size: int = Field(1024, ge=1, description="images queued before 503 queue_full")
    adaptive: bool = Field(
        True,
        description="cap batches at the size with the best measured images/s (timed at warm-up, "
        "refitted while serving); false: always up to max_batch_size",
    )

    @property
    def max_delay_s(self) -> float:
        return self.max_delay_ms / 1000.0


# The kinds of model; each has its object in ``service.pipeline.tasks``, which owns all that differs.
TaskName = Literal["classification", "segmentation"]


class ModelSpec(_Frozen):
    """One served model: its architecture, checkpoint, input and serving policy."""

    task: TaskName = Field(
        "classification", description="classification: top-k labels; segmentation: a class-index mask"
    )
    architecture: str = Field(
        description="'importable.module:callable' returning an nn.Module, e.g. torchvision.models:resnet18"
    )
    init_args: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments for the architecture callable"
    )
    checkpoint: Path = Field(
        description="the weights: a file (.pt, .pth, .bin, .safetensors), a torch.distributed.checkpoint "
        "folder, a Hugging Face *.index.json or the folder holding one; relative to the config file's folder"
    )
    state_dict_key: str | None = Field(
        None,
        description="the entry of the checkpoint to serve (e.g. state_dict, state_dict_ema, model); "
        "default: the averaged (EMA) weights when present, else the known wrapper key",
    )
    input: InputSpec = Field(description="how an image becomes the input tensor (section below)")
    labels: tuple[str, ...] | None = Field(
        None, description="class names by index; default: the index as a string"
    )
    batching: BatchingSpec = Field(BatchingSpec(), description="dynamic batching (section below)")
    devices: Literal["auto", "cpu"] | tuple[str, ...] = Field(
        "auto",
        description="auto: every visible GPU, else cpu; cpu; or a list such as [cuda:0, cuda:1] "
        "(one replica per entry, repeats allowed)",
    )
    output: int | str | None = Field(
        None,
        description="index or key of the logits when forward returns a tuple/list or dict; "
        "default: a dict's 'out', a tuple's first element",
    )
    trust_pickle: bool = Field(
        False, description="load checkpoints that need arbitrary unpickling (only files you trust)"
    )
    watch: bool = Field(False, description="reload when the checkpoint file's content changes")
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="fixed intra-op threads per CPU replica of this model; default: server.torch_threads",
    )
    cpu_replicas: int | None = Field(
        None,
        ge=1,
        le=64,
        description="CPU replicas (devices cpu, or auto without a GPU); default: one per free core",
    )
    precision: Literal["float32", "float16", "bfloat16"] = Field(
        "float32",
        description="the weights' dtype (cast once at load) and the inputs' (cast on the device); "
        "softmax, argmax and scores stay float32",
    )
    channels_last: bool = Field(
        False,
        description="module and inputs in torch.channels_last memory format; false: the module "
        "as loaded and the pixels as decoded (colour images are NHWC-strided already)",
    )
    fold_batchnorm: bool = Field(
        False,
        description="fold each BatchNorm into the convolution before it, once at load (the same answers "
        "up to float rounding, one pass over the activations fewer); needs a model torch.fx traces",
    )
    compile: Literal[False, "default", "reduce-overhead", "max-autotune"] = Field(
        False,
        description="torch.compile mode, compiled and warmed for every batch bucket (powers of two up "
        "to max_batch_size, and max_batch_size) before the model is ready; false: eager",
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

    max_body_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="request body limit, checked while streaming; 413 above"
    )
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="request line + headers; 431 above")
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request head must arrive within this of connect or the last answer"
    )
    keep_alive_timeout_s: int = Field(
        5, ge=1, description="an idle keep-alive connection is closed after this (uvicorn's, whole seconds)"
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        description="open connections served; past it the longest-waiting unfinished head is closed "
        "(else 503 except probes); default 2048",
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="pixels per image, checked before decoding; 413 above"
    )
    max_images_per_request: int = Field(64, ge=1, description="multipart 'file' parts; 413 above")
    request_timeout_s: float = Field(
        30.0, gt=0, description="deadline for upload plus prediction: 408 (slow upload) or 504"
    )
    drain_grace_s: float = Field(
        20.0, ge=0, description="on SIGTERM: readiness 503, in-flight requests get this long to finish"
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="intra-op threads of every CPU replica (a model's own torch_threads wins); "
        "default: replicas share the free cores",
    )
    watch_interval_s: float = Field(1.0, gt=0, description="how often watched checkpoints are checked")
    watch_quiet_s: float = Field(
        5.0,
        ge=0,
        description="a watched checkpoint file with no .sha256 beside it loads only once its size, "
        "mtime and inode have held still this long (at least one watch interval)",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one object per line, with request_id"
    )
    admin_token: str | None = Field(
        None,
        repr=False,
        description="Bearer token of the admin routes (reload, rollback, v2 repository load and unload); "
        "unset: a random one, logged once at start",
    )
    access_log: bool = Field(
        True, description="one line per request or gRPC call on logger service.access (audit lines always)"
    )
    grpc_port: int | None = Field(
        8081, ge=0, le=65535, description="v2 gRPC port (0: any free port); null turns gRPC off"
    )
    max_inflight_pixels: int = Field(
        100_000_000,
        ge=1,
        description=(
            "decoded pixels held by all requests at once (503 above, 413 for one request that never "
            "fits). A pixel costs up to 12 bytes at the peak of a decode: Pillow keeps RGB in 4, an "
            "EXIF rotation makes a second copy, a CMYK or 16-bit conversion a third. 100 M x 12 B = "
            "1.2 GB, plus 256 MiB of bodies, leaves ~1.5 GiB of the 3 GiB pod limit "
            "(k8s/base/deployment.yaml) to torch, the models and their replicas"
        ),
    )
    max_inflight_body_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="request body bytes held by all requests at once"
    )
    max_decode_seconds_per_request: float = Field(
        10.0,
        gt=0,
        description="decode-thread seconds one request's images may take (they are decoded in turn "
        "with every other request's, one image each); past it the rest are not decoded: 413",
    )

    @model_validator(mode="after")
    def _check_inflight(self) -> ServerSpec:
        """One request at its own limits must fit the shared budgets, or it could never be served."""
        if self.max_inflight_pixels < self.max_image_pixels:
            raise ValueError(
                f"max_inflight_pixels ({self.max_inflight_pixels}) is below max_image_pixels "
                f"({self.max_image_pixels}): raise it, or lower max_image_pixels"
            )
        if self.max_inflight_body_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_inflight_body_bytes ({self.max_inflight_body_bytes}) is below max_body_bytes "
                f"({self.max_body_bytes}): raise it, or lower max_body_bytes"
            )
        return self


class ServeConfig(_Frozen):
    """The whole configuration; paths are absolute once loaded."""

    default_model: str | None = Field(
        None, description="the model /predict uses without ?model=; default: the first listed"
    )
    checkpoint_root: Path = Field(
        Path("checkpoints"),
        description="reload reads only files under this folder; relative to the config file's folder",
    )
    server: ServerSpec = Field(ServerSpec(), description="process-wide limits (section below)")
    models: dict[str, ModelSpec] = Field(
        description="the served models by name (section below); at least one"
    )

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


# Every server key has a MODEL_SERVE_<KEY> override but those of the watcher's timing, which
# belong with the models' own ``watch`` in the config file.
_CONFIG_FILE_ONLY = {"watch_interval_s", "watch_quiet_s"}
_SERVER_ENV = {key.upper(): key for key in ServerSpec.model_fields if key not in _CONFIG_FILE_ONLY}
# An environment value that stands for a config ``null`` (e.g. MODEL_SERVE_GRPC_PORT=off).
_NULL_WORDS = {"null", "none", "off"}


def _with_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    server = dict(data.get("server") or {})
    for suffix, key in _SERVER_ENV.items():
        value = environ.get(ENV_PREFIX + suffix)
        if value:
            server[key] = None if value.lower() in _NULL_WORDS else value
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
