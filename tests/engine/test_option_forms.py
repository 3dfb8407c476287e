"""Options in the forms users of each framework write them: PyTorch's one-number pos_weight and weight,
Keras's class_weight as fit() takes it, {class: weight}. Numbers from the naive float64 reference."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from tests.reference import naive

pytestmark = pytest.mark.anyio
LOGITS = [[2.0, -1.0, 0.5], [0.5, 3.0, -2.0]]
TARGETS = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
PROBABILITIES = [[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]]
LABELS = [1, 0]


async def loss(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/v1/loss", json=body)


@pytest.mark.parametrize("option", ["pos_weight", "weight"])
async def test_one_number_broadcasts_over_the_outputs_as_pytorch_does(client: httpx.AsyncClient, option: str) -> None:
    per_sample, mean = naive.bce_torch(LOGITS, TARGETS, from_logits=True, **{option: [2.5, 2.5, 2.5]})
    answers = []
    for given in (2.5, [2.5], [2.5, 2.5, 2.5]):
        options = {"from_logits": True, option: given}
        response = await loss(
            client, loss="bce", predictions=LOGITS, labels=TARGETS, options=options, convention="torch"
        )
        assert response.status_code == 200, response.text
        answers.append(response.json())
        assert response.json()["mean"] == pytest.approx(mean, rel=1e-12)
        np.testing.assert_allclose(response.json()["per_sample"], per_sample, rtol=1e-12)
    assert answers[0] == answers[1] == answers[2]
    refused = await loss(
        client,
        loss="bce",
        predictions=LOGITS,
        labels=TARGETS,
        options={"from_logits": True, option: -1},
        convention="torch",
    )
    assert refused.json()["detail"] == f"options.{option}: Input should be greater than or equal to 0"


async def test_class_weight_as_fit_takes_it(client: httpx.AsyncClient) -> None:
    per_sample, mean = naive.scce(PROBABILITIES, LABELS, "keras", class_weight=[1.0, 3.0, 1.0])
    response = await loss(
        client, loss="scce", predictions=PROBABILITIES, labels=LABELS, options={"class_weight": {"1": 3.0}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["per_sample"] == pytest.approx(per_sample, rel=1e-12)
    assert response.json()["mean"] == pytest.approx(mean, rel=1e-12)
    for given, detail in (
        ({"3": 1.0}, "options.class_weight.3: is not a class index: the predictions have 3 classes"),
        ({"one": 1.0}, "options.class_weight.one: is not a class index: the predictions have 3 classes"),
        ({"1": -2.0}, "options.class_weight.1: Input should be greater than or equal to 0"),
    ):
        refused = await loss(
            client, loss="scce", predictions=PROBABILITIES, labels=LABELS, options={"class_weight": given}
        )
        assert refused.status_code == 422
        assert refused.json()["detail"] == detail


async def test_multilabel_soft_margin_takes_one_weight_for_every_label(client: httpx.AsyncClient) -> None:
    """PyTorch's `loss * weight` broadcasts a 0-d tensor over the labels."""
    per_sample, mean = naive.multilabel_soft_margin(LOGITS, TARGETS, weight=0.75)
    response = await loss(
        client, loss="multilabel_soft_margin", predictions=LOGITS, labels=TARGETS, options={"weight": 0.75}
    )
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["per_sample"], per_sample, rtol=1e-12)
    assert response.json()["mean"] == pytest.approx(mean, rel=1e-12)
    unweighted, _ = naive.multilabel_soft_margin(LOGITS, TARGETS)
    assert per_sample != pytest.approx(unweighted)  # the weight is applied, not dropped
    too_many = await loss(
        client, loss="multilabel_soft_margin", predictions=LOGITS, labels=TARGETS, options={"weight": [1.0, 2.0]}
    )
    assert too_many.status_code == 422


async def test_scikit_learn_options_as_its_users_write_them(client: httpx.AsyncClient) -> None:
    """`power=1` (an integer) is the Poisson deviance, as in mean_tweedie_deviance; alpha takes the
    ends of scikit-learn's closed interval [0, 1]. Numbers from scikit-learn's docstring examples."""
    y, p = [2, 0, 1, 4], [0.5, 0.5, 2.0, 2.0]
    answers = []
    for call in (
        {"loss": "tweedie_deviance", "options": {"power": 1}},
        {"loss": "mean_tweedie_deviance", "options": {"power": 1.0}},
        {"loss": "poisson_deviance"},
    ):
        response = await loss(client, predictions=p, labels=y, **call)
        assert response.status_code == 200, response.text
        answers.append(response.json()["per_sample"])
        assert response.json()["mean"] == pytest.approx(1.4260151319598084, rel=1e-15)
    assert answers[0] == answers[1] == answers[2]
    for alpha, expected in ((0, 1 / 3), (1, 0.0)):  # mean_pinball_loss([1, 2, 3], [1, 2, 4], alpha=...)
        response = await loss(client, loss="pinball", predictions=[1, 2, 4], labels=[1, 2, 3], options={"alpha": alpha})
        assert response.status_code == 200, response.text
        assert response.json()["mean"] == pytest.approx(expected, rel=1e-15)
