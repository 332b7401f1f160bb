"""The Open Inference Protocol's meaning, shared by its REST and gRPC doors.

A door turns its wire format into an ``InferRequest`` (checked ``InputTensor``s and the
outputs asked for); ``infer`` turns that into jobs on the served model's one pipeline (the same
decoding, batcher, limits, version pinning and metrics as ``/predict``) and the task's results
into ``OutputTensor``s. Metadata answers are plain dicts both doors render.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from service import __version__
from service.config import ServerSpec
from service.doors.v2.tensors import InputTensor, OutputTensor
from service.errors import BadRequest, TooLarge
from service.pipeline.call import Call
from service.pipeline.replica import ModelVersion
from service.pipeline.served import ServedModel
from service.pipeline.tasks import Job, Wants

EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "model_repository", "statistics")
IMAGE, TENSOR = "image", "input"


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the client asked for; ``classification`` is Triton's top-k extension."""

    name: str
    classification: int | None = None
    binary: bool = False


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A v2 inference request, independent of the door it came through."""

    id: str | None
    inputs: Sequence[InputTensor]
    outputs: Sequence[RequestedOutput] | None  # None: every output


def server_metadata() -> dict[str, Any]:
    return {"name": "model-serve", "version": __version__, "extensions": list(EXTENSIONS)}


def model_metadata(served: ServedModel, version: ModelVersion) -> dict[str, Any]:
    """Inputs and outputs with ``-1`` for the batch dimension; ``image`` is the default input,
    ``input`` the optional one (``model_config`` says so)."""
    channels, height, width = served.input_shape
    return {
        "name": served.name,
        "versions": [version.version],
        "platform": "pytorch",
        "inputs": [
            # [N, 1], and [N] accepted too: a tool that drops the batch dim needs a shape left
            {"name": IMAGE, "datatype": "BYTES", "shape": [-1, 1]},
            {"name": TENSOR, "datatype": "FP32", "shape": [-1, channels, height, width]},
        ],
        "outputs": served.task.v2_outputs(version.classes, (height, width)),
    }


async def infer(call: Call, request: InferRequest) -> list[OutputTensor]:
    """The request's outputs, in the order asked (else every output of the model's task)."""
    served = call.served
    wanted = _check_outputs(served, request.outputs)
    tensor = _the_input(request.inputs)
    wants = served.task.v2_wants([(output.name, output.classification) for output in wanted])
    jobs = await _jobs(served, tensor, wants, call.limits)
    results = await call.run(jobs)
    return [_output(served, output, results) for output in wanted]


def _the_input(inputs: Sequence[InputTensor]) -> InputTensor:
    """The one input the request is served from. A request carrying both ``image`` and
    ``input`` is served from ``input``: tools that send every listed input with generated data
    (perf_analyzer without ``--input-data``) can only make a valid tensor, never a valid file."""
    for tensor in inputs:
        expected = {IMAGE: "BYTES", TENSOR: "FP32"}.get(tensor.name)
        if expected is None:
            raise BadRequest(f"unknown input {tensor.name!r}: send {IMAGE!r} (BYTES) or {TENSOR!r} (FP32)")
        if tensor.datatype != expected:
            raise BadRequest(f"input {tensor.name!r} must be {expected}, got {tensor.datatype}")
    names = sorted(tensor.name for tensor in inputs)
    if names not in ([IMAGE], [TENSOR], [IMAGE, TENSOR]):
        raise BadRequest(f"send one input, {IMAGE!r} (BYTES) or {TENSOR!r} (FP32); got {names}")
    return next(tensor for tensor in inputs if tensor.name == names[-1])


async def _jobs(served: ServedModel, tensor: InputTensor, wants: Wants, limits: ServerSpec) -> list[Job]:
    count = tensor.shape[0] if tensor.shape else 0
    if count < 1:
        raise BadRequest(f"input {tensor.name!r} holds no element: shape {list(tensor.shape)}")
    if count > limits.max_images_per_request:
        raise TooLarge(f"{count} images in one request; at most {limits.max_images_per_request} are accepted")
    if tensor.name == IMAGE:
        if tensor.shape[1:] not in ((), (1,)):
            raise BadRequest(
                f"input 'image' must have shape [N, 1] or [N] (one file each), got {list(tensor.shape)}"
            )
        assert isinstance(tensor.values, list)
        return await served.prepare(tensor.values, wants)
    if tensor.shape[1:] != served.input_shape:
        raise BadRequest(
            f"input 'input' must have shape [N, {', '.join(map(str, served.input_shape))}] for this model, "
            f"got {list(tensor.shape)}"
        )
    assert isinstance(tensor.values, np.ndarray)
    values = np.array(tensor.values, dtype=np.float32)  # owned and writable, whatever it came from
    if not np.isfinite(values).all():
        raise BadRequest("input 'input' holds NaN or infinite values")
    size = served.spec.input.size
    served.metrics.images_per_request.observe(count)
    return [Job(torch.from_numpy(row), size, wants) for row in values]


def _check_outputs(served: ServedModel, asked: Sequence[RequestedOutput] | None) -> list[RequestedOutput]:
    names = served.task.outputs
    if asked is None or not asked:
        return [RequestedOutput(name) for name in names]
    ranked = served.task.ranked_output
    for output in asked:
        if output.name not in names:
            raise BadRequest(f"unknown output {output.name!r}; this model has {list(names)}")
        if output.classification is not None and (output.name != ranked or output.classification < 1):
            applies = f"to {ranked!r}" if ranked else "to no output of this model"
            raise BadRequest(f"the classification extension applies {applies} with a count of at least 1")
    return list(asked)


def _output(served: ServedModel, output: RequestedOutput, results: list[Any]) -> OutputTensor:
    datatype, values = served.task.v2_values(output.name, results, output.classification, served.spec.labels)
    return OutputTensor(output.name, datatype, values)
