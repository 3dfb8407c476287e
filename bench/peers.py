"""loss-service against the servers a team would otherwise use to serve a loss over the Open
Inference Protocol: KServe's model server and MLServer, each with a custom model that computes the
same cross-entropy from logits with NumPy. Ratios > 1 mean loss-service is faster.

    make bench-peers     (or: .venv/bin/python bench/peers.py [--rounds 3] [--seconds 10])

Each peer gets its own virtual environment, made once and cached in ~/.cache/loss-service-bench
(from the package index). Every server first answers the same request through tritonclient and
must return the same per-sample values. Then, in rounds, each server in turn is started alone on
this machine and measured with the same request bytes:

  32 x 10 JSON       requests/s from wrk, 8 connections, one wrk thread
  10,000 x 100 JSON  median latency of sequential requests on one keep-alive connection
  binary f32 / f64   the same with the binary tensor extension (MLServer has none)

and over gRPC, loss-service (LOSS_SERVICE_GRPC_PORT) against KServe's gRPC server with the same
custom model, one serialised ModelInferRequest with raw tensors sent to both:

  32 x 10 raw        requests/s and p99 with 8 RPCs in flight on one HTTP/2 connection, from h2load
                     (nghttp2's load generator, as wrk for HTTP; Debian's nghttp2-client), and the
                     server process's CPU time per request (user + system, from /proc): the client
                     shares the cores, so this is the steadier of the two on a busy machine
  10,000 x 100 raw   median and p99 latency of sequential RPCs on one channel (float32)

--grpc-ceiling adds two reference servers on grpcio's asyncio server and uvloop, measured the
same way: one that parses each request and answers a fixed reply (grpcio's own cost per RPC,
which every Python gRPC server pays), and one that also runs the work loss-service's ModelInfer
shares with its HTTP route (`oip_codec.compute`: the loss request's validation, the engine, the
loss metrics) on tensors decoded once. The second is the most any gRPC layer in front of that
shared work can reach.

Both gRPC servers run in one process: loss-service with one worker, KServe with workers=1
(its gRPC server in its REST server's process and event loop). `loss-service serve` sets gRPC
core's experiments (service.server.boot.GRPC_EXPERIMENTS); KServe runs with grpcio's defaults.
--grpc-defaults adds loss-service under grpcio's defaults too (GRPC_EXPERIMENTS set empty).

Defaults everywhere: loss-service with one worker and its access log, KServe with one worker and
its request logging, MLServer with inference in its main process (parallel_workers=0; its default
of one separate worker process is slower, and measured too). Ratios are taken within each round.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "loss-service-bench"
# MLServer 1.7's worker processes call asyncio.get_event_loop() without a loop, which uvloop 0.22
# and later refuse: its default (one inference worker process) crashes at start without the pin.
PEERS = {"kserve": ["kserve==0.21.*"], "mlserver": ["mlserver==1.7.*", "uvloop<0.22"]}
MODEL = "sparse_categorical_crossentropy"
PARAMETERS = {"from_logits": True, "convention": "torch", "dtype": "float32"}

CROSS_ENTROPY = '''
import numpy as np


def cross_entropy(logits, labels):
    """-log_softmax(logits)[label] per sample, max-subtracted, in the logits' dtype."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(labels.shape[0]), labels]
'''

KSERVE_MODEL = (
    CROSS_ENTROPY
    + """
import sys
import uuid

from kserve import InferOutput, InferResponse, Model, ModelServer


class Loss(Model):
    def __init__(self):
        super().__init__("sparse_categorical_crossentropy")
        self.ready = True

    async def predict(self, payload, headers=None, response_headers=None):
        inputs = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        per_sample = cross_entropy(inputs["predictions"], inputs["labels"].astype(np.int64))
        binary = bool((payload.parameters or {}).get("binary_data_output"))
        datatype = "FP32" if per_sample.dtype == np.float32 else "FP64"
        outputs = []
        for name, array in (("per_sample", per_sample), ("mean", np.asarray([per_sample.mean()], per_sample.dtype))):
            output = InferOutput(name, list(array.shape), datatype)
            output.set_data_from_numpy(array, binary_data=binary)
            outputs.append(output)
        response_id = payload.id or str(uuid.uuid4())
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=response_id)


if __name__ == "__main__":
    grpc_port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    ModelServer(http_port=int(sys.argv[1]), grpc_port=grpc_port or 8081, workers=1, enable_grpc=bool(grpc_port)).start(
        [Loss()]
    )
"""
)

MLSERVER_MODEL = (
    CROSS_ENTROPY
    + """
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse


class Loss(MLModel):
    async def predict(self, payload):
        inputs = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        per_sample = cross_entropy(inputs["predictions"], inputs["labels"].astype(np.int64).ravel())
        mean = np.asarray([per_sample.mean()], per_sample.dtype)
        outputs = [NumpyCodec.encode_output("per_sample", per_sample), NumpyCodec.encode_output("mean", mean)]
        return InferenceResponse(model_name=self.name, outputs=outputs)
"""
)


def peer_python(name: str) -> Path:
    """The peer's virtual environment's Python, made and installed once."""
    venv = CACHE / name
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if not marker.exists():
        print(f"# installing {' '.join(PEERS[name])} into {venv} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEERS[name]], check=True)
        marker.write_text(" ".join(PEERS[name]))
    return python


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SERVER_PIDS: dict[str, int] = {}  # a running server's process by its URL


@contextmanager
def running(command: list[str], port: int, env: dict[str, str] | None = None, cwd: Path | None = None) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v2/models/{MODEL}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode}")
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{command} did not become ready")
        SERVER_PIDS[url] = process.pid
        yield url
    finally:
        SERVER_PIDS.pop(url, None)
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def loss_service(workdir: Path) -> Callable[[], object]:
    port = free_port()
    env = {"LOSS_SERVICE_STORE_URL": f"sqlite:///{workdir}/store.sqlite3"}
    return lambda: running([str(ROOT / ".venv" / "bin" / "loss-service"), "serve", "--port", str(port)], port, env)


def kserve(workdir: Path) -> Callable[[], object]:
    python, port = peer_python("kserve"), free_port()
    (workdir / "kserve_model.py").write_text(KSERVE_MODEL)
    return lambda: running([str(python), str(workdir / "kserve_model.py"), str(port)], port, cwd=workdir)


# gRPC: the same custom model behind KServe's gRPC server, loss-service on LOSS_SERVICE_GRPC_PORT.
GRPC_PORTS: dict[str, int] = {}


def loss_service_grpc(
    workdir: Path, name: str = "loss-service", experiments: str | None = None
) -> Callable[[], object]:
    """loss-service with its gRPC port; `experiments`: GRPC_EXPERIMENTS for it ("" for grpcio's
    defaults; None: what `loss-service serve` sets)."""
    port, grpc_port = free_port(), free_port()
    GRPC_PORTS[name] = grpc_port
    env = {"LOSS_SERVICE_STORE_URL": f"sqlite:///{workdir}/store.sqlite3", "LOSS_SERVICE_GRPC_PORT": str(grpc_port)}
    if experiments is not None:
        env["GRPC_EXPERIMENTS"] = experiments
    return lambda: running([str(ROOT / ".venv" / "bin" / "loss-service"), "serve", "--port", str(port)], port, env)


def kserve_grpc(workdir: Path) -> Callable[[], object]:
    python, port, grpc_port = peer_python("kserve"), free_port(), free_port()
    GRPC_PORTS["KServe"] = grpc_port
    (workdir / "kserve_model.py").write_text(KSERVE_MODEL)
    command = [str(python), str(workdir / "kserve_model.py"), str(port), str(grpc_port)]
    return lambda: running(command, port, cwd=workdir)


def grpc_request(logits: np.ndarray, labels: np.ndarray) -> bytes:
    """A ModelInferRequest with raw tensors, serialised once: both servers get the same bytes."""
    sys.path.insert(0, str(ROOT))
    from service.server.grpc.proto import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name=MODEL)
    # binary_data_output: the KServe model answers in raw_output_contents, as loss-service always does.
    dtype = "float32" if logits.dtype == np.float32 else "float64"
    parameters = {**PARAMETERS, "dtype": dtype, "binary_data_output": True}
    for key, value in parameters.items():
        if isinstance(value, bool):
            request.parameters[key].bool_param = value
        else:
            request.parameters[key].string_param = value
    datatype = "FP32" if logits.dtype == np.float32 else "FP64"
    request.inputs.add(name="predictions", datatype=datatype, shape=list(logits.shape))
    request.raw_input_contents.append(logits.tobytes())
    request.inputs.add(name="labels", datatype="INT64", shape=[labels.size])
    request.raw_input_contents.append(labels.astype("<i8").tobytes())
    return request.SerializeToString()


def grpc_per_sample(port: int, body: bytes) -> np.ndarray:
    import grpc

    from service.server.grpc.proto import grpc_predict_v2_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        reply = pb.ModelInferResponse.FromString(call(body, timeout=60))
    index = [output.name for output in reply.outputs].index("per_sample")
    if not reply.raw_output_contents:
        return np.asarray(reply.outputs[index].contents.fp32_contents, np.float64)
    return np.frombuffer(reply.raw_output_contents[index], "<f4").astype(np.float64)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` (all its threads), which must have no children."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if children:
        raise RuntimeError(f"server {pid} has child processes {children}: their CPU time is not counted")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def grpc_load(port: int, body: bytes, seconds: float, concurrency: int, pid: int) -> tuple[float, float, float]:
    """Requests per second, p99 latency (ms) and the server's CPU ms per request, with
    `concurrency` RPCs in flight on one HTTP/2 connection, sent by h2load (nghttp2's load
    generator, in C, as wrk for the HTTP rows): each RPC is one POST of the serialised request in
    gRPC's framing. h2load reads no gRPC status (an error is an HTTP 200 too), so every RPC must
    have answered the reply's bytes: the DATA it received is counted against one reply each."""
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is not installed: apt-get install nghttp2-client")
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(body, timeout=60)
    with tempfile.TemporaryDirectory() as scratch:
        framed, log = Path(scratch) / "request", Path(scratch) / "log"
        framed.write_bytes(b"\0" + len(body).to_bytes(4, "big") + body)
        command = [
            "h2load", "-c1", f"-m{concurrency}", "-d", str(framed), "-H", "content-type: application/grpc",
            "-H", "te: trailers", f"http://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer",
        ]  # fmt: skip
        subprocess.run([*command, "-n", "200"], check=True, capture_output=True)  # warm-up
        cpu = cpu_seconds(pid)
        timed = [*command, f"-D{seconds:g}", f"--log-file={log}"]
        run = subprocess.run(timed, check=True, capture_output=True, text=True)
        cpu = cpu_seconds(pid) - cpu
        latencies = [int(line.split("\t")[2]) for line in log.read_text().splitlines()]
    done = int(re.search(r"(\d+) succeeded", run.stdout).group(1))  # type: ignore[union-attr]
    data = int(re.search(r"\((\d+)\) data", run.stdout).group(1))  # type: ignore[union-attr]
    if done != len(latencies) or data != done * (5 + len(reply)):
        raise RuntimeError(f"port {port}: {done} RPCs, {len(latencies)} logged, {data} bytes of replies")
    elapsed = float(re.search(r"finished in ([\d.]+)s", run.stdout).group(1))  # type: ignore[union-attr]
    return done / elapsed, float(np.percentile(latencies, 99)) / 1e3, cpu / done * 1e3


CEILING = """
import sys

import grpc
import numpy as np
import uvloop

from service.server.api.oip_codec import compute, inference_name, wanted_outputs
from service.server.api.oip_schema import validated_request
from service.server.api.policy import RequestContext
from service.server.app import create_app
from service.server.grpc import convert
from service.server.grpc.proto import grpc_predict_v2_pb2 as pb

port, body, shared = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3] == "shared"
app = create_app()
monitor, limit = app.state.monitor, app.state.settings.max_elements
request = pb.ModelInferRequest.FromString(body)
name, validated = inference_name(request.model_name), validated_request(convert.header(request))
arrays, wanted = convert.tensors(request, validated.inputs, limit), wanted_outputs(validated.outputs, True)
reply = convert.response(compute(name, validated, arrays, wanted, monitor, RequestContext(), limit))


async def model_infer(received, context):
    if shared:
        compute(name, validated, arrays, wanted, monitor, RequestContext(), limit)
    return reply


async def main():
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        model_infer,
        request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )
    server.add_registered_method_handlers("inference.GRPCInferenceService", {"ModelInfer": handler})
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


uvloop.run(main())
"""


@contextmanager
def ceiling_server(workdir: Path, body: bytes, shared: bool) -> Iterator[tuple[int, int]]:
    """A reference gRPC server (CEILING) on a free port: its port and process id."""
    port = free_port()
    (workdir / "ceiling.py").write_text(CEILING)
    command = [str(ROOT / ".venv" / "bin" / "python"), str(workdir / "ceiling.py"), str(port), body.hex()]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOSS_SERVICE_STORE_URL": f"sqlite:///{workdir}/ceiling.sqlite3"}
    process = subprocess.Popen(
        [*command, "shared" if shared else "floor"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the reference server exited with {process.wait()}")
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(timeout=20)


DEFAULTS = "loss-service, grpcio's defaults"


def grpc_rows(
    workdir: Path, rounds: int, seconds: float, repeats: int, ceiling: bool = False, defaults: bool = False
) -> None:
    servers = {"loss-service": loss_service_grpc(workdir), "KServe": kserve_grpc(workdir)}
    if defaults:
        servers[DEFAULTS] = loss_service_grpc(workdir, DEFAULTS, experiments="")
    rng = np.random.default_rng(0)
    small = grpc_request(rng.normal(0, 2, (32, 10)).astype(np.float32), rng.integers(0, 10, 32))
    large = grpc_request(rng.normal(0, 2, (10_000, 100)).astype(np.float32), rng.integers(0, 100, 10_000))
    answers = {}
    for name, start in servers.items():
        with start():
            answers[name] = grpc_per_sample(GRPC_PORTS[name], small)
    for name in servers:
        np.testing.assert_allclose(answers[name], answers["loss-service"], rtol=2e-6, atol=1e-6, err_msg=name)
    print("# both gRPC servers returned the same per-sample values")
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    references: dict[str, list[tuple[float, float, float]]] = {"floor": [], "shared": []}
    for round_number in range(rounds):
        if ceiling:
            for kind in references:
                with ceiling_server(workdir, small, kind == "shared") as (port, pid):
                    references[kind].append(grpc_load(port, small, seconds, 8, pid))
                print(f"# gRPC round {round_number + 1}: reference {kind} {references[kind][-1]}", file=sys.stderr)
        for name in list(servers)[round_number % len(servers) :] + list(servers)[: round_number % len(servers)]:
            with servers[name]() as url:
                port = GRPC_PORTS[name]
                rate, p99, cpu = grpc_load(port, small, seconds, 8, SERVER_PIDS[url])
                times = []
                for attempt in range(repeats + 2):
                    started = time.perf_counter()
                    _grpc_once(port, large)
                    if attempt >= 2:  # two warm-up requests
                        times.append(time.perf_counter() - started)
                rows[name].append(
                    {
                        "small": rate,
                        "small_p99": p99,
                        "small_cpu": cpu,
                        "large": statistics.median(times) * 1e3,
                        "large_p99": float(np.percentile(times, 99)) * 1e3,
                    }
                )
            print(f"# gRPC round {round_number + 1}: {name} {rows[name][-1]}", file=sys.stderr)

    def median(name: str, key: str) -> float:
        return statistics.median(row[key] for row in rows[name])

    def ratios(key: str, higher_is_better: bool) -> str:
        found = [
            (ours[key] / theirs[key]) if higher_is_better else (theirs[key] / ours[key])
            for ours, theirs in zip(rows["loss-service"], rows["KServe"], strict=True)
        ]
        return f"{min(found):.2f}–{max(found):.2f}x"

    print(
        f"\n# gRPC, {os.cpu_count()} cores, loopback, one server process each, medians over {rounds} rounds; "
        "ratio: loss-service against KServe"
    )
    print("| workload (OIP gRPC) | loss-service | KServe | ratio (min–max over rounds) |")
    print("|---|---|---|---|")
    print(
        f"| 32 x 10 raw, req/s, 8 in flight | {median('loss-service', 'small'):,.0f} "
        f"| {median('KServe', 'small'):,.0f} "
        f"| {ratios('small', True)} |"
    )
    print(
        f"| 32 x 10 raw, p99 ms, 8 in flight | {median('loss-service', 'small_p99'):.2f} "
        f"| {median('KServe', 'small_p99'):.2f} | {ratios('small_p99', False)} |"
    )
    print(
        f"| 32 x 10 raw, server CPU ms per request | {median('loss-service', 'small_cpu'):.3f} "
        f"| {median('KServe', 'small_cpu'):.3f} | {ratios('small_cpu', False)} |"
    )
    print(
        f"| 10,000 x 100 raw float32, median ms | {median('loss-service', 'large'):.1f} "
        f"| {median('KServe', 'large'):.1f} | {ratios('large', False)} |"
    )
    print(
        f"| 10,000 x 100 raw float32, p99 ms | {median('loss-service', 'large_p99'):.1f} "
        f"| {median('KServe', 'large_p99'):.1f} | {ratios('large_p99', False)} |"
    )
    if defaults:
        kserve_cpu = statistics.median(row["small_cpu"] for row in rows["KServe"])
        print("\n# 32 x 10 raw, 8 in flight: loss-service as `serve` tunes gRPC core, and under grpcio's defaults")
        print("| server | req/s | p99 ms | server CPU ms per request | KServe's CPU / its CPU |")
        print("|---|---|---|---|---|")
        for name in ("loss-service", DEFAULTS):
            cpu = median(name, "small_cpu")
            print(
                f"| {name} | {median(name, 'small'):,.0f} | {median(name, 'small_p99'):.2f} | {cpu:.3f} "
                f"| {kserve_cpu / cpu:.2f}x |"
            )
    if ceiling:
        kserve_cpu = statistics.median(row["small_cpu"] for row in rows["KServe"])
        print("\n# 32 x 10 raw, 8 in flight: reference servers (grpc.aio + uvloop), medians; KServe / reference CPU")
        print("| server | req/s | p99 ms | server CPU ms per request | KServe's CPU / its CPU |")
        print("|---|---|---|---|---|")
        for kind, label in (("floor", "parse, fixed reply"), ("shared", "parse, shared work, fixed reply")):
            rate, p99, cpu = (statistics.median(values) for values in zip(*references[kind], strict=True))
            print(f"| {label} | {rate:,.0f} | {p99:.2f} | {cpu:.3f} | {kserve_cpu / cpu:.2f}x |")


_CHANNELS: dict[int, object] = {}


def _grpc_once(port: int, body: bytes) -> None:
    """One ModelInfer on a kept channel (sequential requests, as the HTTP rows' keep-alive connection)."""
    import grpc

    if port not in _CHANNELS:
        _CHANNELS[port] = grpc.insecure_channel(f"127.0.0.1:{port}").unary_unary(
            "/inference.GRPCInferenceService/ModelInfer"
        )
    _CHANNELS[port](body, timeout=60)  # type: ignore[operator]


def mlserver(workdir: Path, parallel_workers: int) -> Callable[[], object]:
    python, port = peer_python("mlserver"), free_port()
    folder = workdir / f"mlserver-{parallel_workers}"
    folder.mkdir(exist_ok=True)
    (folder / "model.py").write_text(MLSERVER_MODEL)
    settings = {
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": parallel_workers,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "model-settings.json").write_text(json.dumps({"name": MODEL, "implementation": "model.Loss"}))
    mlserver_bin = python.parent / "mlserver"
    return lambda: running([str(mlserver_bin), "start", str(folder)], port, cwd=folder)


def json_body(logits: np.ndarray, labels: np.ndarray) -> bytes:
    datatype = "FP32" if logits.dtype == np.float32 else "FP64"
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "predictions",
                    "shape": list(logits.shape),
                    "datatype": datatype,
                    "data": logits.ravel().tolist(),
                },
                {"name": "labels", "shape": [labels.size], "datatype": "INT64", "data": labels.tolist()},
            ],
            "parameters": PARAMETERS,
        }
    ).encode()


def binary_body(logits: np.ndarray, labels: np.ndarray) -> tuple[bytes, dict[str, str]]:
    datatype = "FP32" if logits.dtype == np.float32 else "FP64"
    parameters = {**PARAMETERS, "dtype": "float32" if logits.dtype == np.float32 else "float64"}
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "predictions",
                    "shape": list(logits.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": logits.nbytes},
                },
                {
                    "name": "labels",
                    "shape": [labels.size],
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": labels.nbytes},
                },
            ],
            "parameters": {**parameters, "binary_data_output": True},
        }
    ).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return header + logits.tobytes() + labels.astype(np.int64).tobytes(), headers


def same_answers(url: str, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The server's per-sample values for one request through tritonclient (JSON tensors)."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=url.removeprefix("http://"))
    predictions = triton.InferInput("predictions", list(logits.shape), "FP32")
    predictions.set_data_from_numpy(logits, binary_data=False)
    targets = triton.InferInput("labels", [labels.size], "INT64")
    targets.set_data_from_numpy(labels.astype(np.int64), binary_data=False)
    # KServe reads a body without this Content-Type as binary tensors; tritonclient sends none.
    headers = {"Content-Type": "application/json"}
    result = client.infer(MODEL, [predictions, targets], parameters=PARAMETERS, headers=headers)
    return np.asarray(result.as_numpy("per_sample"), dtype=np.float64).ravel()


def requests_per_second(url: str, body: bytes, seconds: float) -> float:
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
    )
    run = subprocess.run(
        ["wrk", "-t1", "-c8", f"-d{seconds:g}s", "-s", str(script), f"{url}/v2/models/{MODEL}/infer"],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(line for line in run.stdout.splitlines() if line.startswith("Requests/sec:"))
    errors = [line for line in run.stdout.splitlines() if "Non-2xx" in line or "Socket errors" in line]
    if errors:
        raise RuntimeError(f"{url}: {errors}")
    return float(line.split()[1])


def median_ms(url: str, body: bytes, headers: dict[str, str], repeats: int) -> float:
    times = []
    with httpx.Client(timeout=120) as client:
        for attempt in range(repeats + 2):
            started = time.perf_counter()
            response = client.post(f"{url}/v2/models/{MODEL}/infer", content=body, headers=headers)
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
            if attempt >= 2:  # two warm-up requests
                times.append(elapsed)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--grpc-only", action="store_true", help="only the gRPC rows (loss-service and KServe)")
    parser.add_argument("--grpc-ceiling", action="store_true", help="also the gRPC reference servers (see above)")
    parser.add_argument(
        "--grpc-defaults", action="store_true", help="also loss-service under grpcio's default experiments"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="loss-service-peers-"))
    grpc_rows(workdir, args.rounds, args.seconds, args.repeats, args.grpc_ceiling, args.grpc_defaults)
    if args.grpc_only:
        return
    servers = {
        "loss-service": loss_service(workdir),
        "KServe": kserve(workdir),
        "MLServer (in-process)": mlserver(workdir, 0),
        "MLServer (default)": mlserver(workdir, 1),
    }
    rng = np.random.default_rng(0)
    small = (rng.normal(0, 2, (32, 10)).astype(np.float32), rng.integers(0, 10, 32))
    large = (rng.normal(0, 2, (10_000, 100)).astype(np.float32), rng.integers(0, 100, 10_000))
    small_json, large_json = json_body(*small), json_body(*large)
    binaries = {dtype: binary_body(large[0].astype(dtype), large[1]) for dtype in ("float32", "float64")}
    json_headers = {"Content-Type": "application/json"}

    reference = None
    for name, start in servers.items():
        with start() as url:
            answer = same_answers(url, *small)
            if reference is None:
                reference = answer
            np.testing.assert_allclose(answer, reference, rtol=2e-6, atol=1e-6, err_msg=name)
    print(f"# every server returned the same {reference.size} per-sample values (tritonclient, JSON tensors)")

    rows: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    for round_number in range(args.rounds):
        order = list(servers)[round_number % len(servers) :] + list(servers)[: round_number % len(servers)]
        for name in order:
            with servers[name]() as url:
                measured = {
                    "small": requests_per_second(url, small_json, args.seconds),
                    "large": median_ms(url, large_json, json_headers, args.repeats),
                }
                if not name.startswith("MLServer"):  # no binary tensor extension
                    for dtype, (body, headers) in binaries.items():
                        measured[dtype] = median_ms(url, body, headers, args.repeats)
                rows[name].append(measured)
            print(f"# round {round_number + 1}: {name} {measured}", file=sys.stderr)

    def ratio_range(workload: str, higher_is_better: bool) -> str:
        ratios = []
        for index in range(args.rounds):
            ours = rows["loss-service"][index][workload]
            peers = [
                rows[name][index][workload]
                for name in servers
                if name != "loss-service" and workload in rows[name][index]
            ]
            best = max(peers) if higher_is_better else min(peers)
            ratios.append(ours / best if higher_is_better else best / ours)
        return f"{min(ratios):.2f}–{max(ratios):.2f}x"

    def cell(name: str, workload: str, fmt: str) -> str:
        values = [row[workload] for row in rows[name] if workload in row]
        return "–" if not values else format(statistics.median(values), fmt)

    print(f"\n# 2 cores, loopback, medians over {args.rounds} rounds; ratio: loss-service against the fastest peer")
    print("| workload (OIP) | " + " | ".join(servers) + " | ratio (min–max over rounds) |")
    print("|---|" + "---|" * (len(servers) + 1))
    print(
        "| 32 x 10 JSON, req/s, wrk -c8 | "
        + " | ".join(cell(name, "small", ",.0f") for name in servers)
        + f" | {ratio_range('small', True)} |"
    )
    print(
        "| 10,000 x 100 JSON, ms | "
        + " | ".join(cell(name, "large", ".1f") for name in servers)
        + f" | {ratio_range('large', False)} |"
    )
    for dtype in ("float32", "float64"):
        print(
            f"| 10,000 x 100 binary {dtype}, ms | "
            + " | ".join(cell(name, dtype, ".1f") for name in servers)
            + f" | {ratio_range(dtype, False)} |"
        )


if __name__ == "__main__":
    main()
