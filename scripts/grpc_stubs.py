"""Regenerate the gRPC stubs of service/server/grpc/proto from its .proto (make grpc-stubs).

    grpc_predict_v2_pb2.py, .pyi   the messages (protoc's Python and type-stub output)
    grpc_predict_v2_pb2_grpc.py    the service's stub and servicer (grpcio-tools' plugin)

They are committed, made by the grpcio-tools version pinned in pyproject's dev extras (their
headers say which: "Protobuf Python Version", GRPC_GENERATED_VERSION), so that installing the
service needs no code generator; tests/served/test_grpc.py regenerates them into a temporary directory
and compares.

One line is changed after protoc: the messages are added to a descriptor pool of their own
rather than protobuf's default one. tritonclient.grpc and kserve define the same `inference.*`
messages in the default pool, and a process that imports two definitions of one message there
fails ("duplicate symbol"); in a pool of its own, loss-service's stubs load beside either.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = "service/server/grpc/proto/grpc_predict_v2.proto"
MESSAGES = "service/server/grpc/proto/grpc_predict_v2_pb2.py"
DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
OWN_POOL = "DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile("


def generate(out: Path) -> None:
    """Write the stubs under `out`, at the same relative paths as in the repository."""
    from grpc_tools import protoc

    arguments = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(ROOT / PROTO),
    ]
    if protoc.main(arguments) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    messages = out / MESSAGES
    text = messages.read_text()
    if text.count(DEFAULT_POOL) != 1:
        raise RuntimeError(f"{MESSAGES}: protoc's output no longer adds its file to the default pool in one line")
    messages.write_text(text.replace(DEFAULT_POOL, OWN_POOL))


def main() -> None:
    generate(ROOT)
    print(f"wrote the stubs of {PROTO}", file=sys.stderr)


if __name__ == "__main__":
    main()
