"""`loss-service compute`: a loss over arrays read from files, computed here or by a running service,
or over a dataset; its report, and the exit status and message for each way it can fail."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from service.offline.files import (
    FileFormatError,
    check_destination,
    check_writable,
    input_path,
    read_array,
    refuse_overlap,
    write_array,
)
from service.values.results import LossResult

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


def _service_failure(exc: Exception) -> int:
    """The exit status and line for a running service's refusal (3), its absence (4) or any other
    failure (1), as the client raised it."""
    from service.client import InvalidInputError, NotFoundError, UnreachableError

    if isinstance(exc, InvalidInputError | NotFoundError):
        return _invalid("; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors) or str(exc))
    if isinstance(exc, UnreachableError):
        return _fail(EXIT_UNREACHABLE, str(exc.problem["detail"]))
    return _fail(EXIT_ERROR, str(exc))


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

    from service.client import LossServiceError
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
    except LossServiceError as exc:
        return _service_failure(exc)
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
    from service.offline.cluster import evaluate_dask
    from service.offline.datasets import evaluate_dataset
    from service.offline.spec import DatasetError, Spec
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
    from service.offline.reading import open_dataset
    from service.offline.spec import DatasetError

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
