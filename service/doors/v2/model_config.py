"""A served model's configuration in Triton's ``ModelConfig`` shape, built once for both v2 doors.

Tools written for Triton (perf_analyzer, Triton's dashboards, tritonclient's
``get_model_config``) read this before anything else: the batch dimension comes from
``max_batch_size`` (dims leave it out), and an input marked ``optional`` need not be sent.
Each model has one default input, ``image`` (encoded files, BYTES); ``input`` (the normalised
FP32 tensor) is optional. ``model_config`` is a plain dict in Triton's JSON form (what
``GET /v2/models/{name}/config`` answers); ``model_config_proto`` parses that same dict into the
gRPC door's message, so the two doors cannot disagree.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from service.doors.v2.infer import IMAGE, TENSOR, model_metadata
from service.pipeline.replica import ModelVersion
from service.pipeline.served import ServedModel

PLATFORM = "pytorch"


def model_config(served: ServedModel, version: ModelVersion) -> dict[str, Any]:
    """Triton's ``ModelConfig`` JSON of ``served`` as ``version`` serves it."""
    described = model_metadata(served, version)
    batching = served.spec.batching
    dynamic: dict[str, Any] = {"max_queue_delay_microseconds": round(batching.max_delay_ms * 1000)}
    if batching.adaptive:  # the size the batch cap measured best: what batches are cut to
        dynamic["preferred_batch_size"] = [served.batch_cap]
    return {
        "name": served.name,
        "platform": PLATFORM,
        "backend": PLATFORM,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": batching.max_batch_size,
        "input": [_tensor(tensor, optional=tensor["name"] == TENSOR) for tensor in described["inputs"]],
        "output": [_tensor(tensor) for tensor in described["outputs"]],
        "dynamic_batching": dynamic,
        "instance_group": instance_groups(served.name, served.devices),
        "parameters": {"default_input": {"string_value": IMAGE}},
    }


def model_config_proto(config: dict[str, Any]) -> model_config_pb2.ModelConfig:
    """The same configuration as the gRPC door's message."""
    message = model_config_pb2.ModelConfig()
    json_format.ParseDict(config, message)
    return message


def _tensor(tensor: dict[str, Any], *, optional: bool = False) -> dict[str, Any]:
    """Dims without the batch dimension. A tensor of one element per batch entry (the
    ``class_index`` output, shape ``[N]``) is Triton's ``dims: [1]`` with ``reshape: {shape: []}``,
    as Triton's own configs write it."""
    dims = tensor["shape"][1:]
    entry: dict[str, Any] = {"name": tensor["name"], "data_type": _config_type(tensor["datatype"])}
    if dims:
        entry["dims"] = dims
    else:
        entry["dims"] = [1]
        entry["reshape"] = {"shape": []}
    if optional:
        entry["optional"] = True
    return entry


def _config_type(datatype: str) -> str:
    """A v2 datatype's name in Triton's config enum: ``TYPE_`` + the name, ``BYTES`` as STRING."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def instance_groups(model: str, devices: list[str]) -> list[dict[str, Any]]:
    """One group per device, in the order the replicas are: how many replicas it runs, and
    for a GPU its index."""
    groups = []
    for device, count in Counter(devices).items():
        kind, _, index = device.partition(":")
        group: dict[str, Any] = {"name": f"{model}_{device}", "count": count}
        if kind == "cuda":
            group.update(kind="KIND_GPU", gpus=[int(index or 0)])
        else:
            group["kind"] = "KIND_CPU"
        groups.append(group)
    return groups
