"""Domain errors raised by the engine. The HTTP layer turns them into problem+json."""

from __future__ import annotations

from collections.abc import Sequence


class LossInputError(ValueError):
    """An input the engine cannot compute a loss for.

    `field` names the request field (``predictions``, ``labels``, ``sample_weight`` or
    ``options.<name>``) and `index` the position inside it, so that a client can find the
    offending value without guessing.
    """

    def __init__(self, field: str, reason: str, index: Sequence[int] = ()) -> None:
        self.field = field
        self.index = tuple(int(i) for i in index)
        self.reason = reason
        where = field + "".join(f"[{i}]" for i in self.index)
        super().__init__(f"{where}: {reason}")


class UnknownLossError(LookupError):
    """A loss name that is neither a catalogue name nor an alias."""

    def __init__(self, name: str, valid: Sequence[str]) -> None:
        self.name = name
        self.valid = tuple(valid)
        super().__init__(f"unknown loss {name!r}; valid names: {', '.join(self.valid)}")
