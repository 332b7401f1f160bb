"""The Kubernetes manifests render, validate offline, and agree with the service they deploy."""

from __future__ import annotations

import functools
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import ServerSpec, build_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
TARGETS = ["base", "overlays/cpu", "overlays/gpu"]
# Schemas shipped with kubernetes-validate; 1.32 matches the kubectl used here and is
# served by every maintained managed Kubernetes.
KUBERNETES_VERSION = "1.32.0"
CUSTOM_API_GROUPS = {"monitoring.coreos.com"}
EXPORTED_SCALING_METRICS = {"model_serve_queue_depth", "model_serve_in_flight_requests"}
CHECKPOINT_ROOT = Path("/var/lib/model-serve/checkpoints")
CONFIG_PATH = "/etc/model-serve/config.yaml"

Manifest = dict[str, Any]


def _kustomize_command() -> list[str] | None:
    for name, sub in (("kubectl", ["kustomize"]), ("kustomize", ["build"])):
        beside_python = Path(sys.executable).parent / name
        found = str(beside_python) if beside_python.is_file() else shutil.which(name)
        if found:
            return [found, *sub]
    return None


@functools.cache
def _render(target: str) -> tuple[Manifest, ...]:
    command = _kustomize_command()
    if command is None:
        pytest.skip("neither kubectl nor kustomize is installed")
    result = subprocess.run(
        [*command, str(K8S / target)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def manifests(target: str) -> tuple[Manifest, ...]:
    return _render(target)


def _one(manifests: tuple[Manifest, ...], kind: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _container(manifests: tuple[Manifest, ...]) -> Manifest:
    containers = _one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _port_number(container: Manifest, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in named, f"port {port!r} is not one of the container's {sorted(named)}"
    return int(named[port])


def _cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _env(container: Manifest) -> dict[str, str]:
    """The container's environment as the process sees it (secrets as a stand-in value)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        source = item.get("valueFrom", {})
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in source:
            env[item["name"]] = "secret-from-" + source["secretKeyRef"]["name"]
        elif source.get("resourceFieldRef", {}).get("resource") == "limits.cpu":
            limit = _cpu_cores(str(container["resources"]["limits"]["cpu"]))
            divisor = _cpu_cores(str(source["resourceFieldRef"].get("divisor", "1")))
            env[item["name"]] = str(math.ceil(limit / divisor))  # what the kubelet rounds to
    return env


def _served_config(manifests: tuple[Manifest, ...], environ: dict[str, str]) -> Any:
    """The ConfigMap's config.yaml, loaded the way the server loads its file in the pod."""
    config_path = Path(CONFIG_PATH)
    raw = yaml.safe_load(_one(manifests, "ConfigMap")["data"][config_path.name])
    return build_config(raw, base_dir=config_path.parent, environ=environ)


def _iter_custom(manifests: tuple[Manifest, ...]) -> Iterator[Manifest]:
    for manifest in manifests:
        if manifest["apiVersion"].split("/")[0] in CUSTOM_API_GROUPS:
            yield manifest


def test_every_object_validates_against_the_kubernetes_schema(
    manifests: tuple[Manifest, ...],
) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kinds = set()
    for manifest in manifests:
        kinds.add(manifest["kind"])
        if manifest["apiVersion"].split("/")[0] in CUSTOM_API_GROUPS:
            continue  # no schema shipped for CRDs: checked field by field below
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "PersistentVolumeClaim",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
    } <= kinds


def test_secret_example_validates_and_is_not_applied() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    example = yaml.safe_load((K8S / "base" / "admin-token-secret.example.yaml").read_text())
    kubernetes_validate.validate(example, KUBERNETES_VERSION, strict=True)
    assert "REPLACE" in example["stringData"]["token"]
    for target in TARGETS:
        assert not [m for m in _render(target) if m["kind"] == "Secret"], "never ship a token"


def test_admin_token_comes_from_the_example_secret(manifests: tuple[Manifest, ...]) -> None:
    example = yaml.safe_load((K8S / "base" / "admin-token-secret.example.yaml").read_text())
    env = {e["name"]: e for e in _container(manifests)["env"]}
    ref = env["MODEL_SERVE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == example["metadata"]["name"]
    assert ref["key"] in example["stringData"]


def test_probes_use_health_routes_on_the_container_port(manifests: tuple[Manifest, ...]) -> None:
    container = _container(manifests)
    served_port = int(container["args"][container["args"].index("--port") + 1])
    assert container["args"][:1] == ["serve"]
    assert _port_number(container, "http") == served_port == 8000
    expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in expected.items():
        http_get = container[probe]["httpGet"]
        assert http_get["path"] == path, probe
        assert _port_number(container, http_get["port"]) == served_port, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "model load is slow"


def test_service_targets_the_named_port(manifests: tuple[Manifest, ...]) -> None:
    service = _one(manifests, "Service")
    container = _container(manifests)
    pod_labels = _one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port == {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    _port_number(container, port["targetPort"])


def test_servicemonitor_scrapes_metrics_on_the_service_port(
    manifests: tuple[Manifest, ...],
) -> None:
    (monitor,) = _iter_custom(manifests)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["metadata"]["name"]
    service = _one(manifests, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in service_ports
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+s", endpoint["interval"])


def test_scrape_annotations_match_the_container(manifests: tuple[Manifest, ...]) -> None:
    annotations = _one(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == _port_number(_container(manifests), "http")


def test_hpa_scales_the_deployment_on_an_exported_metric(manifests: tuple[Manifest, ...]) -> None:
    hpa = _one(manifests, "HorizontalPodAutoscaler")
    deployment = _one(manifests, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Pods"]["pods"]["metric"]["name"] in EXPORTED_SCALING_METRICS
    assert metrics["Pods"]["pods"]["target"]["type"] == "AverageValue"
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 120


def test_pdb_covers_the_pods(manifests: tuple[Manifest, ...]) -> None:
    pdb = _one(manifests, "PodDisruptionBudget")
    pod_labels = _one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


def test_only_the_gpu_overlay_requests_gpus(target: str, manifests: tuple[Manifest, ...]) -> None:
    container = _container(manifests)
    pod = _one(manifests, "Deployment")["spec"]["template"]["spec"]
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    if target == "overlays/gpu":
        assert int(gpus) == 1
        assert pod["nodeSelector"]
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert container["image"].endswith("-cuda")
    else:
        assert gpus is None
        assert "tolerations" not in pod
    if target == "overlays/cpu":
        assert container["image"].endswith("-cpu")


def test_termination_grace_covers_prestop_and_drain(manifests: tuple[Manifest, ...]) -> None:
    container = _container(manifests)
    pod = _one(manifests, "Deployment")["spec"]["template"]["spec"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    drain_grace_s = _served_config(manifests, _env(container)).server.drain_grace_s
    assert drain_grace_s == ServerSpec.model_fields["drain_grace_s"].default == 20
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + drain_grace_s


def test_configmap_holds_a_valid_config_for_the_mounted_paths(
    manifests: tuple[Manifest, ...],
) -> None:
    container = _container(manifests)
    env = _env(container)
    assert env["MODEL_SERVE_CONFIG"] == CONFIG_PATH
    for environ in ({}, env):
        config = _served_config(manifests, environ)
        assert config.checkpoint_root == CHECKPOINT_ROOT
        assert config.default_model_name in config.models
        for spec in config.models.values():
            assert spec.checkpoint.is_relative_to(CHECKPOINT_ROOT), spec.checkpoint
    served = _served_config(manifests, env)
    assert served.server.admin_token == "secret-from-model-serve-admin"
    assert served.server.torch_threads == math.ceil(_cpu_cores(str(container["resources"]["limits"]["cpu"])))


def test_volumes_are_mounted_where_the_config_expects(manifests: tuple[Manifest, ...]) -> None:
    container = _container(manifests)
    pod = _one(manifests, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    config_map = _one(manifests, "ConfigMap")["metadata"]["name"]
    config_mount = mounts[str(Path(CONFIG_PATH).parent)]
    assert volumes[config_mount["name"]]["configMap"]["name"] == config_map
    checkpoints = volumes[mounts[str(CHECKPOINT_ROOT)]["name"]]
    claim = checkpoints["persistentVolumeClaim"]["claimName"]
    assert claim == _one(manifests, "PersistentVolumeClaim")["metadata"]["name"]
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_pods_run_non_root_with_a_read_only_root(manifests: tuple[Manifest, ...]) -> None:
    container = _container(manifests)
    pod = _one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    dockerfile_users = re.findall(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert dockerfile_users[-1:] == ["10001"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_pods_spread_over_nodes(manifests: tuple[Manifest, ...]) -> None:
    pod = _one(manifests, "Deployment")["spec"]["template"]
    anti = pod["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
