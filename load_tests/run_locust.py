"""One command for the Locust load test: config, server, locust, verdict.

    python load_tests/run_locust.py --users 20 --duration 30 --max-p99-ms 2000 \
        [--spawn-rate N] [--out reports/locust]

1. Writes a config for the demo models into a temporary folder that is also its
   ``checkpoint_root``, with two digits checkpoints there: the demo one and the same weights with
   the last layer's bias nudged (same predictions, another version), so that the admin user can
   hot-reload back and forth while the others check every answer's content.
2. Starts ``model-serve serve`` on a free loopback port and waits for ``/readyz``.
3. Runs ``locust -f load_tests/locustfile.py --headless`` against it (bounded by a timeout),
   writing ``locust_stats.csv`` etc., ``locust_final_*.csv`` (the stats at exit, which the
   verdict reads) and ``locust.html`` into ``--out``.
4. Stops the server by its PID, prints locust's summary, and exits non-zero when any request
   failed, none were made, or the aggregated p99 is above ``--max-p99-ms``.
"""

from __future__ import annotations

import argparse
import csv
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
DIGITS_FILES = ("digits.safetensors", "digits_nudged.safetensors")
CSV_PREFIX = "locust"
BIAS_NUDGE = 0.001
READY_TIMEOUT_S = 300.0  # the demo checkpoints may be trained first on a trimmed install
STOP_TIMEOUT_S = 10  # locust's --stop-timeout: in-flight tasks finish instead of being cut


@dataclass(frozen=True)
class Verdict:
    """What the stats CSV says about the run, and whether that passes."""

    requests: int
    failures: int
    p99_ms: float | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self, max_p99_ms: float) -> str:
        p99 = "n/a" if self.p99_ms is None else f"{self.p99_ms:g} ms"
        head = "PASS" if self.ok else "FAIL"
        figures = f"{self.requests} requests, {self.failures} failures, p99 {p99} (max {max_p99_ms:g} ms)"
        return f"{head}: {figures}" + ("" if self.ok else ": " + "; ".join(self.problems))


def judge(stats_csv: Path, max_p99_ms: float, exceptions_csv: Path | None = None) -> Verdict:
    """The verdict from locust's ``*_stats.csv``: its ``Aggregated`` row, failures and p99; and
    from ``*_exceptions.csv`` (errors in the users' own code), which must be empty."""
    if not stats_csv.is_file():
        return Verdict(0, 0, None, (f"no stats file {stats_csv}: locust did not finish",))
    with stats_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    aggregated = next((row for row in rows if row.get("Name") == "Aggregated"), None)
    if aggregated is None:
        return Verdict(0, 0, None, (f"{stats_csv} has no Aggregated row",))
    requests = int(aggregated["Request Count"])
    failures = int(aggregated["Failure Count"])
    p99 = _number(aggregated.get("99%"))
    problems = []
    if requests == 0:
        problems.append("no requests were made")
    if failures:
        failing = [
            f"{row['Name']} ({row['Failure Count']})"
            for row in rows
            if row.get("Name") != "Aggregated" and int(row["Failure Count"])
        ]
        problems.append(f"{failures} request(s) failed: " + ", ".join(failing))
    if p99 is not None and p99 > max_p99_ms:
        problems.append(f"p99 {p99:g} ms is above {max_p99_ms:g} ms")
    if exceptions_csv is not None and exceptions_csv.is_file():
        with exceptions_csv.open(newline="") as handle:
            errors = sum(int(row.get("Count") or 0) for row in csv.DictReader(handle))
        if errors:
            problems.append(f"{errors} exception(s) in the locust users (see {exceptions_csv.name})")
    return Verdict(requests, failures, p99, tuple(problems))


def final_csvs(out: Path) -> tuple[Path, Path]:
    """(stats, exceptions) CSVs as at locust's exit: the locustfile's ``_final_`` files, which
    unlike locust's own (rewritten once a second, not at exit) include the last second."""
    paths = []
    for kind in ("stats", "exceptions"):
        final = out / f"{CSV_PREFIX}_final_{kind}.csv"
        paths.append(final if final.is_file() else out / f"{CSV_PREFIX}_{kind}.csv")
    return paths[0], paths[1]


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "N/A") else None
    except ValueError:
        return None


def write_config(folder: Path) -> Path:
    """The demo models' config in ``folder`` (its ``checkpoint_root``), with both digits files there."""
    import yaml
    from safetensors.torch import load_file, save_file

    from models.demo import DIGITS
    from service.checkpoints.architecture import build_model
    from service.demo import demo_config

    demo = demo_config()
    raw: dict[str, Any] = demo.model_dump(mode="json", exclude_defaults=True)
    raw.pop("server", None)  # no admin token (a secret) or host limits in the file
    raw["checkpoint_root"] = "."
    for name, spec in demo.models.items():
        shutil.copyfile(spec.checkpoint, folder / spec.checkpoint.name)
        raw["models"][name]["checkpoint"] = spec.checkpoint.name
    digits = demo.models[DIGITS.name]
    if digits.checkpoint.name != DIGITS_FILES[0]:
        raise RuntimeError(f"the demo digits checkpoint is {digits.checkpoint.name}, not {DIGITS_FILES[0]}")
    tensors = load_file(folder / DIGITS_FILES[0])
    last_bias = [
        key
        for key in build_model(digits.architecture, digits.init_args).state_dict()
        if key.endswith(".bias")
    ][-1]
    tensors[last_bias] = tensors[last_bias] + BIAS_NUDGE  # every logit + c: same softmax, new file
    save_file(tensors, folder / DIGITS_FILES[1])
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_locust(args: argparse.Namespace, url: str, checkpoint_root: Path, token: str) -> int:
    """Locust headless against ``url``; its output goes to ``--out/locust.log`` and is printed."""
    out: Path = args.out
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate or args.users),
        "-t",
        f"{args.duration}s",
        "--stop-timeout",
        str(STOP_TIMEOUT_S),
        "--host",
        url,
        "--csv",
        str(out / CSV_PREFIX),
        "--html",
        str(out / "locust.html"),
        "--only-summary",
        "--reload-dir",
        str(checkpoint_root),
        "--reload-checkpoints",
        ",".join(DIGITS_FILES),
        "--reload-interval",
        str(args.reload_interval),
    ]
    env = {**os.environ, "MODEL_SERVE_ADMIN_TOKEN": token, "PYTHONPATH": str(REPO)}
    log_path = out / "locust.log"
    limit = args.duration + STOP_TIMEOUT_S + 120
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = process.wait(limit)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = -1
            print(f"locust did not finish within {limit} s: killed", file=sys.stderr)
    print(log_path.read_text(errors="replace"), end="")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the whole load test; returns 0 only for a passing verdict."""
    parser = argparse.ArgumentParser(
        prog="python load_tests/run_locust.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--duration", type=int, default=30, help="seconds of load")
    parser.add_argument("--max-p99-ms", type=float, default=2000.0, help="aggregated p99 limit")
    parser.add_argument(
        "--spawn-rate", type=float, default=None, help="users started a second (default: all at once)"
    )
    parser.add_argument("--reload-interval", type=float, default=1.0, help="seconds between digits reloads")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "locust", help="CSV/HTML/log folder")
    args = parser.parse_args(argv)
    if args.users < 2:
        parser.error("--users must be at least 2: one admin user plus at least one predicting user")
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in [*args.out.glob(f"{CSV_PREFIX}_*.csv"), args.out / "locust.html"]:
        stale.unlink(missing_ok=True)  # a previous run's files must not stand in for this one's
    from load_tests.server_process import ServerProcess  # REPO is on sys.path by now (main)

    token = os.environ.get("MODEL_SERVE_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="model-serve-locust-") as tmp:
        root = Path(tmp).resolve()
        config = write_config(root)
        server = ServerProcess(config, args.out / "server.log", {"MODEL_SERVE_ADMIN_TOKEN": token})
        try:
            server.wait_ready(READY_TIMEOUT_S)
            print(
                f"server ready at {server.url} (log: {args.out / 'server.log'}); "
                f"locust: {args.users} users for {args.duration} s",
                flush=True,
            )
            code = run_locust(args, server.url, root, token)
        finally:
            server_code = server.stop()
    stats_csv, exceptions_csv = final_csvs(args.out)
    verdict = judge(stats_csv, args.max_p99_ms, exceptions_csv)
    print(f"reports: {args.out}/{CSV_PREFIX}_*.csv, {args.out}/locust.html")
    if code != 0:  # 1 for failed requests (named by the verdict) or errors in the users' code
        verdict = Verdict(
            verdict.requests,
            verdict.failures,
            verdict.p99_ms,
            (*verdict.problems, f"locust exited with {code}"),
        )
    if server_code != 0:
        verdict = Verdict(
            verdict.requests,
            verdict.failures,
            verdict.p99_ms,
            (*verdict.problems, f"the server exited with {server_code} after SIGTERM"),
        )
    print(verdict.line(args.max_p99_ms))
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # `python load_tests/run_locust.py` puts only load_tests/ there
    raise SystemExit(main())
