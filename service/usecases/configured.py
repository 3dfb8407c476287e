"""A model's configured losses as the history keeps them: each one's variant (the hash its
shares and rollups are kept under), its aggregate and its name, and the losses two models
configure identically (what a comparison can pair)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from service.engine import Aggregate, aggregate_of, loss_name
from service.store.history import loss_variant


class Configured(Protocol):
    """What these functions read of a model: its configuration (a stored `Model`, or one about to be)."""

    @property
    def config(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Proposed:
    """A configuration not stored yet, read as its model's would be."""

    config: dict[str, Any]


def loss_variants(model: Configured) -> list[int]:
    """Each configured loss's variant: the hash its stored shares and rollups are kept under."""
    config = model.config
    return [
        loss_variant(call["loss"], call["options"], config["convention"], config["dtype"]) for call in config["losses"]
    ]


def loss_aggregate(model: Configured, which: int) -> Aggregate:
    """How the `which`-th configured loss's mean is made from its sums (mean, root or sum)."""
    call = model.config["losses"][which]
    return aggregate_of(call["loss"], model.config["convention"], call["options"])


@dataclass(frozen=True)
class Comparable:
    """A loss both models configure identically: its position in each, its name and variant."""

    challenger: int
    champion: int
    name: str
    variant: int


def comparable_losses(challenger: Configured, champion: Configured) -> list[Comparable]:
    """The challenger's losses that the champion configures identically, whose mean is a mean
    over pairs, in the challenger's order."""
    theirs = {variant: at for at, variant in enumerate(loss_variants(champion))}
    found = []
    for at, variant in enumerate(loss_variants(challenger)):
        if variant in theirs and loss_aggregate(challenger, at) == "mean":
            found.append(Comparable(at, theirs[variant], loss_name_of(challenger, at), variant))
    return found


def loss_name_of(model: Configured, at: int) -> str:
    call = model.config["losses"][at]
    return loss_name(call["loss"], model.config["convention"], call["options"])
