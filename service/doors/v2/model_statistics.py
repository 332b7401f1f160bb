"""Served models' statistics in Triton's shape (``ModelStatisticsResponse``), for both v2 doors.

Read from each serving version's ``VersionStatistics`` (``service.pipeline.statistics``), the
accumulator fed where ``/metrics`` is observed. ``model_statistics`` is the JSON that
``GET /v2/models[/{name}[/versions/{version}]]/stats`` answers, every count and duration a
JSON number (perf_analyzer reads them as such); ``statistics_proto`` parses the same dict into
the gRPC door's message. Only the version serving now is listed: a reload starts from zero, as
a new version does in Triton (``/metrics`` keeps the totals).

An entry's ``version`` is a number, the version's load time in ms since the epoch: Triton's
versions are integers and perf_analyzer parses them as such (it takes the highest, and a
checkpoint hash such as ``08bb3479439f`` would read as 8 or not at all); it rises with every
reload. A request may name the version by that number or by its checkpoint hash.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb

from service.pipeline.registry import Registry
from service.pipeline.replica import ModelVersion
from service.pipeline.served import ServedModel
from service.pipeline.statistics import Duration, PhaseDurations, VersionStatistics

_ZERO = {"count": 0, "ns": 0}


def model_statistics(registry: Registry, name: str = "", version: str | None = None) -> dict[str, Any]:
    """Every model's statistics for an empty ``name``, else the named model's (404 when
    unknown, or when ``version`` is not the one serving)."""
    if name:
        served = registry.named(name)
        active = served.active
        if active is None or version != statistics_version(active):
            served.check_version(version)
        chosen = [served]
    else:
        chosen = list(registry.models.values())
    return {"model_stats": [_model(served) for served in chosen if served.active is not None]}


def statistics_proto(statistics: dict[str, Any]) -> pb.ModelStatisticsResponse:
    """The same statistics as the gRPC door's message."""
    message = pb.ModelStatisticsResponse()
    json_format.ParseDict(statistics, message)
    return message


def statistics_version(version: ModelVersion) -> str:
    """The number a version's statistics are listed under (see the module docstring)."""
    return str(int(version.loaded_at * 1000))


def _model(served: ServedModel) -> dict[str, Any]:
    active = served.active
    assert active is not None
    stats: VersionStatistics = active.statistics
    return {
        "name": served.name,
        "version": statistics_version(active),
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": _duration(stats.success),
            "fail": _duration(stats.fail),
            "queue": _duration(stats.queue),
            **_phases(stats.compute),
            "cache_hit": dict(_ZERO),  # no response cache: always zero
            "cache_miss": dict(_ZERO),
        },
        "batch_stats": [
            {"batch_size": size, **_phases(phases)} for size, phases in sorted(stats.batches.items())
        ],
    }


def _phases(phases: PhaseDurations) -> dict[str, dict[str, int]]:
    return {
        "compute_input": _duration(phases.compute_input),
        "compute_infer": _duration(phases.compute_infer),
        "compute_output": _duration(phases.compute_output),
    }


def _duration(duration: Duration) -> dict[str, int]:
    return {"count": duration.count, "ns": duration.ns}
