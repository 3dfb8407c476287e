"""`loss-service`: serve the API, print its OpenAPI document, list the catalogue, compute a loss
(`compute.py`), make an API key."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TypeAlias

import orjson

from service import __version__
from service.cli.compute import EXIT_OK, EXIT_USAGE, _compute
from service.cli.history import _history
from service.engine.conventions import CONVENTIONS
from service.offline.files import READABLE
from service.offline.spec import DEFAULT_MAX_GROUPS


def _serve(args: argparse.Namespace) -> int:
    from service.server.boot import serve

    return serve(args.host, args.port, args.workers, args.ssl_certfile, args.ssl_keyfile)


def _new_key(args: argparse.Namespace) -> int:
    from service.server.keys import key_entry

    try:
        key, fields = key_entry(args.name, args.scopes, args.models)
    except ValueError as exc:
        print(f"loss-service keys new: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"key (shown once; give it to {args.name}, store it nowhere else): {key}", file=sys.stderr)
    lines = ["[[keys]]"] + [f"{name} = {orjson.dumps(value).decode()}" for name, value in fields.items()]
    print("\n".join(lines))
    return EXIT_OK


def _openapi(_: argparse.Namespace) -> int:
    from service.server.app import create_app

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


# What add_subparsers returns, which each command's _add_* function adds its parser to.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loss-service", description=__doc__)
    parser.add_argument("--version", action="version", version=f"loss-service {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands)
    _add_keys(commands)
    _add_compute(commands)
    _add_history(commands)
    commands.add_parser("openapi", help="print the OpenAPI document as JSON").set_defaults(run=_openapi)
    commands.add_parser("losses", help="list the loss catalogue and options").set_defaults(run=_losses)
    return parser


def _add_serve(commands: Commands) -> None:
    """`serve`: the bind address, port, workers and TLS files (each defaulting to its setting)."""
    serve = commands.add_parser("serve", help="run the HTTP service with uvicorn (httptools + uvloop)")
    serve.add_argument("--host", help="bind address (default LOSS_SERVICE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default LOSS_SERVICE_PORT or 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default LOSS_SERVICE_WORKERS or 1)")
    serve.add_argument(
        "--ssl-certfile", help="serve HTTPS with this PEM certificate (default LOSS_SERVICE_SSL_CERTFILE)"
    )
    serve.add_argument("--ssl-keyfile", help="its PEM private key (default LOSS_SERVICE_SSL_KEYFILE)")
    serve.set_defaults(run=_serve)


def _add_keys(commands: Commands) -> None:
    """`keys new`: a fresh key and its entry for the keys file."""
    keys = commands.add_parser("keys", help="API keys for the keys file (LOSS_SERVICE_API_KEYS_FILE)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    new = key_commands.add_parser("new", help="print a fresh random key once, and the entry to paste into the file")
    new.add_argument("name", help="the key's name, shown in logs and metrics (1-64 of A-Z a-z 0-9 _ . : -)")
    new.add_argument("--scopes", default="compute,ingest,read", help="comma-separated (default compute,ingest,read)")
    new.add_argument("--models", help="comma-separated glob patterns (default: every model)")
    new.set_defaults(run=_new_key)


def _add_compute(commands: Commands) -> None:
    """`compute`: losses from files or a dataset, locally, on Dask or through a service."""
    compute = commands.add_parser(
        "compute",
        help="per-sample losses from files, locally with the engine or through a running service (--url)",
        description="Exit codes: 0 ok, 1 other service error, 2 usage (arguments, unreadable files, outputs "
        "refused or unwritable), 3 invalid input (data), 4 unreachable service or Dask scheduler.",
    )
    compute.add_argument("--loss", required=True, help="catalogue name or alias")
    compute.add_argument("--predictions", metavar="FILE", help=f"one of {', '.join(READABLE)}")
    compute.add_argument("--labels", metavar="FILE", help="as --predictions")
    compute.add_argument("--sample-weight", metavar="FILE", help="optional, one weight per sample")
    compute.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a loss option (repeat)")
    compute.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    compute.add_argument("--convention", choices=list(CONVENTIONS), default="keras")
    compute.add_argument("--model", help="monitoring label (with --url)")
    compute.add_argument("--url", help="compute through this service instead of locally")
    compute.add_argument(
        "--api-key",
        default=os.environ.get("LOSS_SERVICE_API_KEY"),
        help="bearer token for --url (default LOSS_SERVICE_API_KEY, which keeps it out of the process list)",
    )
    compute.add_argument("--chunk-size", type=int, default=100_000, help="samples per request with --url")
    compute.add_argument("--progress", action="store_true", help="a progress bar for --url (needs tqdm)")
    compute.add_argument("--json", action="store_true", help="print the whole result as JSON")
    dataset = compute.add_argument_group(
        "datasets larger than memory", "instead of --predictions/--labels: columns of a Parquet or Arrow dataset"
    )
    dataset.add_argument("--dataset", metavar="PATH", help="a file, a directory or a glob of .parquet/.arrow files")
    dataset.add_argument("--predictions-column", metavar="NAME", help="numbers, or (fixed-size) lists for vectors")
    dataset.add_argument("--labels-column", metavar="NAME")
    dataset.add_argument("--weight-column", metavar="NAME", help="one sample weight per row (optional)")
    dataset.add_argument("--group-by", action="append", default=[], metavar="COLUMN", help="loss per segment (repeat)")
    dataset.add_argument("--per-sample-out", metavar="FILE.parquet", help="stream per-sample values with row index")
    dataset.add_argument("--scheduler", metavar="ADDRESS", help="compute on this Dask scheduler (loss-service[dask])")
    dataset.add_argument("--batch-rows", type=int, default=65_536, help="rows per record batch (default 65536)")
    dataset.add_argument(
        "--max-groups",
        type=int,
        default=DEFAULT_MAX_GROUPS,
        help=f"most segments --group-by may find; more is an error (default {DEFAULT_MAX_GROUPS})",
    )
    compute.add_argument("--out", metavar="FILE", help="write per-sample losses (.npy, .csv, .jsonl, .json)")
    compute.add_argument("--head", type=int, default=10, help="per-sample values shown in the table")
    compute.set_defaults(run=_compute)


def _add_history(commands: Commands) -> None:
    """`history`: a model's history from a running service, as a table or JSON."""
    history = commands.add_parser(
        "history",
        help="a model's losses and label coverage by prediction time, from a running service",
        description="Exit codes: 0 ok, 1 other service error, 2 usage, 3 invalid query or unknown model, "
        "4 unreachable service.",
    )
    history.add_argument("model", help="the model's name")
    history.add_argument("--start", help="Unix seconds or RFC 3339 (default 24 h before --end)")
    history.add_argument("--end", help="Unix seconds or RFC 3339 (default now)")
    history.add_argument("--step", help="bucket width in seconds (default 3600)")
    history.add_argument("--by", metavar="KEY", help="one entry per value of this segment key in each bucket")
    history.add_argument(
        "--url",
        default=os.environ.get("LOSS_SERVICE_URL", "http://127.0.0.1:8000"),
        help="the service (default LOSS_SERVICE_URL or http://127.0.0.1:8000)",
    )
    history.add_argument(
        "--api-key",
        "--key",
        default=os.environ.get("LOSS_SERVICE_API_KEY"),
        help="bearer token (default LOSS_SERVICE_API_KEY, which keeps it out of the process list)",
    )
    history.add_argument("--json", action="store_true", help="print the answer as JSON")
    history.set_defaults(run=_history)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))
