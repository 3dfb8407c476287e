"""`loss-service history MODEL`: a model's losses and label coverage by prediction time, read from a
running service through the client and printed as a table (or its JSON)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from service.cli.compute import EXIT_OK, _service_error, _service_failure, _usage


def _history(args: argparse.Namespace) -> int:
    """A model's history through a running service, as a table (or --json)."""
    args.api_key = args.api_key or None
    problem = _service_error(args)
    if problem:
        return _usage(problem)
    from service.client import LossClient, LossServiceError

    try:
        with LossClient(args.url, api_key=args.api_key) as client:
            answer = client.history(args.model, start=args.start, end=args.end, step=args.step, by=args.by)
    except LossServiceError as exc:
        return _service_failure(exc)
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
