"""The published ``/openapi.json`` against the OpenAPI specification and against the real server:
openapi-spec-validator checks the document (every path parameter declared, as generated clients
need), and schemathesis fuzzes the v2 and ``/predict`` operations of a running server, checking
that none answers a server error and that every answer matches what the document says (status
codes, content types, headers, body schemas, ``Allow`` on 405s). The server stays healthy.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
from openapi_spec_validator import validate

from tests.support.serving import ServerProcess

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "unsupported_method",
    "allow_header_conformance",
)
# real values for the path parameters, so requests reach the handlers rather than a 404
CONFIG = '[parameters]\n"path.name" = "digits"\n'


def test_the_openapi_document_is_valid(demo_server: ServerProcess) -> None:
    document = httpx.get(f"{demo_server.url}/openapi.json").json()
    validate(document)
    infer = document["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"]
    assert {p["name"] for p in infer["parameters"] if p["in"] == "path"} == {"name", "version"}


def test_schemathesis_finds_no_failure_in_v2_and_predict(demo_server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    st = Path(sys.executable).parent / "st"
    command = [
        str(st),
        "--config-file",
        str(tmp_path / "schemathesis.toml"),
        "run",
        f"{demo_server.url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--include-path-regex",
        "^/(v2|predict)",
        "--max-examples",
        "10",
        "--seed",
        "1",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--no-shrink",
    ]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failures" not in run.stdout.rsplit("====", 2)[-1], run.stdout[-3000:]
    assert httpx.get(f"{demo_server.url}/healthz").status_code == 200
    assert httpx.get(f"{demo_server.url}/v2/health/ready").json() == {"ready": True}
