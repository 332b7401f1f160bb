"""Peak memory while model-serve loads a large checkpoint, per format (issue 21, item 8).

For each format it writes a checkpoint of ``--size-mb`` of float32 weights (a stack of square
``nn.Linear`` layers) into a scratch folder, then loads it in a fresh Python process exactly as
the server does (``load_weights``: read and verify, unwrap, strict load into the model) and
reads that process's peak RSS (``VmHWM``, reset just before the load, since importing torch
peaks higher than small loads do; ``ru_maxrss`` is printed too). The model's own memory is
allocated and touched before the load, so ``load overhead`` is what loading needs beyond the
model itself. The DCP
folder also holds optimizer entries twice the model's size, which must not be read. The scratch
folder is deleted at the end.

    python load_tests/checkpoint_memory.py [--size-mb 1024] [--formats pt,pt-whole,dcp,...]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMATS = ("pt", "pt-whole", "safetensors", "dcp", "sharded-safetensors", "sharded-bin")
WIDTH = 2048  # one layer: 16 MiB of float32
ARCH = "load_tests.checkpoint_memory:wide_mlp"


def wide_mlp(*, layers: int, width: int = WIDTH) -> nn.Module:
    """``layers`` square bias-free linear layers, allocated but not initialised (fast at any size)."""
    with torch.device("meta"):
        model = nn.Sequential(*(nn.Linear(width, width, bias=False) for _ in range(layers)))
    return model.to_empty(device="cpu")


def write(kind: str, folder: Path, layers: int) -> Path:
    """The checkpoint of ``kind`` with seeded random weights; returns the path to load."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = {key: torch.randn_like(value) for key, value in wide_mlp(layers=layers).state_dict().items()}
    path = folder / kind
    if kind in ("pt", "pt-whole"):
        torch.save(state, path.with_suffix(".pt"))
        return path.with_suffix(".pt")
    if kind == "safetensors":
        save_file(state, path.with_suffix(".safetensors"))
        return path.with_suffix(".safetensors")
    if kind == "dcp":
        import torch.distributed.checkpoint as dcp

        moments = {
            k: {"exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.zeros_like(v)} for k, v in state.items()
        }
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save({"model": state, "optimizer": {"state": moments}}, checkpoint_id=path, no_dist=True)
        return path
    return _sharded(state, path, safetensors=kind == "sharded-safetensors", save_file=save_file)


def _sharded(state: dict[str, torch.Tensor], folder: Path, *, safetensors: bool, save_file: Any) -> Path:
    folder.mkdir()
    keys, shards, weight_map = list(state), 4, {}
    for number in range(shards):
        name = f"model-{number + 1:05d}-of-{shards:05d}.{'safetensors' if safetensors else 'bin'}"
        part = {key: state[key] for key in keys[number::shards]}
        (save_file if safetensors else torch.save)(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    index = folder / ("model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json")
    index.write_text(json.dumps({"weight_map": weight_map}))
    return folder


def measure(kind: str, path: Path, layers: int) -> dict[str, Any]:
    """Run in the child: the model allocated and touched, then loaded; peak RSS in MiB."""
    import service.checkpoints.mapped
    from service.checkpoints.loading import load_weights

    if kind == "pt-whole":  # the file read whole, as every file below MAPPED_BYTES is
        service.checkpoints.mapped.MAPPED_BYTES = 1 << 62
    torch.set_num_threads(1)
    model = wide_mlp(layers=layers)
    for parameter in model.parameters():
        parameter.data.zero_()
    # Importing torch peaks above its steady state; reset the peak (VmHWM) so only the load counts
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_mib("VmRSS")
    started = time.monotonic()
    report = load_weights(model, path)
    seconds = time.monotonic() - started
    peak = _status_mib("VmHWM")
    return {
        "format": kind,
        "loaded_as": report.format,
        "model_mib": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20),
        "on_disk_mib": round(_disk_bytes(path) / 2**20),
        "rss_before_load_mib": before,
        "peak_rss_mib": peak,
        "load_overhead_mib": peak - before,
        "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # KiB on Linux
        "load_s": round(seconds, 2),
    }


def _status_mib(field: str) -> int:
    """A /proc/self/status memory figure (kB) in MiB: VmRSS now, VmHWM the peak since the reset."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024)
    raise RuntimeError(f"no {field} in /proc/self/status")


def _disk_bytes(path: Path) -> int:
    files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files)


def _child(kind: str, path: Path, layers: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--measure", kind, str(path), "--layers", str(layers)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measuring {kind} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="float32 weights per checkpoint")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated: {', '.join(FORMATS)}")
    parser.add_argument("--measure", nargs=2, metavar=("FORMAT", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]), args.layers)))
        return 0
    layers = max(1, args.size_mb * 2**20 // (WIDTH * WIDTH * 4))
    scratch = Path(tempfile.mkdtemp(prefix="checkpoint-memory-"))
    try:
        for kind in args.formats.split(","):
            path = write(kind, scratch, layers)
            print(json.dumps(_child(kind, path, layers)), flush=True)
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
