"""deploy/k8s: built-in resources validated (strict) against the Kubernetes JSON Schemas
bundled in the kubernetes-validate package, the Prometheus Operator resources against
their CRD schemas with @kubernetes-models/prometheus-operator (npm, installed by `make
setup` into tests/deploy/crd_validator), and the wiring the README describes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from stream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CRD_VALIDATOR = Path(__file__).resolve().parent / "crd_validator"
KUBERNETES_VERSION = "1.31.0"
OPERATOR_GROUP = "monitoring.coreos.com/v1"
MANIFESTS = sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


def _documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, document)
        for path in MANIFESTS
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


DOCUMENTS = _documents()
BUILTIN = [(name, doc) for name, doc in DOCUMENTS if doc["apiVersion"] != OPERATOR_GROUP]
OPERATOR = [doc for _, doc in DOCUMENTS if doc["apiVersion"] == OPERATOR_GROUP]


def _one(kind: str) -> dict[str, Any]:
    (found,) = [doc for _, doc in DOCUMENTS if doc["kind"] == kind]
    return found


BUILTIN_IDS = [f"{name}:{doc['kind']}/{doc['metadata']['name']}" for name, doc in BUILTIN]


@pytest.mark.parametrize(("file", "document"), BUILTIN, ids=BUILTIN_IDS)
def test_builtin_resources_match_the_kubernetes_schema(file, document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_schema_validator_rejects_a_wrong_field():
    broken = json.loads(json.dumps(_one("StatefulSet")))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    broken = json.loads(json.dumps(_one("StatefulSet")))
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def _validate_crds(resources: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    node = shutil.which("node")
    assert node, "node missing: run scripts/install-system-deps.sh"
    assert (CRD_VALIDATOR / "node_modules").is_dir(), (
        "run `make setup` (npm ci --prefix tests/deploy/crd_validator)"
    )
    result = subprocess.run(
        [node, "validate.mjs"],
        input=json.dumps(resources),
        cwd=CRD_VALIDATOR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(resources), result.stdout + result.stderr
    return result.returncode, lines


def test_operator_resources_match_their_crd_schemas():
    assert {doc["kind"] for doc in OPERATOR} == {"ServiceMonitor", "PrometheusRule"}
    code, results = _validate_crds(OPERATOR)
    assert code == 0, results
    assert all(result["ok"] for result in results)


def test_the_crd_validator_rejects_a_wrong_field():
    broken = json.loads(json.dumps(_one("ServiceMonitor")))
    broken["spec"]["endpoints"][0]["interval"] = 15  # must be a duration string
    code, results = _validate_crds([broken])
    assert code == 1 and "interval" in results[0]["error"]


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(path.name for path in MANIFESTS)


def test_statefulset_keeps_rocksdb_on_a_persistent_volume_per_pod():
    statefulset = _one("StatefulSet")
    config = _one("ConfigMap")["data"]
    spec = statefulset["spec"]
    assert spec["serviceName"] == _one_named("Service", "churn-stream-headless")["metadata"]["name"]
    assert config["CHURN_STORE"] == "rocksdb://"
    (claim,) = spec["volumeClaimTemplates"]
    (container,) = spec["template"]["spec"]["containers"]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == config["CHURN_DATA_DIR"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_the_configmap_holds_valid_settings_and_no_secret():
    data = _one("ConfigMap")["data"]
    assert "CHURN_SASL_PASSWORD" not in data
    settings = Settings(**{key.removeprefix("CHURN_").lower(): val for key, val in data.items()})
    assert settings.metrics_host == "0.0.0.0" and settings.metrics_port == 6066
    assert all(key.removeprefix("CHURN_").lower() in Settings.model_fields for key in data)


def test_a_stop_ends_by_itself_before_the_pod_is_killed():
    data = _one("ConfigMap")["data"]
    stop_timeout = float(data["CHURN_STOP_TIMEOUT_SECONDS"])
    grace = _one("StatefulSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert stop_timeout == Settings().stop_timeout_seconds
    assert stop_timeout < grace


def test_the_sasl_password_comes_from_a_secret():
    (container,) = _one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    reference = env["CHURN_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert reference["name"] and reference["key"]
    config_map = _one("ConfigMap")["metadata"]["name"]
    assert container["envFrom"] == [{"configMapRef": {"name": config_map}}]


def test_each_pod_is_a_static_group_member_named_after_itself():
    """A StatefulSet pod keeps its name across restarts: CHURN_GROUP_INSTANCE_ID (and so the
    ingest stage's `<name>-ingest`) stays the same, and differs between pods."""
    (container,) = _one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env["CHURN_GROUP_INSTANCE_ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }
    assert "CHURN_GROUP_INSTANCE_ID" not in _one("ConfigMap")["data"]  # one name per pod


def test_pods_run_as_the_images_non_root_user():
    pod = _one("StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001


def test_the_servicemonitor_scrapes_the_metrics_service_as_job_churn_stream():
    monitor = _one("ServiceMonitor")["spec"]
    service = _one_named("Service", "churn-stream-metrics")
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {endpoint["port"] for endpoint in monitor["endpoints"]} == {
        port["name"] for port in service["spec"]["ports"]
    }
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "churn-stream"
    selector = service["spec"]["selector"]
    pod_labels = _one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()


def test_the_headless_service_is_headless():
    assert _one_named("Service", "churn-stream-headless")["spec"]["clusterIP"] == "None"


def _one_named(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for _, d in DOCUMENTS if d["kind"] == kind and d["metadata"]["name"] == name]
    return found
