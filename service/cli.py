"""`loss-service`: serve the API, print its OpenAPI document, list the catalogue."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import orjson

from service import __version__
from service.config import Settings


def _prepare_metrics_dir(directory: Path) -> None:
    """Every worker writes its metrics here; a fresh start must not inherit a previous run's counts."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = Settings()
    _prepare_metrics_dir(Path(settings.metrics_dir or Path(tempfile.gettempdir()) / "loss-service-metrics"))
    # uvicorn drains, then re-raises the signal that stopped it; a clean drain should exit 0
    # (orchestrators read a signal exit as a crash), so these handlers absorb that re-raise.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: None)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port if args.port is not None else settings.port,
        workers=args.workers or settings.workers,
        log_level=settings.log_level,
        http="httptools",
        loop="uvloop",
        timeout_graceful_shutdown=int(settings.shutdown_timeout) or None,
    )
    return 0


def _openapi(_: argparse.Namespace) -> int:
    from service.app import create_app

    document = create_app().openapi()
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n")
    return 0


def _losses(_: argparse.Namespace) -> int:
    from service.engine import catalogue

    for spec in catalogue():
        aliases = f" ({', '.join(spec.aliases)})" if spec.aliases else ""
        print(f"{spec.name}{aliases}\n    {spec.summary}")
        for option in spec.options:
            print(f"    --option {option.name}=<{option.type_name()}>  default {option.default!r}: {option.doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loss-service", description=__doc__)
    parser.add_argument("--version", action="version", version=f"loss-service {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service with uvicorn (httptools + uvloop)")
    serve.add_argument("--host", help="bind address (default LOSS_SERVICE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default LOSS_SERVICE_PORT or 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default LOSS_SERVICE_WORKERS or 1)")
    serve.set_defaults(run=_serve)

    commands.add_parser("openapi", help="print the OpenAPI document as JSON").set_defaults(run=_openapi)
    commands.add_parser("losses", help="list the loss catalogue and options").set_defaults(run=_losses)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
