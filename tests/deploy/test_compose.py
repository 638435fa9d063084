"""docker-compose.yml and deploy/Dockerfile, checked without Docker: the compose file is
validated against the Compose Specification's JSON Schema (check-jsonschema's vendored copy
of compose-spec), every file it mounts exists, images are pinned, and the stack is wired
as documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES = COMPOSE["services"]
ONE_SHOT = {"kafka-init", "simulator"}


def _check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with its vendored Compose Specification schema (no network)."""
    argv = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    return subprocess.run(
        [*argv, str(path)], capture_output=True, text=True, timeout=120, check=False
    )


def test_compose_file_validates_against_the_compose_spec():
    result = _check_compose(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validation done" in result.stdout


def test_the_validator_rejects_a_broken_compose_file(tmp_path):
    broken = dict(COMPOSE, services={"kafka": {"image": "apache/kafka:3.9.1", "ports": 9092}})
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = _check_compose(path)
    assert result.returncode == 1 and "ports" in result.stdout


def _bind_mounts() -> list[tuple[str, str]]:
    mounts = []
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                mounts.append((name, source))
    return mounts


@pytest.mark.parametrize(("service", "source"), _bind_mounts())
def test_every_mounted_file_exists(service, source):
    assert (ROOT / source).exists(), f"{service} mounts {source}, which does not exist"


def test_every_build_context_and_dockerfile_exists():
    for service in SERVICES.values():
        if "build" in service:
            context = ROOT / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file()


def test_named_volumes_are_declared():
    declared = set(COMPOSE["volumes"])
    used = set()
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used == declared


PULLED = sorted(name for name, service in SERVICES.items() if "build" not in service)


@pytest.mark.parametrize("service", PULLED)
def test_pulled_images_are_pinned(service):
    image = SERVICES[service]["image"]
    name, _, tag = image.rpartition(":")
    assert name and tag and tag != "latest" and re.search(r"\d", tag), image


@pytest.mark.parametrize("service", sorted(set(SERVICES) - ONE_SHOT))
def test_long_running_services_have_healthchecks(service):
    assert SERVICES[service]["healthcheck"]["test"]


def test_a_worker_stop_ends_by_itself_before_docker_kills_it():
    worker = SERVICES["worker"]
    grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
    assert grace is not None
    stop_timeout = float(
        worker["environment"].get("CHURN_STOP_TIMEOUT_SECONDS", Settings().stop_timeout_seconds)
    )
    assert stop_timeout < int(grace.group(1))


def test_kafka_is_a_single_kraft_node_of_the_official_image():
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_topics_are_created_before_the_worker_starts():
    init = SERVICES["kafka-init"]
    assert init["image"] == SERVICES["kafka"]["image"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    condition = SERVICES["worker"]["depends_on"]["kafka-init"]["condition"]
    assert condition == "service_completed_successfully"


def test_the_topic_script_creates_every_topic_of_the_readme():
    script = (ROOT / "deploy" / "kafka" / "create-topics.sh").read_text()
    settings = Settings()
    for topic in ("input_topic", "dlq_topic", "output_topic"):
        assert f"{getattr(settings, topic)}}}" in script  # the default of ${CHURN_..._TOPIC:-x}
    assert '"$APP_ID-customer-batches" "$PARTITIONS"' in script
    assert '"$APP_ID-segment-deltas" "$PARTITIONS"' in script
    assert "cleanup.policy=compact" in script
    subprocess.run(["sh", "-n", str(ROOT / "deploy" / "kafka" / "create-topics.sh")], check=True)


def test_workers_get_valid_churn_settings():
    env = SERVICES["worker"]["environment"]
    assert env["CHURN_METRICS_HOST"] == "0.0.0.0"
    assert env["CHURN_STORE"] == "rocksdb://"
    settings = Settings(**{key.removeprefix("CHURN_").lower(): value for key, value in env.items()})
    assert settings.partitions == int(SERVICES["kafka-init"]["environment"]["CHURN_PARTITIONS"])
    assert settings.bootstrap_servers == "kafka:19092"
    assert all(key.removeprefix("CHURN_").lower() in Settings.model_fields for key in env)


def test_workers_scale_without_sharing_state_or_ports():
    worker = SERVICES["worker"]
    assert "ports" not in worker  # `--scale worker=N` would clash on a published port
    assert "volumes" not in worker  # each container gets its own anonymous data volume
    assert "container_name" not in worker


def test_the_simulator_is_an_optional_profile():
    simulator = SERVICES["simulator"]
    assert simulator["profiles"] == ["simulator"]
    assert simulator["command"][0] == "simulate" and "--rate" in simulator["command"]


def test_prometheus_and_grafana_are_provisioned_from_deploy():
    prometheus = " ".join(SERVICES["prometheus"]["volumes"])
    assert "./deploy/prometheus/prometheus.yml:" in prometheus
    assert "./deploy/prometheus/rules:" in prometheus
    grafana = " ".join(SERVICES["grafana"]["volumes"])
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning" in grafana
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards" in grafana
    alertmanager = " ".join(SERVICES["alertmanager"]["volumes"])
    assert "./deploy/alertmanager/alertmanager.yml:" in alertmanager


def test_the_dockerfile_runs_the_worker_as_a_non_root_user():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11[\w.-]*-slim", text, re.MULTILINE)
    assert "CHURN_METRICS_HOST=0.0.0.0" in text
    assert re.search(r"^EXPOSE 6066$", text, re.MULTILINE)
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert 'ENTRYPOINT ["churn-stream"]' in text and 'CMD ["worker"]' in text
    assert "HEALTHCHECK" in text
    last_user = [line for line in text.splitlines() if line.startswith("USER ")][-1]
    assert "root" not in last_user and not last_user.endswith(" 0")


def test_the_docker_build_context_keeps_what_the_image_needs():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for needed in ("pyproject.toml", "setup.py", "README.md", "stream"):
        assert needed not in ignored
        assert re.search(rf"^COPY .*\b{re.escape(needed)}\b", DOCKERFILE.read_text(), re.M)
    assert ".venv" in ignored and ".git" in ignored
    assert "**/*.so" in ignored  # the host's mypyc builds: another Python, maybe stale


def test_the_image_is_built_with_a_compiler_for_the_mypyc_modules():
    build_stage = re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.M)[1]
    assert " AS build" in build_stage
    assert re.search(r"apt-get install .*\bgcc\b", build_stage)
