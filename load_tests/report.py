"""The benchmark's figures as a table, the targets computed from them, and the report files.

Every target compares figures from the same run: repeats of one setting differ by 15-20% on
a shared machine, so an absolute figure from another run proves nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

try:
    from load_tests.wrk import WrkResult
except ModuleNotFoundError:  # run as `python load_tests/benchmark.py`: only load_tests/ is on the path
    from wrk import WrkResult  # type: ignore[no-redef]

NAIVE, SERVE = "naive", "model-serve"
NO_DROP = 0.95  # "32 clients must not drop below 8 clients", within the noise of one run
Load = dict[tuple[str, str, int], WrkResult]  # (model, system, clients) -> result


@dataclass(frozen=True)
class RawResult:
    """The in-process pipeline at one batch size; latencies are per batch."""

    model: str
    batch: int
    images_per_s: float
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Target:
    """One goal computed from this run's figures."""

    name: str
    value: float
    unit: str
    goal: str
    passed: bool

    def line(self) -> str:
        value = f"{self.value:.2f}" if isinstance(self.value, float) else str(self.value)
        verdict = "PASS" if self.passed else "MISS"
        return f"{self.name}: {value}{self.unit} (target {self.goal}) {verdict}"


def compute_targets(raw: list[RawResult], load: Load) -> list[Target]:
    """The targets whose figures this run measured (a narrowed run checks fewer)."""
    best: dict[str, float] = {}
    for row in raw:
        best[row.model] = max(best.get(row.model, 0.0), row.images_per_s)
    found = []
    for name in ("shapes", "resnet18"):
        if (name, SERVE, 32) in load:
            ratio = load[name, SERVE, 32].rps / best[name]
            found.append(
                Target(f"{name} 32 clients: model-serve / raw best", ratio, "x", ">= 0.95", ratio >= 0.95)
            )
        if (name, SERVE, 32) in load and (name, SERVE, 8) in load:
            ratio = load[name, SERVE, 32].rps / load[name, SERVE, 8].rps
            found.append(
                Target(
                    f"{name} model-serve: 32 clients / 8 clients",
                    ratio,
                    "x",
                    f">= {NO_DROP} (no drop)",
                    ratio >= NO_DROP,
                )
            )
    if ("digits", SERVE, 32) in load:
        serve = load["digits", SERVE, 32]
        ratio = serve.rps / load["digits", NAIVE, 32].rps
        found.append(Target("digits 32 clients: model-serve / naive", ratio, "x", ">= 2.5", ratio >= 2.5))
        found.append(
            Target("digits 32 clients: model-serve p99", serve.p99_ms, " ms", "< 30 ms", serve.p99_ms < 30)
        )
    for row in raw:
        if row.batch == 1 and (row.model, SERVE, 1) in load:
            extra = load[row.model, SERVE, 1].p50_ms - row.p50_ms
            found.append(
                Target(
                    f"{row.model} 1 client: model-serve p50 - raw batch-1 p50",
                    extra,
                    " ms",
                    "<= 1 ms",
                    extra <= 1.0,
                )
            )
    errors = sum(result.errors for result in load.values())
    found.append(Target("failed answers (non-2xx + socket errors), all runs", errors, "", "0", errors == 0))
    return found


def table(raw: list[RawResult], load: Load) -> list[str]:
    """Markdown rows per model: raw batches first, then each server at each client count."""
    lines = [
        "| model | system | load | img/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(row.model for row in raw):
        lines += [
            f"| {name} | raw | batch {r.batch} | {r.images_per_s:,.1f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | - |"
            for r in raw
            if r.model == name
        ]
        lines += [
            f"| {name} | {system} | {count} client{'s' * (count != 1)} | {w.rps:,.1f} | "
            f"{w.p50_ms:.2f} | {w.p99_ms:.2f} | {w.errors} |"
            for (model, system, count), w in load.items()
            if model == name
        ]
    return lines


def write_report(
    out: Path, settings: dict[str, Any], raw: list[RawResult], load: Load, targets: list[Target]
) -> str:
    """The report as markdown text (also ``benchmark.md``) and every figure in ``benchmark.json``."""
    header = ", ".join(f"{key} {value}" for key, value in settings.items())
    text = (
        "\n".join(
            [
                f"# model-serve benchmark ({header})",
                "",
                *table(raw, load),
                "",
                "## Targets",
                "",
                *(f"- {target.line()}" for target in targets),
            ]
        )
        + "\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.md").write_text(text)
    figures = {
        "settings": settings,
        "raw": [asdict(row) for row in raw],
        "load": [
            {"model": model, "system": system, "clients": count, "images_per_s": w.rps, **asdict(w)}
            for (model, system, count), w in load.items()
        ],
        "targets": [asdict(target) for target in targets],
    }
    (out / "benchmark.json").write_text(json.dumps(figures, indent=2) + "\n")
    return text
