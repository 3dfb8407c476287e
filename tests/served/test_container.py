"""The real Dockerfile and docker-compose.yml, built and run with podman (no Docker engine here).

Skipped only where podman is absent; .ci/run installs it (../shared/container/setup-podman).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import HANG, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("podman") is None, reason="podman is not installed; run ../shared/container/setup-podman"
    ),
]
ROOT = Path(__file__).resolve().parents[2]
BUILD_FLAGS = ROOT.parent / "shared" / "container" / "build-flags"
IMAGE = "localhost/loss-service:test"


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def image() -> str:
    # This workplace needs host networking and its CA bundle for pip inside RUN; elsewhere none.
    flags = (
        subprocess.run(["bash", str(BUILD_FLAGS)], capture_output=True, text=True, check=True).stdout.split()
        if BUILD_FLAGS.is_file()
        else []
    )
    # The docker format keeps HEALTHCHECK (the OCI format has no field for it), as Docker does.
    podman("build", "--format", "docker", *flags, "-t", IMAGE, str(ROOT))
    return IMAGE


def wait_healthy(container: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if podman("healthcheck", "run", container, check=False).returncode == 0:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{container} never passed its HEALTHCHECK:\n{podman('logs', container, check=False).stderr}")


@pytest.fixture
def container(image: str) -> Iterator[tuple[str, str]]:
    name = f"loss-service-test-{uuid.uuid4().hex[:8]}"
    port, grpc_port = free_port(), free_port()
    GRPC_PORTS[name] = grpc_port
    published = ("-p", f"127.0.0.1:{port}:8000", "-p", f"127.0.0.1:{grpc_port}:8001")
    podman("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", *published, image)
    try:
        wait_healthy(name)
        yield name, f"http://127.0.0.1:{port}"
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def test_image_runs_read_only_as_non_root_and_serves(container: tuple[str, str]) -> None:
    name, url = container
    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
    inspected = podman("inspect", name, "--format", "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}").stdout.split()
    assert inspected == ["10001:10001", "true"]
    body = {"loss": "scce", "predictions": [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]], "labels": [1, 2], "model": "c1"}
    response = httpx.post(f"{url}/v1/loss", json=body, timeout=HANG)
    assert response.status_code == 200
    assert response.json()["mean"] == pytest.approx(1.176939193690798, rel=1e-15)
    metrics = httpx.get(f"{url}/metrics", timeout=HANG).text
    assert 'loss_service_samples_total{loss="sparse_categorical_crossentropy",model="c1"} 2.0' in metrics
    # The pages and their bundled assets are in the image (package data, the pinned wheel).
    for path in (
        "/",
        "/assets/try.js",
        "/docs",
        "/assets/vendor/swagger-ui-bundle.js",
        "/assets/vendor/redoc.standalone.js",
    ):
        assert httpx.get(f"{url}{path}", timeout=HANG).status_code == 200, path


GRPC_PORTS: dict[str, int] = {}  # container name -> the host port of its 8001


def test_image_serves_the_open_inference_protocol_over_grpc_on_8001(container: tuple[str, str]) -> None:
    import grpc
    import numpy as np

    from service.server.grpc.proto import grpc_predict_v2_pb2 as pb
    from service.server.grpc.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    name, _ = container
    request = pb.ModelInferRequest(model_name="mse")
    for tensor, values in (("predictions", [1.0, 2.0]), ("labels", [1.0, 4.0])):
        request.inputs.add(name=tensor, datatype="FP64", shape=[2])
        request.raw_input_contents.append(np.asarray(values, "<f8").tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{GRPC_PORTS[name]}") as channel:
        stub = GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=HANG).ready
        reply = stub.ModelInfer(request, timeout=HANG)
    assert np.frombuffer(reply.raw_output_contents[1], "<f8").tolist() == [2.0]  # mean of 0 and 4


def test_sigterm_lets_the_in_flight_request_finish_then_exits_0(container: tuple[str, str]) -> None:
    name, url = container
    outcome: dict[str, object] = {}
    started = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b'{"loss": "mse", "predictions": [[1.0], [2.0]], '
        started.set()
        time.sleep(3)  # SIGTERM arrives while the body is still arriving
        yield b'"labels": [[1.0], [4.0]]}'

    def send() -> None:
        try:
            response = httpx.post(
                f"{url}/v1/loss", content=slow_body(), headers={"content-type": "application/json"}, timeout=HANG
            )
            outcome["status"], outcome["body"] = response.status_code, response.json()
        except httpx.HTTPError as exc:
            outcome["error"] = repr(exc)

    client = threading.Thread(target=send)
    client.start()
    assert started.wait(HANG)
    time.sleep(0.5)
    podman("kill", "--signal", "TERM", name)
    client.join(HANG)
    assert outcome.get("status") == 200, outcome
    assert outcome["body"]["mean"] == 2.0  # type: ignore[index]
    assert podman("wait", name, timeout=60).stdout.strip() == "0"


def test_compose_brings_up_the_api(image: str) -> None:
    if shutil.which("podman-compose") is None:
        pytest.skip("podman-compose is not installed; run ../shared/container/setup-podman")
    port = free_port()
    project = f"losstest{uuid.uuid4().hex[:6]}"
    env = {"LOSS_SERVICE_PORT": str(port)}
    compose = ["podman-compose", "-p", project, "-f", str(ROOT / "docker-compose.yml")]
    run_env = {**os.environ, **env}
    # compose's `image:` names the image built above, so `up` runs it instead of building without
    # this machine's build flags (host network and CA bundle for pip).
    podman("tag", image, "localhost/loss-service:latest")
    try:
        up = subprocess.run([*compose, "up", "-d", "api"], capture_output=True, text=True, timeout=600, env=run_env)
        assert up.returncode == 0, up.stdout + up.stderr
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=HANG).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the compose api never became ready"
            time.sleep(0.5)
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/loss",
            json={"loss": "mae", "predictions": [[1.0]], "labels": [[4.0]]},
            timeout=HANG,
        )
        assert response.json()["mean"] == 3.0
    finally:
        subprocess.run([*compose, "down", "-t", "5"], capture_output=True, text=True, timeout=120, env=run_env)
