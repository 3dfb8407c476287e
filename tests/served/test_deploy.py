"""Deployment files checked offline: the lock, the Dockerfile, Compose and Kubernetes manifests."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from packaging.requirements import Requirement

from scripts.lock import LOCK, STAMP, dependencies_digest
from service.server.app import create_app
from tests.servers import HANG, loss_service_executable, served

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BIN = Path(sys.executable).parent


def test_lock_was_made_from_the_dependencies_pyproject_declares() -> None:
    lines = LOCK.read_text().splitlines()
    assert lines[0] == f"{STAMP}{dependencies_digest()}", "requirements.lock is stale: run `make lock`"
    pinned = {
        m.group(1).lower().replace("_", "-"): m.group(2)
        for m in (re.match(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)", line) for line in lines)
        if m
    }
    for dependency in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(dependency)
        name = requirement.name.lower().replace("_", "-")
        assert name in pinned, f"{name} is not in requirements.lock"
        assert requirement.specifier.contains(pinned[name]), f"{name}=={pinned[name]} violates {requirement}"
    entries = re.split(r"\n(?=\S)", LOCK.read_text())
    unhashed = [e.split()[0] for e in entries if "==" in e and "--hash=sha256:" not in e]
    assert not unhashed, f"entries without hashes: {unhashed}"


def test_dockerfile_follows_the_container_contract() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert stages == ["python:3.11-slim", "python:3.11-slim"]  # multi-stage, official base
    assert "--require-hashes" in dockerfile
    assert re.search(r"^USER 10001", dockerfile, re.MULTILINE)
    assert re.search(r'^CMD \["loss-service", "serve", "--host", "0.0.0.0"\]', dockerfile, re.MULTILINE)
    assert "EXPOSE 8000 8001" in dockerfile
    assert "ENV LOSS_SERVICE_GRPC_PORT=8001" in dockerfile  # gRPC where Triton serves it
    assert "HEALTHCHECK" in dockerfile
    assert "curl" not in dockerfile
    assert "PYTHONDONTWRITEBYTECODE=1" in dockerfile
    assert "PYTHONUNBUFFERED=1" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    checker = shutil.which("check-jsonschema", path=str(BIN)) or "check-jsonschema"
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"api", "prometheus", "grafana", "postgres"}
    assert services["postgres"]["profiles"] == ["postgres"], "PostgreSQL starts only when asked for"
    api = services["api"]
    # The SQLite store lives on a named volume, so it outlives the container and the read-only root.
    assert "loss-service-data:/var/lib/loss-service" in api["volumes"]
    assert "loss-service-data" in compose["volumes"]
    assert "/var/lib/loss-service/" in api["environment"]["LOSS_SERVICE_STORE_URL"]
    assert api["healthcheck"]["test"][0] == "CMD"
    assert api["restart"] == "unless-stopped"
    assert api["read_only"] is True
    assert api["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in api["security_opt"]
    for service in services.values():  # published on the host's loopback only
        assert all(str(port).startswith("127.0.0.1:") for port in service.get("ports", [])), service
    assert "/tmp" in api["tmpfs"]
    assert "127.0.0.1:${LOSS_SERVICE_GRPC_HOST_PORT:-8001}:8001" in api["ports"]  # OIP over gRPC
    assert api["deploy"]["resources"]["limits"]["memory"]
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    assert "GF_SECURITY_ADMIN_PASSWORD" in services["grafana"]["entrypoint"][-1], "no start on the default password"
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "${GRAFANA_ANONYMOUS_VIEWERS:-false}"
    assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            assert (ROOT / volume.split(":")[0]).exists(), volume


def manifests() -> dict[str, dict[str, Any]]:
    return {path.stem: yaml.safe_load(path.read_text()) for path in sorted(K8S.glob("*.yaml"))}


@pytest.mark.parametrize("name", ["deployment", "service", "hpa", "pdb", "secret", "networkpolicy"])
def test_kubernetes_manifests_validate_against_the_kubernetes_schemas(name: str) -> None:
    validator = shutil.which("kubernetes-validate", path=str(BIN)) or "kubernetes-validate"
    result = subprocess.run(
        [validator, "--strict", "--quiet", str(K8S / f"{name}.yaml")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifests_agree_with_each_other_and_the_service() -> None:
    m = manifests()
    pod = m["deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    store = next(e for e in container["env"] if e["name"] == "LOSS_SERVICE_STORE_URL")["valueFrom"]["secretKeyRef"]
    # Replicas share PostgreSQL, never a SQLite file: the URL comes from the Secret, and it is PostgreSQL's.
    assert store["name"] == m["secret"]["metadata"]["name"]
    assert m["secret"]["stringData"][store["key"]].startswith("postgresql://")
    drain = float(env["LOSS_SERVICE_SHUTDOWN_TIMEOUT"]) + container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > drain, "the kubelet would kill a draining worker"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    policy = m["networkpolicy"]["spec"]
    pod_labels = m["deployment"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert {port["port"] for rule in policy["ingress"] for port in rule["ports"]} == {"http", "grpc"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {v["name"]: v for v in container["volumeMounts"]}
    assert set(mounts) == {"tmp", "keys"}
    # Keys come from a Secret the operator makes; the server needs them for /metrics too, and the
    # ServiceMonitor brings its own.
    keys_file = Path(env["LOSS_SERVICE_API_KEYS_FILE"])
    assert mounts["keys"]["mountPath"] == str(keys_file.parent)
    assert mounts["keys"]["readOnly"] is True
    keys_volume = next(v for v in pod["volumes"] if v["name"] == "keys")
    assert keys_volume["secret"]["secretName"] == "loss-service-keys"
    assert "optional" not in keys_volume["secret"], "without its keys the pod must not start"
    assert keys_volume["secret"]["defaultMode"] & 0o007 == 0, "no one outside the group reads the keys"
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    assert env["LOSS_SERVICE_METRICS_AUTH"] == "true"
    assert f"--from-file={keys_file.name}" in (K8S / "secret.yaml").read_text()
    labels = m["deployment"]["spec"]["template"]["metadata"]["labels"]
    assert m["service"]["spec"]["selector"].items() <= labels.items()
    assert m["pdb"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert m["hpa"]["spec"]["scaleTargetRef"]["name"] == m["deployment"]["metadata"]["name"]
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in m["service"]["spec"]["ports"]} <= port_names
    # gRPC on 8001 as Triton serves it: the image sets LOSS_SERVICE_GRPC_PORT to it.
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000, "grpc": 8001}
    grpc_port = next(p for p in m["service"]["spec"]["ports"] if p["name"] == "grpc")
    assert (grpc_port["port"], grpc_port["targetPort"], grpc_port["appProtocol"]) == (8001, "grpc", "grpc")


def test_service_monitor_scrapes_the_service() -> None:
    """kubernetes-validate has no schemas for CRDs; this checks what the Prometheus Operator needs."""
    m = manifests()
    monitor = m["servicemonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= m["service"]["metadata"]["labels"].items()
    service_ports = {p["name"] for p in m["service"]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
        assert endpoint["authorization"]["type"] == "Bearer"
        assert endpoint["authorization"]["credentials"]["name"] == "loss-service-metrics-key"


@pytest.mark.anyio
async def test_readiness_turns_503_when_a_stop_signal_arrives() -> None:
    app = create_app()
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, _: received.append(sig))  # stands in for uvicorn's
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://d") as client:
                assert (await client.get("/readyz")).status_code == 200
                os.kill(os.getpid(), signal.SIGTERM)
                response = await client.get("/readyz")
                assert response.status_code == 503
                assert response.json() == {"status": "draining"}
                assert (await client.get("/livez")).status_code == 200
        assert received == [signal.SIGTERM], "the server's own handler must still run"
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_deployments_settings_serve_metrics_only_to_the_scrapers_key(tmp_path: Path) -> None:
    """The Deployment's environment, with a keys file made as secret.yaml says: Prometheus's key
    (scope metrics) scrapes, no key and a compute key do not."""
    made = [
        subprocess.run(
            [loss_service_executable(), "keys", "new", name, "--scopes", scopes],
            capture_output=True,
            text=True,
            check=True,
        )
        for name, scopes in (("prometheus", "metrics"), ("team-a", "compute"))
    ]
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text("".join(result.stdout for result in made))
    scraper, team = (result.stderr.split()[-1] for result in made)
    container = manifests()["deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env["LOSS_SERVICE_API_KEYS_FILE"] = str(keys_file)  # where the Secret is mounted, here
    with served(env=env) as url:
        assert httpx.get(f"{url}/metrics", timeout=HANG).status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {team}"}, timeout=HANG).status_code == 403
        scrape = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {scraper}"}, timeout=HANG)
        assert scrape.status_code == 200
        assert "loss_service_http_requests_total" in scrape.text
        assert httpx.get(f"{url}/livez", timeout=HANG).status_code == 200  # probes need no key
