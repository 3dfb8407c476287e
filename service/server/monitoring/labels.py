"""The `model` label's cardinality: which model names become label values, and which count as 'other'."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Protocol

from service.config import Settings

OTHER_MODEL = "other"
OTHER_MODEL_OF_KEY = "other:"  # + the key's name: the label of a key's models past its share
UNLABELLED_MODEL = "unlabelled"

# The context of the request being served (set by RequestMonitor), where the API key guard
# writes the key's name: the model labels a request claims are charged to its key.
request_state: ContextVar[Any] = ContextVar("request_state", default=None)


def overflow_label(key: str | None) -> str:
    """The label of the models a key brings past its share: 'other:<key name>', or 'other'."""
    return OTHER_MODEL if key is None else OTHER_MODEL_OF_KEY + key


class Counted(Protocol):
    def inc(self, amount: float = 1) -> None: ...  # pragma: no mutate (a Protocol's stub never runs)


class ModelLabels:
    """The bounded set of `model` label values one app has seen, and which key claimed each."""

    def __init__(
        self, settings: Settings, overflowed: Counted, forget: Callable[[str], None], clock: Callable[[], float]
    ) -> None:
        self._max_models = settings.max_models
        self._max_models_per_key = settings.max_models_per_key
        self._keys = 0  # API keys in force (set_keys); 0: no keys, one tenant holds every label
        self._model_idle = settings.model_label_idle
        self._allowlist = frozenset(settings.model_allowlist) if settings.model_allowlist else None
        self._models: dict[str, float] = {}  # label -> when a batch last used it, least recent first
        self._owners: dict[str, str | None] = {}  # label -> the key whose request claimed it
        self._owned: dict[str | None, dict[str, float]] = {}  # key -> its labels, as _models
        self._models_lock = threading.Lock()
        self._clock = clock
        self._overflowed = overflowed  # counts the batches a label was refused to
        self._forget = forget  # drops a label's series when another name takes its place

    def set_keys(self, count: int) -> None:
        """The API keys in force: their number splits the labels into shares."""
        self._keys = count

    def label(self, model: str | None) -> str:
        """Bound the `model` label's cardinality: an allow-list if set, else at most `max_models`
        names, each kept while it is in use, and with API keys at most a share of them per key.

        Only batches that were computed (or rows that were stored) reach here, so refused requests
        claim no label. A new name is charged to the key of the request that brings it (read from
        the request's scope state); with keys in force, a caller without one (the retention sweep)
        only uses the labels there are, and counts a new name as 'other'. Each key may
        hold `max_models_per_key` labels, by default `max_models` split evenly among the keys, so
        one tenant cannot take every label. When the key's share, or every label, is taken, the
        new name takes the place of the label unused for longest (the key's own, or any when all
        are taken), if that one has been idle for `model_label_idle` seconds, and that model's
        series are removed; otherwise the new name counts as 'other:<key name>' ('other' without
        a key). A burst of junk names thus keeps real models out for at most that long, never
        pushes out a model in use, and never reaches another key's share.
        """
        if model is None:
            return UNLABELLED_MODEL
        state = request_state.get()
        key: str | None = state.key if state is not None else None
        if self._allowlist is not None:
            if model in self._allowlist:
                return model
            self._overflowed.inc()
            return overflow_label(key)
        now = self._clock()
        with self._models_lock:
            owner = self._owners.get(model, key)
            owned = self._owned.setdefault(owner, {})
            if model in self._models:
                # Re-inserted last: the dicts stay ordered by last use.
                del self._models[model], owned[model]
                self._models[model] = owned[model] = now
                return model
            if key is None and self._keys:
                self._overflowed.inc()  # the retention sweep, acting for no key, claims no label of a key's
                return OTHER_MODEL
            pool = None
            if len(owned) >= self._share():
                pool = owned  # the key's share is taken: only its own idlest label may make room
            elif len(self._models) >= self._max_models:
                pool = self._models
            if pool is not None:
                idlest, last_used = next(iter(pool.items()))
                if now - last_used < self._model_idle:
                    self._overflowed.inc()
                    return overflow_label(key)
                del self._models[idlest], self._owned[self._owners.pop(idlest)][idlest]
                self._forget(idlest)
            self._models[model] = owned[model] = now
            self._owners[model] = owner
            return model

    def _share(self) -> int:
        """The labels one key may hold: all of them without keys."""
        if not self._keys:
            return self._max_models
        return self._max_models_per_key or max(1, self._max_models // self._keys)
