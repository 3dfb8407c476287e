"""`loss-service`: serve the API, print its OpenAPI document, list the catalogue."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from service import __version__
from service.engine.conventions import CONVENTIONS
from service.offline.datasets import DEFAULT_MAX_GROUPS
from service.offline.files import (
    READABLE,
    FileFormatError,
    check_destination,
    check_writable,
    input_path,
    read_array,
    refuse_overlap,
    write_array,
)
from service.values.results import LossResult


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


EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INVALID, EXIT_UNREACHABLE = 0, 1, 2, 3, 4


def _parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """`k=v` pairs; each value is read as JSON (true, 0.1, [1, 2]) and otherwise kept as text."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise FileFormatError(f"--option {pair!r}: expected key=value")
        try:
            options[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            options[key] = raw
    return options


def _compute_locally(args: argparse.Namespace, arrays: dict[str, Any], options: dict[str, Any]) -> LossResult:
    from service.engine import compute
    from service.option_models import checked_options

    checked = checked_options(args.loss, args.convention, options)
    return compute(args.loss, **arrays, options=checked, dtype=args.dtype, convention=args.convention)


def _compute_remotely(args: argparse.Namespace, arrays: dict[str, Any], options: dict[str, Any]) -> LossResult:
    from service.client import LossClient

    with LossClient(args.url, api_key=args.api_key, chunk_size=args.chunk_size, progress=args.progress) as client:
        result = client.loss(
            args.loss, dtype=args.dtype, convention=args.convention, model=args.model, **arrays, **options
        )
    return result


def _report(result: dict[str, Any], head: int) -> str:
    per_sample = result["per_sample"]
    shown = np.array2string(per_sample.ravel()[:head], precision=6, separator=", ")
    more = f" ... ({per_sample.size - head} more)" if per_sample.size > head else ""
    rows = [
        ("loss", f"{result['loss']} ({result['convention']}, {result['dtype']})"),
        ("count", str(result["count"])),
        ("mean", repr(result["mean"])),
        ("sum", repr(result["sum"])),
        ("per_sample", shown + more),
    ]
    return "\n".join(f"{name:<11} {value}" for name, value in rows)


# An error message longer than this is clipped: it is one line on a terminal, not a dump.
MESSAGE_CHARS = 2_000


def _fail(code: int, message: str) -> int:
    """Print `message` as one line on stderr (pyarrow's and others' messages may span several)
    and return the exit code."""
    line = " ".join(message.split())
    if len(line) > MESSAGE_CHARS:
        line = line[: MESSAGE_CHARS - 3] + "..."
    print(f"loss-service: {line}", file=sys.stderr)
    return code


def _usage(message: str) -> int:
    return _fail(EXIT_USAGE, message)


def _invalid(details: str) -> int:
    return _fail(EXIT_INVALID, f"invalid input: {details}")


def _numbers_error(args: argparse.Namespace) -> str | None:
    """The first count option out of range: argparse checks only that each is an integer."""
    bounds = (("--batch-rows", args.batch_rows, 1), ("--chunk-size", args.chunk_size, 1), ("--head", args.head, 0))
    for option, value, least in (*bounds, ("--max-groups", args.max_groups, 1)):
        if value < least:
            return f"{option} must be at least {least}, not {value}"
    return None


def _option_errors(exc: Any) -> str:
    """Pydantic's errors for --option values, each with its options.<name> path."""
    return "; ".join(f"options.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def _service_error(args: argparse.Namespace) -> str | None:
    """A --url httpx cannot parse, or a key no HTTP header can carry (the key is never echoed)."""
    import httpx

    try:
        httpx.URL(args.url)
    except httpx.InvalidURL as exc:
        return f"--url {args.url!r}: {exc}"
    if args.api_key and not (args.api_key.isascii() and args.api_key.isprintable()):
        return "--api-key (or LOSS_SERVICE_API_KEY): a key is printable ASCII; this one is not"
    return None


DATASET_ONLY = ("predictions_column", "labels_column", "weight_column", "group_by", "per_sample_out", "scheduler")


def _compute(args: argparse.Namespace) -> int:
    # The engine refuses non-finite values with its own message; NumPy's RuntimeWarnings on the way
    # (its finiteness check sums the values: inf - inf, an overflow) would add lines around it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _compute_checked(args)


def _compute_checked(args: argparse.Namespace) -> int:
    problem = _numbers_error(args)
    if problem:
        return _usage(problem)
    if args.dataset:
        if args.predictions or args.labels or args.sample_weight:
            return _usage("--dataset reads columns: give --predictions-column/--labels-column, not files")
        return _compute_dataset(args)
    given = [name for name in DATASET_ONLY if getattr(args, name)]
    if given:
        return _usage(f"--{given[0].replace('_', '-')} needs --dataset")
    if not (args.predictions and args.labels):
        return _usage("compute needs --predictions and --labels, or --dataset")
    problem = _service_error(args) if args.url else None
    if problem:
        return _usage(problem)
    from pydantic import ValidationError

    from service.client import InvalidInputError, LossServiceError, NotFoundError, UnreachableError
    from service.engine import LossInputError, UnknownLossError

    try:
        if args.out:
            check_writable(Path(args.out))
            inputs = [input_path(spec) for spec in (args.predictions, args.labels, args.sample_weight) if spec]
            refuse_overlap(args.out, inputs)
            check_destination(args.out)
        arrays = {
            "predictions": read_array(args.predictions, "predictions"),
            "labels": read_array(args.labels, "labels"),
            "sample_weight": read_array(args.sample_weight, "sample_weight") if args.sample_weight else None,
        }
        options = _parse_options(args.option)
    except FileFormatError as exc:
        return _usage(str(exc))
    try:
        result = (_compute_remotely if args.url else _compute_locally)(args, arrays, options).answer()
    except (LossInputError, UnknownLossError) as exc:
        return _invalid(str(exc))
    except ValidationError as exc:
        return _invalid(_option_errors(exc))
    except (InvalidInputError, NotFoundError) as exc:
        return _invalid("; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors) or str(exc))
    except UnreachableError as exc:
        return _fail(EXIT_UNREACHABLE, str(exc.problem["detail"]))
    except LossServiceError as exc:
        return _fail(EXIT_ERROR, str(exc))
    if args.out:
        try:
            write_array(Path(args.out), result["per_sample"])
        except FileFormatError as exc:
            return _usage(str(exc))
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
    else:
        print(_report(result, args.head))
    return EXIT_OK


def _compute_dataset(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.engine import LossInputError, UnknownLossError
    from service.offline.datasets import DatasetError, Spec, evaluate_dask, evaluate_dataset
    from service.option_models import checked_options

    if not (args.predictions_column and args.labels_column):
        return _usage("--dataset needs --predictions-column and --labels-column")
    if args.url or args.out:
        return _usage("--dataset computes locally; use --per-sample-out, not --url or --out")
    if args.per_sample_out and not args.per_sample_out.endswith(".parquet"):
        return _usage("--per-sample-out writes Parquet: name a .parquet file")
    if args.per_sample_out and args.scheduler:
        return _usage("--per-sample-out is written by the local scan; it cannot be used with --scheduler")
    try:
        options = _parse_options(args.option)
        options = checked_options(args.loss, args.convention, options)
        spec = Spec(
            args.loss,
            args.predictions_column,
            args.labels_column,
            args.weight_column,
            options,
            args.dtype,
            args.convention,
            tuple(args.group_by),
            args.max_groups,
        )
        if args.scheduler:
            try:
                result = evaluate_dask(args.dataset, spec, scheduler=args.scheduler, batch_rows=args.batch_rows)
            except ImportError as exc:  # the dask extra is not installed
                return _usage(str(exc))
            except OSError as exc:  # files are read in DatasetError's terms: this is the scheduler
                return _fail(EXIT_UNREACHABLE, f"the Dask scheduler at {args.scheduler}: {exc}")
        else:
            with _progress_bar(args, spec) as advance:
                result = evaluate_dataset(
                    args.dataset, spec, per_sample_out=args.per_sample_out, batch_rows=args.batch_rows, progress=advance
                )
    except FileFormatError as exc:  # an --option not key=value, an output refused or unwritable
        return _usage(str(exc))
    except (DatasetError, UnknownLossError, LossInputError) as exc:
        return _invalid(str(exc))
    except ValidationError as exc:
        return _invalid(_option_errors(exc))
    if args.json:
        sys.stdout.write(orjson.dumps(result.as_dict()).decode() + "\n")
    else:
        print(_dataset_report(result.as_dict()))
    return EXIT_OK


@contextlib.contextmanager
def _progress_bar(args: argparse.Namespace, spec: Any) -> Any:
    """rows/s and ETA on a terminal (tqdm, the `progress` extra); nothing for --json or a pipe."""
    if args.json or not sys.stderr.isatty():
        yield None
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield None
        return
    from service.offline.datasets import DatasetError, open_dataset

    try:
        total = open_dataset(args.dataset, spec).count_rows()
    except (DatasetError, OSError, ValueError, NotImplementedError):
        total = None  # the scan reports what is wrong with the dataset
    with tqdm(total=total, unit="row", unit_scale=True) as bar:
        yield bar.update


def _dataset_report(result: dict[str, Any]) -> str:
    rows = [
        ("loss", f"{result['loss']} ({result['convention']}, {result['dtype']})"),
        ("rows", f"{result['rows']:,}"),
        ("count", f"{result['count']:,}"),
        ("mean", repr(result["mean"])),
        ("sum", repr(result["sum"])),
    ]
    lines = [f"{name:<11} {value}" for name, value in rows]
    for group in result.get("groups") or []:
        key = ", ".join(f"{name}={value}" for name, value in group["key"].items())
        lines.append(
            f"  {key}: rows {group['rows']:,}  mean {group['mean']:.6g}  sum {group['sum']:.6g}  "
            f"p50 {group['p50']:.4g}  p90 {group['p90']:.4g}  p99 {group['p99']:.4g}"
        )
    return "\n".join(lines)


def _history(args: argparse.Namespace) -> int:
    """A model's history through a running service, as a table (or --json)."""
    args.api_key = args.api_key or None
    problem = _service_error(args)
    if problem:
        return _usage(problem)
    from service.client import InvalidInputError, LossClient, LossServiceError, NotFoundError, UnreachableError

    try:
        with LossClient(args.url, api_key=args.api_key) as client:
            answer = client.history(args.model, start=args.start, end=args.end, step=args.step, by=args.by)
    except (InvalidInputError, NotFoundError) as exc:
        return _invalid("; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors) or str(exc))
    except UnreachableError as exc:
        return _fail(EXIT_UNREACHABLE, str(exc.problem["detail"]))
    except LossServiceError as exc:
        return _fail(EXIT_ERROR, str(exc))
    if args.json:
        sys.stdout.write(orjson.dumps(answer).decode() + "\n")
    else:
        print(_history_table(answer))
    return EXIT_OK


def _history_table(answer: dict[str, Any]) -> str:
    """One line per bucket (and segment value): its start in UTC, counts, coverage, label delay
    and each loss's mean."""
    from datetime import UTC, datetime

    def number(value: float | None, spec: str = ".6g") -> str:
        return "-" if value is None else format(value, spec)

    by = answer["by"]
    header = ["start (UTC)", *([by] if by else []), "predictions", "joined", "coverage", "delay p50 s"]
    header += [f"{name} mean" for name in answer["losses"]]
    lines = [header]
    for bucket in answer["buckets"]:
        started = datetime.fromtimestamp(bucket["start"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        segment = [] if not by else ["(null)" if bucket["segment"] is None else bucket["segment"]]
        lines.append(
            [
                started,
                *segment,
                f"{bucket['predictions']:,}",
                f"{bucket['joined']:,}",
                f"{bucket['coverage']:.1%}",
                number(bucket["label_delay"]["p50"], ",.0f"),
                *(number(loss["mean"]) for loss in bucket["losses"]),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    title = f"{answer['model']}: buckets of {answer['step']:g} s by prediction time" + (f", by {by}" if by else "")
    return "\n".join(
        [title, *("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loss-service", description=__doc__)
    parser.add_argument("--version", action="version", version=f"loss-service {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service with uvicorn (httptools + uvloop)")
    serve.add_argument("--host", help="bind address (default LOSS_SERVICE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default LOSS_SERVICE_PORT or 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default LOSS_SERVICE_WORKERS or 1)")
    serve.add_argument(
        "--ssl-certfile", help="serve HTTPS with this PEM certificate (default LOSS_SERVICE_SSL_CERTFILE)"
    )
    serve.add_argument("--ssl-keyfile", help="its PEM private key (default LOSS_SERVICE_SSL_KEYFILE)")
    serve.set_defaults(run=_serve)

    keys = commands.add_parser("keys", help="API keys for the keys file (LOSS_SERVICE_API_KEYS_FILE)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    new = key_commands.add_parser("new", help="print a fresh random key once, and the entry to paste into the file")
    new.add_argument("name", help="the key's name, shown in logs and metrics (1-64 of A-Z a-z 0-9 _ . : -)")
    new.add_argument("--scopes", default="compute,ingest,read", help="comma-separated (default compute,ingest,read)")
    new.add_argument("--models", help="comma-separated glob patterns (default: every model)")
    new.set_defaults(run=_new_key)

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

    commands.add_parser("openapi", help="print the OpenAPI document as JSON").set_defaults(run=_openapi)
    commands.add_parser("losses", help="list the loss catalogue and options").set_defaults(run=_losses)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
