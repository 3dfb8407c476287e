"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`, served by each worker
beside its HTTP server (LOSS_SERVICE_GRPC_PORT), on the same event loop.

Each RPC answers what its HTTP route answers, through the same codec (`service.server.api.oip_codec`):
the same models, parameters and numbers, and the same messages for bad input. It goes through the
same keys (`authorization: Bearer` metadata), the same heavy-request bound and memory budget as
HTTP requests (the worker's one `HeavyRequests`), the same deadline (LOSS_SERVICE_REQUEST_TIMEOUT,
or the client's deadline if sooner), and is counted in the same metrics and access log, with
`method` "GRPC" and `route` the RPC's path. A refusal's HTTP status becomes its gRPC code
(`CODES`); the metrics count that status, so error rates read the same for both transports.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from fastapi import FastAPI, Request
from google.protobuf.message import DecodeError, Message

from service import __version__
from service.config import Settings
from service.server.api.access import AccessRefusedError, audit, bearer_principal, permitted, retry_after
from service.server.api.batches import off_loop, reserve
from service.server.api.guards import Deadline, HeavyRequests, Slot
from service.server.api.oip_codec import EXTENSIONS, InferenceError, catalogue_name, inference_name, model_metadata
from service.server.api.policy import RequestContext, RoutePolicy
from service.server.api.problems import ProblemError
from service.server.grpc import convert
from service.server.grpc.proto import grpc_predict_v2_pb2 as pb
from service.server.monitoring import CONTEXT, Monitor, access_log
from service.server.monitoring.accesslog import write_access_line

log = logging.getLogger("service.server.grpc")
SERVICE = "inference.GRPCInferenceService"
# A refusal's HTTP status and the gRPC code it is answered with.
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Each RPC's policy, as its HTTP route declares it: the probes open, ModelInfer heavy (`_rpc`
# claims its slot, as `HeavyRequests` does for a heavy route) and needing the compute scope, the
# metadata any valid key.
HEALTH = RoutePolicy(key="none", dialect="oip")
METADATA = RoutePolicy(dialect="oip")
INFER = RoutePolicy(scope="compute", heavy=True, dialect="oip")
NAMES_KEPT = 1024


class Malformed:
    """A request whose bytes are not the RPC's protobuf message."""

    def __init__(self, message: str) -> None:
        self.message = message


def _reader(message_type: type[Message]) -> Callable[[bytes], tuple[int, Message | Malformed]]:
    """Deserialises a request and keeps its size; bytes that do not parse are answered with
    INVALID_ARGUMENT by the RPC (grpcio's own answer to a deserialiser's exception is INTERNAL)."""
    name = message_type.DESCRIPTOR.name

    def read(data: bytes) -> tuple[int, Message | Malformed]:
        try:
            return len(data), message_type.FromString(data)
        except DecodeError as exc:
            return len(data), Malformed(f"malformed {name}: {exc}")

    return read


class RefusalError(Exception):
    """An RPC refused: `status` the HTTP status its route would answer, `message` the same text."""

    def __init__(self, status: int, message: str, retry: float | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry, self.reason = status, message, retry, reason


@dataclass
class _Call:
    """What the HTTP layer keeps in a request's scope, for one RPC: `off_loop` and the engine's
    budget read the request's context and `app.state.settings`."""

    app: FastAPI
    policy: RoutePolicy
    state: RequestContext = field(default_factory=RequestContext)

    def __post_init__(self) -> None:
        self.state.policy = self.policy

    @property
    def scope(self) -> dict[str, Any]:
        return {CONTEXT: self.state}


class InferenceService:
    """The six RPCs, each wrapped by `_rpc` (keys, metrics, access log, refusals as status codes)."""

    def __init__(self, app: FastAPI, heavy: HeavyRequests) -> None:
        self.app = app
        self.heavy = heavy
        self.settings: Settings = app.state.settings
        self.monitor: Monitor = app.state.monitor
        # The first NAMES_KEPT model names ModelInfer found, and the name each computes (a
        # library metric's parameters, `error@0.7`, make the names it finds unbounded).
        self._names: dict[str, str] = {}

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """Each RPC's handler by method name, for `add_registered_method_handlers` (grpcio looks a
        registered method's handler up in a dict, where a generic handler is a Python call per RPC)."""
        rpcs: dict[str, tuple[Callable[..., Awaitable[Message]], RoutePolicy, type[Message], type[Message]]] = {
            "ServerLive": (self.server_live, HEALTH, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": (self.server_ready, HEALTH, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": (self.model_ready, METADATA, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": (self.server_metadata, METADATA, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": (self.model_metadata, METADATA, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelInfer": (self.model_infer, INFER, pb.ModelInferRequest, pb.ModelInferResponse),
        }
        return {
            name: grpc.unary_unary_rpc_method_handler(
                self._rpc(name, method, policy),
                request_deserializer=_reader(request_type),
                response_serializer=response_type.SerializeToString,
            )
            for name, (method, policy, request_type, response_type) in rpcs.items()
        }

    def _rpc(
        self, name: str, method: Callable[[Any, int, _Call, Any], Awaitable[Message]], policy: RoutePolicy
    ) -> Callable[[tuple[int, Message | Malformed], Any], Awaitable[Message]]:
        route = f"/{SERVICE}/{name}"

        async def rpc(received: tuple[int, Message | Malformed], context: Any) -> Message:
            size, request = received
            started = time.perf_counter()
            metadata = dict(context.invocation_metadata() or ())
            request_id = _request_id(metadata.get("x-request-id", ""))
            call = _Call(self.app, policy)
            status = 500
            slot: Slot | None = None
            self.monitor.in_flight.inc()
            try:
                if policy.needs_key(protect_metrics=False):
                    self._authenticate(metadata.get("authorization", ""), policy, call.state, route)
                if policy.heavy:  # the message is in: its slot, as HeavyRequests claims a heavy route's
                    slot = call.state.slot = self._claim()
                if isinstance(request, Malformed):
                    raise RefusalError(400, request.message)
                response = await method(request, size, call, context)
                status = 200
                return response
            except RefusalError as refusal:
                status = refusal.status
                await _refuse(context, refusal, call.state, request_id)
                raise  # abort raises; this line is never reached
            except asyncio.CancelledError:
                status = 499  # the client cancelled, or its deadline passed first
                raise
            except Exception:
                log.exception("%s failed", route)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
                raise
            finally:
                if slot is not None:
                    slot.release()
                self.monitor.in_flight.dec()
                self._record(route, status, time.perf_counter() - started, size, call.state, request_id)

        return rpc

    def _record(
        self, route: str, status: int, seconds: float, size: int, state: RequestContext, request_id: str
    ) -> None:
        """An RPC into the request metrics and the access log, as HTTP's request monitor records a
        request, so that both transports read the same."""
        self.monitor.record_request(route, "GRPC", status, seconds, size, state.key, state.refusal)
        if access_log.isEnabledFor(logging.INFO):
            line = {
                "request_id": request_id,
                "method": "GRPC",
                "route": route,
                "status": status,
                "grpc_status": "OK" if status == 200 else CODES[status].name,
                "duration_ms": round(seconds * 1e3, 3),
                "body_bytes": size,
                "model": state.model,
                "loss": state.loss,
                "batch_size": state.batch_size,
            }
            write_access_line(line)

    def _claim(self) -> Slot:
        """One of the worker's heavy-request slots (shared with HTTP), or 503 with Retry-After."""
        slot = self.heavy._claim()
        if slot is None:
            detail = f"{self.heavy.limit} requests are already being computed; retry shortly"
            raise RefusalError(503, detail, self.heavy.retry_after)
        return slot

    def _authenticate(self, authorization: str, policy: RoutePolicy, state: RequestContext, route: str) -> None:
        """The HTTP guard's checks (ApiKeys) on the `authorization` metadata, for the scope the
        RPC's policy names (ModelInfer: compute, as POST /v2/models/{model}/infer)."""
        keys = self.app.state.keys
        if not keys.enabled:
            return
        found = bearer_principal(keys, authorization)
        if isinstance(found, AccessRefusedError):
            audit(401, "unknown", route, None, found.reason)
            raise RefusalError(401, found.detail)
        state.key = found.name
        refused = permitted(found, policy.scope)
        if refused is not None:
            audit(refused.status, found.name, route, None, refused.reason)
            raise RefusalError(
                refused.status, refused.detail, refused.retry_after, "rate_limited" if refused.retry_after else None
            )
        state.principal = found

    def _ready(self) -> bool:
        return bool(self.app.state.lifecycle == "ready")

    async def server_live(self, request: Any, size: int, call: _Call, context: Any) -> Message:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, size: int, call: _Call, context: Any) -> Message:
        return pb.ServerReadyResponse(ready=self._ready())

    async def model_ready(self, request: Any, size: int, call: _Call, context: Any) -> Message:
        _model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self._ready())

    async def server_metadata(self, request: Any, size: int, call: _Call, context: Any) -> Message:
        return pb.ServerMetadataResponse(name="loss-service", version=__version__, extensions=EXTENSIONS)

    async def model_metadata(self, request: Any, size: int, call: _Call, context: Any) -> Message:
        metadata = model_metadata(_model(request.name, request.version))
        tensors = {
            kind: [
                pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                for t in metadata[kind]
            ]
            for kind in ("inputs", "outputs")
        }
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=tensors["inputs"],
            outputs=tensors["outputs"],
        )

    async def model_infer(self, request: Any, size: int, call: _Call, context: Any) -> Message:
        name = self._names.get(request.model_name) if request.model_version in ("", "1") else None
        if name is None:
            _model(request.model_name, request.model_version)
            name = inference_name(request.model_name)
            if len(self._names) < NAMES_KEPT:
                self._names[request.model_name] = name
        limit = self.settings.max_elements
        decoded = convert.decoded_bytes(size)
        try:
            if size <= self.settings.offload_bytes and decoded <= self.settings.offload_bytes:
                # What `off_loop` runs on the event loop: no deadline can stop it (the loop
                # does not run until it is done), so none is set.
                reserve(call.state, decoded, "parsing this body")
                return convert.infer(name, request, self.monitor, call.state, limit)
            remaining = context.time_remaining()
            timeout = self.settings.request_timeout
            seconds = timeout if remaining is None else min(timeout, remaining)
            with Deadline(seconds) as deadline:
                answer = await off_loop(
                    cast(Request, call),
                    size,
                    lambda: decoded,
                    lambda: convert.infer(name, request, self.monitor, call.state, limit),
                )
            if deadline.expired:
                within = f"{seconds:g} s" + (" (LOSS_SERVICE_REQUEST_TIMEOUT)" if seconds == timeout else "")
                raise RefusalError(504, f"the loss was not computed within {within}; try a smaller batch")
            return cast(Message, answer)
        except InferenceError as exc:
            raise RefusalError(exc.status, str(exc)) from None
        except ProblemError as exc:  # the memory budget's refusals (413, 503)
            retry = float(exc.headers["Retry-After"]) if exc.headers and "Retry-After" in exc.headers else None
            raise RefusalError(exc.status, exc.detail, retry) from None
        except AccessRefusedError as exc:  # the key may not use the `model` parameter, or is over its values
            audit(exc.status, call.state.key or "unknown", f"/{SERVICE}/ModelInfer", exc.model, exc.reason)
            reason = "rate_limited" if exc.status == 429 else None
            raise RefusalError(exc.status, exc.detail, exc.retry_after, reason) from None


def _model(name: str, version: str) -> str:
    try:
        found = catalogue_name(name)
    except InferenceError as exc:
        raise RefusalError(404, str(exc)) from None
    if version not in ("", "1"):
        raise RefusalError(404, f"model {found} has no version {version!r}; its one version is 1")
    return found


def _request_id(given: str) -> str:
    """The client's x-request-id where it is short and printable (it goes into the log), else a random one."""
    return given if given and len(given) <= 128 and given.isprintable() else f"{random.getrandbits(128):032x}"


async def _refuse(context: Any, refusal: RefusalError, state: RequestContext, request_id: str) -> None:
    """Abort the RPC with the refusal's gRPC code and message, its request id and any Retry-After
    in the trailers (where a gRPC client reads what HTTP sends as headers)."""
    if refusal.reason is not None:
        state.refusal = refusal.reason
    trailers = [("x-request-id", request_id)]
    if refusal.retry is not None:
        trailers.append(("retry-after", retry_after(refusal.retry)))
    context.set_trailing_metadata(tuple(trailers))
    await context.abort(CODES[refusal.status], refusal.message)


def heavy_requests(app: FastAPI) -> HeavyRequests:
    """The worker's HeavyRequests guard (its bound on heavy requests and its memory budget), found
    in the app's middleware stack (built here as Starlette builds it on its first call, if the
    lifespan runs before any)."""
    if app.middleware_stack is None:
        app.middleware_stack = app.build_middleware_stack()
    node: Any = app.middleware_stack
    while node is not None:
        if isinstance(node, HeavyRequests):
            return node
        node = getattr(node, "app", None)
    raise RuntimeError("the app has no HeavyRequests guard")


class GrpcServer:
    """grpcio's asyncio server on LOSS_SERVICE_GRPC_PORT, in one worker."""

    def __init__(self, app: FastAPI) -> None:
        settings: Settings = app.state.settings
        self.grace = settings.shutdown_timeout
        options = [
            # Every worker binds the port; the kernel spreads connections among them.
            ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
            # A message is whole in memory before any check: at most what a body may hold arriving.
            ("grpc.max_receive_message_length", min(settings.max_body_bytes, settings.memory_budget // 2)),
            ("grpc.max_send_message_length", -1),
        ]
        self.server = grpc.aio.server(options=options)
        self.server.add_registered_method_handlers(SERVICE, InferenceService(app, heavy_requests(app)).handlers())
        address = f"{settings.host}:{settings.grpc_port}"
        if settings.ssl_certfile and settings.ssl_keyfile:
            with open(settings.ssl_keyfile, "rb") as key, open(settings.ssl_certfile, "rb") as certificate:
                credentials = grpc.ssl_server_credentials([(key.read(), certificate.read())])
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.server.start()
        log.info("gRPC (Open Inference Protocol) on port %d", self.port)

    def stop_soon(self) -> None:
        """Stop taking RPCs now and let those under way finish (SIGTERM); `stopped` waits for them."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self.server.stop(self.grace))

    async def stopped(self) -> None:
        self.stop_soon()
        assert self._stopping is not None
        await self._stopping


async def serve_grpc(app: FastAPI) -> GrpcServer | None:
    """Start the worker's gRPC server if LOSS_SERVICE_GRPC_PORT is set."""
    if app.state.settings.grpc_port is None:
        return None
    server = GrpcServer(app)
    await server.start()
    app.state.grpc = server
    return server
