"""The KServe runtime and its examples validate against KServe's own CRD schemas (unknown
fields are errors), agree with each other and with the image, and a model folder laid out the
way KServe mounts it (/mnt/models) serves the same answers as the model in-process."""

from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import torch
import yaml

from models.demo import CHECKPOINT_DIR, DIGITS, SAMPLES_DIR
from models.demo_training import load_demo_model
from service.config import build_config
from tests.deploy.test_k8s import KUBERNETES_VERSION, _render
from tests.support.reference import preprocess
from tests.support.serving import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
KSERVE = ROOT / "k8s" / "kserve"
VENDOR = Path(__file__).resolve().parent / "vendor" / "kserve"
SCHEMA_FILES = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "serving.kserve.io_servingruntimes.v1alpha1",
    ("serving.kserve.io/v1beta1", "InferenceService"): "serving.kserve.io_inferenceservices.v1beta1",
}
MODEL_MOUNT = Path("/mnt/models")  # where KServe's storage initializer puts the storageUri
CONFIG_NAME = "model-serve.yaml"
EXAMPLE_CONFIG = KSERVE / "example-model" / CONFIG_NAME
# What the Open Inference Protocol issue asks of the runtime.
PORTS = {"http1": 8080, "h2c": 8081}
PROBE_PATHS = {
    "startupProbe": "/v2/health/ready",
    "readinessProbe": "/v2/health/ready",
    "livenessProbe": "/v2/health/live",
}
ANNOTATIONS = {"prometheus.kserve.io/port": "8080", "prometheus.kserve.io/path": "/metrics"}
MODEL_FORMAT = {"name": "pytorch-state-dict", "version": "1", "autoSelect": True}

Manifest = dict[str, Any]


# ---- strict CRD schemas -------------------------------------------------------------------


def _strict(schema: Manifest) -> Manifest:
    """The schema with every listed-properties object closed to other fields, as the API server
    rejects unknown fields (``kubectl apply --validate=strict``), except where the CRD says
    ``x-kubernetes-preserve-unknown-fields``; int-or-string fields take both types."""
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {name: _strict(sub) for name, sub in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out[key] = _strict(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [_strict(sub) for sub in schema[key]]
    if schema.get("x-kubernetes-int-or-string") and "anyOf" not in schema:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


@functools.cache
def _validator(api_version: str, kind: str) -> jsonschema.Draft4Validator:
    # OpenAPI 3.0's schema object is a JSON Schema draft 4/5 dialect.
    raw = gzip.decompress((VENDOR / f"{SCHEMA_FILES[api_version, kind]}.schema.json.gz").read_bytes())
    schema = _strict(json.loads(raw))
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def _schema_errors(document: Manifest) -> list[str]:
    validator = _validator(document["apiVersion"], document["kind"])
    return sorted(
        f"{'.'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in validator.iter_errors(document)
    )


# ---- the manifests ------------------------------------------------------------------------


def _example(name: str) -> Manifest:
    document: Manifest = yaml.safe_load((KSERVE / name).read_text())
    return document


def _documents() -> Iterator[tuple[str, Manifest]]:
    """Every object the kustomization renders, then every example file, with where it is from."""
    for document in _render("kserve"):
        yield f"kustomize:{document['kind']}", document
    for path in sorted(KSERVE.glob("*.example.yaml")):
        yield path.name, _example(path.name)


def _kserve_documents() -> list[tuple[str, Manifest]]:
    return [(origin, doc) for origin, doc in _documents() if (doc["apiVersion"], doc["kind"]) in SCHEMA_FILES]


def _runtime() -> Manifest:
    (runtime,) = [doc for doc in _render("kserve") if doc["kind"] == "ServingRuntime"]
    return runtime


def _container() -> Manifest:
    (container,) = _runtime()["spec"]["containers"]
    return dict(container)


def _inference_services() -> list[tuple[str, Manifest]]:
    return [(origin, doc) for origin, doc in _kserve_documents() if doc["kind"] == "InferenceService"]


def test_the_kustomization_installs_only_the_runtime() -> None:
    assert [doc["kind"] for doc in _render("kserve")] == ["ServingRuntime"]
    kinds = {doc["kind"] for _, doc in _kserve_documents()}
    assert kinds == {"ServingRuntime", "InferenceService"}
    assert len(_inference_services()) >= 2  # the plain example and the KEDA one


def test_every_kserve_object_validates_strictly_against_its_crd() -> None:
    failures = {origin: errors for origin, doc in _kserve_documents() if (errors := _schema_errors(doc))}
    assert not failures


def test_metadata_validates_as_object_meta() -> None:
    """The CRD schemas leave metadata open; Kubernetes' own ObjectMeta schema does not."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for _, document in _documents():
        holder = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": document["metadata"]}
        kubernetes_validate.validate(holder, KUBERNETES_VERSION, strict=True)


def test_other_examples_validate_against_the_kubernetes_schema() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    others = [doc for _, doc in _documents() if (doc["apiVersion"], doc["kind"]) not in SCHEMA_FILES]
    assert {doc["kind"] for doc in others} == {"HorizontalPodAutoscaler"}
    for document in others:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def _parent(doc: Manifest, path: str) -> tuple[Any, str]:
    """The node holding the last part of a dotted path (digits index lists), and that part."""
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    return node, last


def _set(path: str, value: Any) -> Callable[[Manifest], None]:
    def mutate(doc: Manifest) -> None:
        node, last = _parent(doc, path)
        node[last] = value

    return mutate


def _rename(path: str, new_name: str) -> Callable[[Manifest], None]:
    def mutate(doc: Manifest) -> None:
        node, last = _parent(doc, path)
        node[new_name] = node.pop(last)

    return mutate


MISSPELT = {
    "protocolVersion in the runtime spec": (
        "ServingRuntime",
        _set("spec.protocolVersion", "v2"),
        "protocolVersion",
    ),
    "containres": ("ServingRuntime", _rename("spec.containers", "containres"), "containres"),
    "readinesProbe": (
        "ServingRuntime",
        _rename("spec.containers.0.readinessProbe", "readinesProbe"),
        "readinesProbe",
    ),
    "a field of a supported format": (
        "ServingRuntime",
        _set("spec.supportedModelFormats.0.autoselect", True),
        "autoselect",
    ),
    "modelFormt": (
        "InferenceService",
        _rename("spec.predictor.model.modelFormat", "modelFormt"),
        "modelFormt",
    ),
    "minReplica": ("InferenceService", _rename("spec.predictor.minReplicas", "minReplica"), "minReplica"),
    "protocolVersions in the model": (
        "InferenceService",
        _set("spec.predictor.model.protocolVersions", ["v2"]),
        "protocolVersions",
    ),
}


def _first(kind: str) -> Manifest:
    (document, *_) = [doc for _, doc in _kserve_documents() if doc["kind"] == kind]
    return copy.deepcopy(document)


@pytest.mark.parametrize("case", MISSPELT, ids=list(MISSPELT))
def test_a_misspelt_or_misplaced_field_fails(case: str) -> None:
    kind, mutate, field = MISSPELT[case]
    document = _first(kind)
    assert not _schema_errors(document)
    mutate(document)
    errors = _schema_errors(document)
    assert any(f"'{field}' was unexpected" in error for error in errors), errors


@pytest.mark.parametrize(
    ("mutate", "valid"),
    [
        (_set("spec.containers.0.readinessProbe.httpGet.port", "http1"), True),
        (_set("spec.containers.0.readinessProbe.httpGet.port", 8080), True),
        (_set("spec.containers.0.resources.limits.cpu", 2), True),
        (_set("spec.containers.0.resources.limits.cpu", "1500m"), True),
        (_set("spec.containers.0.readinessProbe.httpGet.port", True), False),
        (_set("spec.containers.0.resources.limits.cpu", "two"), False),
        (_set("spec.containers.0.ports.0.containerPort", "8080"), False),
    ],
    ids=["port-name", "port-number", "cpu-int", "cpu-millis", "port-bool", "cpu-word", "port-string"],
)
def test_int_or_string_fields_take_both_and_nothing_else(
    mutate: Callable[[Manifest], None], valid: bool
) -> None:
    document = _first("ServingRuntime")
    mutate(document)
    assert (not _schema_errors(document)) is valid


def test_strictness_keeps_maps_and_preserved_fields_open_and_types_int_or_string() -> None:
    schema = _strict(
        {
            "type": "object",
            "properties": {
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "status": {
                    "type": "object",
                    "properties": {"ready": {"type": "boolean"}},
                    "x-kubernetes-preserve-unknown-fields": True,
                },
                "port": {"x-kubernetes-int-or-string": True},  # marked, with no anyOf of its own
            },
        }
    )
    validator = jsonschema.Draft4Validator(schema)
    assert validator.is_valid({"labels": {"any": "key"}, "status": {"ready": True, "extra": 1}})
    assert not validator.is_valid({"labels": {"any": 1}})
    assert not validator.is_valid({"label": {}})
    assert validator.is_valid({"port": 80}) and validator.is_valid({"port": "http"})
    assert not validator.is_valid({"port": True})


# ---- what the runtime promises --------------------------------------------------------------


def _flag(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, f"{flag} once in {args}"
    return args[args.index(flag) + 1]


def test_runtime_serves_v2_on_the_issues_ports() -> None:
    container = _container()
    assert container["name"] == "kserve-container"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == PORTS
    assert container["ports"][0]["name"] == "http1", "KServe's Service maps the first to 80"
    args = container["args"]
    assert args[0] == "serve"
    assert int(_flag(args, "--port")) == PORTS["http1"]
    assert int(_flag(args, "--grpc-port")) == PORTS["h2c"]
    assert _flag(args, "--host") == "0.0.0.0"
    assert _flag(args, "--config") == str(MODEL_MOUNT / CONFIG_NAME)
    spec = _runtime()["spec"]
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    assert spec["annotations"] == ANNOTATIONS
    assert spec["multiModel"] is False


def test_runtime_probes_the_v2_health_routes() -> None:
    container = _container()
    for probe, path in PROBE_PATHS.items():
        http_get = container[probe]["httpGet"]
        assert (http_get["path"], http_get["port"]) == (path, PORTS["http1"]), probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "model load is slow"


def test_runtime_advertises_the_state_dict_format() -> None:
    (model_format,) = _runtime()["spec"]["supportedModelFormats"]
    assert {key: model_format[key] for key in MODEL_FORMAT} == MODEL_FORMAT


def test_runtime_matches_the_image_and_the_base_deployment() -> None:
    container = _container()
    dockerfile = (ROOT / "Dockerfile").read_text()
    (entrypoint,) = re.findall(r"^ENTRYPOINT (.+)$", dockerfile, re.MULTILINE)
    assert json.loads(entrypoint) == ["model-serve"], "args are the entrypoint's arguments"
    assert re.findall(r"^USER (\d+)", dockerfile, re.MULTILINE)[-1] == str(
        container["securityContext"]["runAsUser"]
    )
    overlay = yaml.safe_load((ROOT / "k8s" / "overlays" / "cpu" / "kustomization.yaml").read_text())
    (image,) = overlay["images"]
    assert container["image"] == f"{image['newName']}:{image['newTag']}"
    (base,) = [doc for doc in _render("base") if doc["kind"] == "Deployment"]
    (base_container,) = base["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == base_container["resources"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in _runtime()["spec"]["volumes"]}
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]
    threads = {e["name"]: e for e in container["env"]}["MODEL_SERVE_TORCH_THREADS"]
    assert threads["valueFrom"]["resourceFieldRef"]["containerName"] == container["name"]


@pytest.mark.parametrize(
    "name", [path.name for path in sorted(KSERVE.glob("inferenceservice*.example.yaml"))]
)
def test_inference_service_selects_this_runtime(name: str) -> None:
    service = _example(name)
    runtime = _runtime()
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    formats = {(f["name"], f["version"]) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in formats
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert re.fullmatch(r"[a-z0-9]+://\S+", model["storageUri"])
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    annotations = service["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard", "Knative allows one port"


def test_admin_token_comes_from_the_base_secret_when_it_exists() -> None:
    example = yaml.safe_load((ROOT / "k8s" / "base" / "admin-token-secret.example.yaml").read_text())
    env = {e["name"]: e for e in _container()["env"]}
    ref = env["MODEL_SERVE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (example["metadata"]["name"], next(iter(example["stringData"])))
    assert ref["optional"] is True, "pods start in namespaces without the Secret"


def test_keda_example_scales_on_this_services_queue_depth() -> None:
    service = _example("inferenceservice-keda.example.yaml")
    assert service["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    (metric,) = service["spec"]["predictor"]["autoScaling"]["metrics"]
    external = metric["external"]
    assert external["metric"]["backend"] == "prometheus"
    query = external["metric"]["query"]
    assert "model_serve_queue_depth" in query
    assert f'pod=~"{service["metadata"]["name"]}-predictor-.*"' in query
    assert float(external["target"]["value"]) > 0  # KServe reads value, not averageValue


def test_hpa_example_scales_the_predictor_deployment() -> None:
    hpa = _example("hpa-queue-depth.example.yaml")
    service = _example("inferenceservice.example.yaml")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", f"{service['metadata']['name']}-predictor")
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Pods"]["pods"]["metric"]["name"] == "model_serve_queue_depth"


# ---- the model folder -----------------------------------------------------------------------


def test_example_config_resolves_inside_the_mounted_folder() -> None:
    config = build_config(yaml.safe_load(EXAMPLE_CONFIG.read_text()), base_dir=MODEL_MOUNT, environ={})
    assert config.checkpoint_root == MODEL_MOUNT
    (spec,) = config.models.values()
    assert spec.checkpoint == MODEL_MOUNT / DIGITS.checkpoint_file
    assert (spec.architecture, spec.init_args) == (DIGITS.architecture, dict(DIGITS.init_args))
    assert (spec.input.size, spec.input.channels) == (DIGITS.size, DIGITS.channels)
    assert (spec.input.mean, spec.input.std, spec.labels) == (DIGITS.mean, DIGITS.std, DIGITS.labels)


def test_the_guide_shows_the_example_config() -> None:
    guide = (ROOT / "docs" / "kserve.md").read_text()
    blocks = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", guide, re.DOTALL)]
    assert yaml.safe_load(EXAMPLE_CONFIG.read_text()) in blocks


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example config and the demo checkpoint in one folder, as KServe mounts a storageUri."""
    folder = tmp_path_factory.mktemp("mnt-models")
    shutil.copy(EXAMPLE_CONFIG, folder / CONFIG_NAME)
    shutil.copy(CHECKPOINT_DIR / DIGITS.checkpoint_file, folder / DIGITS.checkpoint_file)
    return folder


@pytest.fixture(scope="module")
def folder_server(model_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("logs") / "server.log"
    server = ServerProcess(model_folder / CONFIG_NAME, log)  # its cwd is the repository, not the folder
    with server:
        yield server


def test_model_folder_serves_like_the_model_in_process(
    model_folder: Path, folder_server: ServerProcess
) -> None:
    samples = sorted(SAMPLES_DIR.glob("digit_*.png"))
    assert len(samples) == 10
    files = [("file", (path.name, path.read_bytes(), "image/png")) for path in samples]
    with httpx.Client(base_url=folder_server.url, timeout=30) as client:
        assert client.get("/readyz").status_code == 200
        answer = client.post("/predict", params={"model": DIGITS.name}, files=files)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    checkpoint = (model_folder / DIGITS.checkpoint_file).read_bytes()
    assert body["version"] == hashlib.sha256(checkpoint).hexdigest()[:12], "read from the folder"
    model = load_demo_model(DIGITS)
    expected = []
    with torch.inference_mode():
        for path in samples:
            x, _ = preprocess(path.read_bytes(), DIGITS.size, DIGITS.channels, DIGITS.mean, DIGITS.std)
            expected.append(int(model(x).argmax(dim=1)))
    assert [p["class_index"] for p in body["predictions"]] == expected
