"""Extract each KServe CRD version's ``openAPIV3Schema`` into a small, reproducible file.

    python tests/deploy/vendor/kserve/extract_schemas.py UPSTREAM/config/crd/full

writes ``<group>_<plural>.<version>.schema.json.gz`` beside this script for every CRD named
in ``CRDS``: the schema unchanged (keys sorted, compact JSON, gzip with a zero timestamp, so
the same input always gives the same bytes). The tests read these instead of the full CRDs
(2 MB of YAML, mostly the InferenceService's repeated pod specs).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CRDS = ("serving.kserve.io_servingruntimes.yaml", "serving.kserve.io_inferenceservices.yaml")


def extract(crd_path: Path, out_dir: Path) -> list[Path]:
    """One ``.schema.json.gz`` per served version of the CRD in ``crd_path``."""
    crd = yaml.safe_load(crd_path.read_text())
    group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
    written = []
    for version in crd["spec"]["versions"]:
        if not version.get("served", False):
            continue
        schema = version["schema"]["openAPIV3Schema"]
        data = json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()
        path = out_dir / f"{group}_{plural}.{version['name']}.schema.json.gz"
        path.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    for name in CRDS:
        for path in extract(Path(argv[0]) / name, HERE):
            print(path.name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
