"""Which batches the client may cut into chunks, as the service's catalogue (`GET /v1/losses`) says.

A loss whose samples read the rest of the batch (`whole_batch`: log_loss and brier_score infer the
classes from all the labels, circle pairs every embedding with every other) would answer other
numbers for each chunk than for the batch, so its batch goes whole, unless one of its
`separable_with` options is given (log_loss and brier_score with `classes`: every sample then
stands alone). An option holding one value per sample (`per_sample`: CTC's lengths) is cut with
its chunk. A loss the catalogue does not list (a library metric, an unknown name) splits freely:
the service's answer to its first chunk says what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

Catalogue = dict[str, Mapping[str, Any]]


def by_name(entries: Iterable[Mapping[str, Any]]) -> Catalogue:
    """The catalogue's entries under their names and aliases."""
    return {key: entry for entry in entries for key in (entry["name"], *entry.get("aliases", ()))}


@dataclass(frozen=True)
class Splitting:
    """How a batch of one loss splits: `whole` says why it may not (None: it may), `per_sample`
    holds the option keys (names and aliases) cut with each chunk."""

    whole: str | None
    per_sample: frozenset[str]

    def cut(self, options: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
        """The options of the chunk of samples start:stop."""
        return {
            key: np.asarray(value)[start:stop].tolist() if key in self.per_sample and value is not None else value
            for key, value in options.items()
        }

    def check(self, options: Mapping[str, Any], samples: int) -> None:
        """A per-sample option of another length would be cut into slices that each look right."""
        for key, value in options.items():
            if key in self.per_sample and value is not None and len(value) != samples:
                raise ValueError(f"options.{key} needs one value per sample ({samples}), got {len(value)}")


def splitting(catalogue: Catalogue, loss: str, convention: str, options: Mapping[str, Any]) -> Splitting:
    entry = catalogue.get(loss)
    if entry is None or convention not in entry.get("conventions", ()):
        return Splitting(None, frozenset())
    canonical: dict[str, str] = {}
    per_sample: set[str] = set()
    for option in entry.get("options", ()):
        keys = (option["name"], *option.get("aliases", ()))
        canonical.update((key, option["name"]) for key in keys)
        if option.get("per_sample"):
            per_sample.update(keys)
    given = {canonical.get(key, key) for key, value in options.items() if value is not None}
    separable = list(entry.get("separable_with", ()))
    whole = None
    if entry.get("whole_batch") and not given & set(separable):
        whole = f"{entry['name']} computes each sample's loss from the whole batch, so its chunks would not combine"
        whole += " to the batch's answer"
        if separable:
            whole += f" ({' or '.join(f'options.{name}' for name in separable)} makes every sample stand alone)"
    return Splitting(whole, frozenset(per_sample))
