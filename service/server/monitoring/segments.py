"""The `segment_value` label's cardinality: which values of a model's declared segment keys become
label values of `loss_service_segment_loss`, and which count as 'other'."""

from __future__ import annotations

import threading
from collections.abc import Sequence

OTHER_SEGMENT = "other"  # a model's values of a key past its first `max_segment_values`
NULL_SEGMENT = "null"  # the pairs whose prediction has no value for the key


class SegmentValues:
    """Per model label and segment key, the values that have a label of their own: the first
    `max_values` this worker recorded, kept until the model's label goes (`forget`). A later value
    is labelled 'other'; null is labelled 'null'. Neither counts towards the limit, so a key has at
    most `max_values` + 2 label values per model label. A value spelled 'other' or 'null' shares
    that label."""

    def __init__(self, max_values: int) -> None:
        self._max_values = max_values
        self._labelled: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()

    def labels(self, model: str, key: str, values: Sequence[str | None]) -> tuple[list[str], int]:
        """Each value's label, in order, and how many of them were counted as 'other' because the
        model's key had `max_values` values labelled already. New values claim labels in the order
        they first appear."""
        named: dict[str | None, str] = {None: NULL_SEGMENT}
        refused: set[str | None] = set()
        with self._lock:
            labelled = self._labelled.setdefault((model, key), set())
            for value in dict.fromkeys(values):
                if value is None:
                    continue
                if value not in labelled and len(labelled) < self._max_values:
                    labelled.add(value)
                if value in labelled:
                    named[value] = value
                else:
                    named[value] = OTHER_SEGMENT
                    refused.add(value)
        overflowed = sum(1 for value in values if value in refused) if refused else 0
        return [named[value] for value in values], overflowed

    def forget(self, model: str) -> None:
        """Drop a model label's values (its series are removed: another model takes its label)."""
        with self._lock:
            for found in [found for found in self._labelled if found[0] == model]:
                del self._labelled[found]
