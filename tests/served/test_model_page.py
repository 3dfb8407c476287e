"""A model's page (/models/{model}) in headless Chromium, with API keys on: the landing page lists
the models the key may read; the model page, opened from it, plots what the history API answers,
the estimate of an estimated loss among it.

The pairs are logged over the last 23 hours (their `timestamps`), labels for most of them now.
Each chart's points carry their numbers (`data-t`, `data-v`, `data-segment`, `data-quantile`,
`data-kind` on the estimate's chart);
they must be exactly the API's numbers for the URL the page fetched, and the model-wide MSE points
also what NumPy computes, in float64, from the rows the test logged."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest

from tests.served import test_pages
from tests.served.test_pages import screenshot
from tests.servers import served

pytestmark = pytest.mark.slow
HOUR = 3600
# The browser tests' fixtures: Chromium, and a page whose requests off loopback fail the test.
browser, page = test_pages.browser, test_pages.page
READER, ADMIN = "reader-key-0123456789", "admin-key-0123456789"
COUNTRIES = ["BR", "US", None]
DEVICES = ["ios", "web"]


class Logged:
    """What the test logged: per prediction its time, segments, prediction (a logit) and label,
    over the 23 hours before this one. Labels follow the logits, but the US's flip half the time
    in the last six hours (the model goes wrong there); the older a prediction, the likelier its
    label came (coverage from about half to all)."""

    def __init__(self, n: int, now: float, rng: np.random.Generator) -> None:
        hour = now - now % HOUR
        age = rng.integers(1, 24, n)
        self.times = hour - HOUR * age + rng.uniform(0, HOUR - 1, n).round(3)
        country = rng.integers(0, 3, n)
        self.country = [COUNTRIES[i] for i in country]
        self.device = [DEVICES[i] for i in rng.integers(0, 2, n)]
        self.predictions = rng.normal(0, 2, n).round(6)
        self.labels = (rng.uniform(0, 1, n) < 1 / (1 + np.exp(-self.predictions))).astype(int)
        wrong = (country == 1) & (age <= 6) & (rng.uniform(0, 1, n) < 0.5)
        self.labels[wrong] = 1 - self.labels[wrong]
        self.labelled = rng.uniform(0, 1, n) < 0.4 + age / 23
        self.challenger = (self.predictions + rng.normal(0, 1, n)).round(6)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Logged]]:
    from service.server.api.access import digest

    folder: Path = tmp_path_factory.mktemp("model-page")
    keys = folder / "keys.toml"
    keys.write_text(
        f'[[keys]]\nname = "reader"\nkey_sha256 = "{digest(READER)}"\nscopes = ["read"]\nmodels = ["fraud-*"]\n'
        f'[[keys]]\nname = "admin"\nkey_sha256 = "{digest(ADMIN)}"\nscopes = ["read", "ingest", "admin"]\n'
    )
    env = {"LOSS_SERVICE_API_KEYS_FILE": str(keys), "LOSS_SERVICE_STORE_URL": f"sqlite:///{folder}/store.sqlite3"}
    with served(env=env) as url:
        admin = {"authorization": f"Bearer {ADMIN}"}
        config = {
            "losses": [{"loss": "mse"}, {"loss": "bce", "options": {"from_logits": True}}],
            "convention": "keras",
            "dtype": "float64",
            "segments": ["country", "device"],
        }
        # fraud-1 estimates its BCE before the labels come (under its own probabilities).
        estimated = config | {"estimate": {"losses": [1]}}
        for model, body in (("fraud-1", estimated), ("churn-1", config)):
            assert httpx.put(f"{url}/v1/models/{model}", json=body, headers=admin).status_code == 200
        # fraud-2, fraud-1's challenger, takes its labels and has its own logits (noisier: worse).
        challenger = config | {"labels_from": "fraud-1", "compare_to": ["fraud-1"]}
        assert httpx.put(f"{url}/v1/models/fraud-2", json=challenger, headers=admin).status_code == 200
        logged = Logged(2000, time.time(), np.random.default_rng(30))
        ids = [f"p-{i}" for i in range(2000)]
        predictions = {
            "ids": ids,
            "predictions": logged.predictions.tolist(),
            "timestamps": logged.times.tolist(),
            "segments": {"country": logged.country, "device": logged.device},
        }
        answer = httpx.post(f"{url}/v1/models/fraud-1/predictions", json=predictions, headers=admin)
        assert answer.status_code == 200, answer.text
        predictions["predictions"] = logged.challenger.tolist()
        answer = httpx.post(f"{url}/v1/models/fraud-2/predictions", json=predictions, headers=admin)
        assert answer.status_code == 200, answer.text
        sent = np.flatnonzero(logged.labelled)
        labels = {"ids": [ids[i] for i in sent], "labels": logged.labels[sent].tolist()}
        answer = httpx.post(f"{url}/v1/models/fraud-1/labels", json=labels, headers=admin, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["joined"] == len(sent)
        yield url, logged


def plotted(page: Any, chart: str) -> set[tuple[Any, ...]]:
    """(segment, quantile, t, v) of every point a chart draws, as the page's DOM holds them."""
    points = page.locator(f'figure[data-chart="{chart}"] circle.point')
    found = points.evaluate_all(
        "circles => circles.map(c => [c.dataset.segment ?? null, c.dataset.quantile ?? null, c.dataset.t, c.dataset.v])"
    )
    return {(None if s is None else json.loads(s), q, float(t), float(v)) for s, q, t, v in found}


def expected(answer: dict[str, Any], value: Any, quantile: str | None = None) -> set[tuple[Any, ...]]:
    by = answer["by"]
    return {
        (b["segment"] if by else None, quantile, b["start"], value(b))
        for b in answer["buckets"]
        if value(b) is not None
    }


def shown(page: Any, service_url: str, by: str, step: int = HOUR) -> dict[str, Any]:
    """Waits for the charts of `by` ('' for none) and `step`, then the API's answer for the URL
    the page fetched (24 hours of whole steps up to the step now in progress)."""
    charts = page.locator(f'#charts[data-by="{by}"][data-url*="step={step}"]')
    charts.wait_for(state="attached", timeout=20_000)
    url = charts.get_attribute("data-url")
    query = parse_qs(urlsplit(url).query)
    start, end, asked = (float(query[name][0]) for name in ("start", "end", "step"))
    assert (asked, end - start, start % step) == (step, 24 * HOUR, 0), url
    assert end - step <= time.time() < end
    assert query.get("by", [""])[0] == by
    answer = httpx.get(f"{service_url}{url}", headers={"authorization": f"Bearer {READER}"}).json()
    return dict(answer)


def assert_plots_the_api(page: Any, answer: dict[str, Any]) -> None:
    for index, _ in enumerate(answer["losses"]):
        assert plotted(page, f"loss-{index}") == expected(answer, lambda b, i=index: b["losses"][i]["mean"])
    assert plotted(page, "coverage") == expected(answer, lambda b: b["coverage"])
    delays = expected(answer, lambda b: b["label_delay"]["p50"], "p50")
    delays |= expected(answer, lambda b: b["label_delay"]["p90"], "p90")
    assert plotted(page, "label-delay") == delays
    for index, _ in enumerate(answer["losses"]):
        drawn = estimate_points(page, index)
        if not any(b["losses"][index].get("estimated") for b in answer["buckets"]):
            assert drawn == {}, index  # a loss not estimated has no estimate chart
            continue
        assert drawn["realized"] == estimate_expected(answer, index, lambda loss: loss["mean"])
        for kind, field in (("estimated", "mean"), ("low", "low"), ("high", "high")):
            found = estimate_expected(answer, index, lambda loss, f=field: (loss["estimated"] or {}).get(f))
            assert drawn[kind] == found, kind


def estimate_points(page: Any, index: int) -> dict[str, set[tuple[Any, ...]]]:
    """The points of loss `index`'s estimate chart by their kind (realized, estimated, low, high),
    each (segment, t, v)."""
    points = page.locator(f'figure[data-chart="estimate-{index}"] circle.point')
    found = points.evaluate_all(
        "circles => circles.map(c => [c.dataset.kind, c.dataset.segment ?? null, c.dataset.t, c.dataset.v])"
    )
    kinds: dict[str, set[tuple[Any, ...]]] = {}
    for kind, segment, t, v in found:
        kinds.setdefault(kind, set()).add((None if segment is None else json.loads(segment), float(t), float(v)))
    return kinds


def estimate_expected(answer: dict[str, Any], index: int, value: Any) -> set[tuple[Any, ...]]:
    by = answer["by"]
    return {
        (b["segment"] if by else None, b["start"], value(b["losses"][index]))
        for b in answer["buckets"]
        if value(b["losses"][index]) is not None
    }


def test_the_landing_page_lists_the_models_the_key_may_read(service: tuple[str, Logged], page: Any) -> None:
    url, _ = service
    page.goto(f"{url}/")
    page.locator("#models-status").filter(has_text="401").wait_for(timeout=10_000)
    page.fill("#key", READER)
    page.locator("#key").dispatch_event("change")
    page.locator("#models li").first.wait_for(timeout=10_000)
    assert page.locator("#models li a").all_inner_texts() == ["fraud-1", "fraud-2"]  # not churn-1: another team's
    assert page.locator("#models li a").first.get_attribute("href") == "/models/fraud-1"


def test_the_model_page_plots_the_history_apis_numbers_by_segment(service: tuple[str, Logged], page: Any) -> None:
    url, logged = service
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(f"{url}/")
    page.fill("#key", READER)
    page.locator("#key").dispatch_event("change")
    page.locator("#models li").first.wait_for(timeout=10_000)
    errors.clear()  # the landing page's first request had no key: its 401
    page.get_by_role("link", name="fraud-1").click()  # the tab keeps the key for the model's page
    page.wait_for_url("**/models/fraud-1*")

    total = shown(page, url, "")
    assert_plots_the_api(page, total)
    assert len(total["buckets"]) == 23
    assert page.locator('figure[data-chart="loss-0"] circle[data-segment]').count() == 0
    assert page.locator("section.comparison").count() == 0  # fraud-1 compares itself with no model
    # The MSE points are also NumPy's float64 mean of the hour's labelled pairs.
    points = sorted(plotted(page, "loss-0"), key=lambda point: point[2])
    for _, _, t, v in points:
        pairs = logged.labelled & (logged.times >= t) & (logged.times < t + HOUR)
        naive = np.mean((logged.predictions[pairs] - logged.labels[pairs]) ** 2)
        assert v == pytest.approx(naive, rel=1e-12)

    # The estimate: per hour, NumPy's float64 mean binary entropy of the hour's predictions (the
    # expected BCE under their own probabilities), and the realized BCE of those labelled.
    estimate = estimate_points(page, 1)
    assert len(estimate["estimated"]) == len(estimate["realized"]) == 23
    assert {(t, v) for _, t, v in estimate["realized"]} == {(t, v) for _, _, t, v in plotted(page, "loss-1")}
    for _, t, v in estimate["estimated"]:
        inside = (logged.times >= t) & (logged.times < t + HOUR)
        p = 1 / (1 + np.exp(-logged.predictions[inside]))
        assert v == pytest.approx(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))), rel=1e-9)
    lows, highs = ({t: v for _, t, v in estimate[kind]} for kind in ("low", "high"))
    assert all(lows[t] < v < highs[t] for _, t, v in estimate["estimated"])
    assert page.locator('figure[data-chart="estimate-1"] ul.legend li').count() == 4
    assert page.locator('figure[data-chart="estimate-0"]').count() == 0  # mse: not estimated

    page.select_option("#by", "country")
    by_country = shown(page, url, "country")
    assert_plots_the_api(page, by_country)
    segments = {point[0] for point in plotted(page, "loss-0")}
    assert segments == {"BR", "US", None}
    assert page.locator('figure[data-chart="loss-0"] ul.legend li').count() == 3  # one line per value
    assert page.locator('figure[data-chart="loss-0"] path.line').count() == 3
    assert "by=country" in page.url  # the choice stays in the page's address
    screenshot(page, "model-page", full_page=True)

    page.select_option("#by", "device")
    by_device = shown(page, url, "device")
    assert_plots_the_api(page, by_device)
    assert {point[0] for point in plotted(page, "coverage")} == {"ios", "web"}

    page.select_option("#step", "21600")  # six-hour buckets over the 24 hours up to the one in progress
    by_device = shown(page, url, "device", step=6 * HOUR)
    assert_plots_the_api(page, by_device)
    in_window = (logged.times >= by_device["start"]) & (logged.times < by_device["end"])
    assert sum(b["predictions"] for b in by_device["buckets"]) == in_window.sum() > 0
    assert errors == []  # among them, any Content-Security-Policy refusal


def test_the_model_page_says_why_it_shows_nothing(service: tuple[str, Logged], page: Any) -> None:
    url, _ = service
    page.goto(f"{url}/models/churn-1")
    page.locator("#charts[data-error='model']").wait_for(state="attached", timeout=10_000)
    assert "401" in page.locator("#status").inner_text()
    page.fill("#key", READER)
    page.locator("#key").dispatch_event("change")
    page.locator("#status").filter(has_text="403").wait_for(timeout=10_000)  # another team's model
    response = httpx.get(f"{url}/models/churn-1")
    assert response.status_code == 200
    assert "churn-1" not in response.text  # the HTML tells nothing of the model
    assert "script-src 'self';" in response.headers["content-security-policy"]
    assert "unsafe" not in response.headers["content-security-policy"]


def test_a_challengers_page_plots_both_curves_and_the_difference_with_its_band(
    service: tuple[str, Logged], page: Any
) -> None:
    url, logged = service
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(f"{url}/models/fraud-2")
    page.locator("#charts[data-error='model']").wait_for(state="attached", timeout=10_000)
    errors.clear()  # the first request had no key: its 401
    page.fill("#key", READER)
    page.locator("#key").dispatch_event("change")
    own = shown(page, url, "")
    section = page.locator('section.comparison[data-champion="fraud-1"][data-url]')
    section.wait_for(state="attached", timeout=20_000)
    compare_url = section.get_attribute("data-url")
    reader = {"authorization": f"Bearer {READER}"}
    compared = httpx.get(f"{url}{compare_url}", headers=reader).json()
    query = parse_qs(urlsplit(compare_url).query)
    assert {name: float(query[name][0]) for name in ("start", "end", "step")} == {
        "start": own["start"],
        "end": own["end"],
        "step": HOUR,
    }
    assert compared["loss"] == own["losses"][0] == "mean_squared_error"  # the first loss both configure
    champion = httpx.get(f"{url}/v1/models/fraud-1/history", params=query, headers=reader).json()

    def means(answer: dict[str, Any]) -> set[tuple[float, float]]:
        return {(b["start"], b["losses"][0]["mean"]) for b in answer["buckets"] if b["losses"][0]["mean"] is not None}

    curves = page.locator('figure[data-chart="compare-fraud-1-means"] circle.point')
    found = curves.evaluate_all("cs => cs.map(c => [c.dataset.model, Number(c.dataset.t), Number(c.dataset.v)])")
    assert {(t, v) for m, t, v in found if m == "fraud-2"} == means(own)
    assert {(t, v) for m, t, v in found if m == "fraud-1"} == means(champion)
    assert means(own) != means(champion)
    band = page.locator('figure[data-chart="compare-fraud-1-difference"] circle.point')
    drawn = band.evaluate_all("cs => cs.map(c => [c.dataset.bound, Number(c.dataset.t), Number(c.dataset.v)])")
    assert len(compared["sequence"]) > 10
    for field in ("mean", "low", "high"):
        expected_points = {(p["end"], p[field]) for p in compared["sequence"] if p[field] is not None}
        assert {(t, v) for b, t, v in drawn if b == field} == expected_points, field
    # The last point is the window's comparison: NumPy's float64 mean of the per-pair differences.
    pairs = logged.labelled & (logged.times >= own["start"]) & (logged.times < own["end"])
    y = logged.labels[pairs]
    naive = np.mean((logged.challenger[pairs] - y) ** 2 - (logged.predictions[pairs] - y) ** 2)
    assert compared["sequence"][-1]["mean"] == pytest.approx(naive, rel=1e-9)
    assert compared["difference"]["mean"] == pytest.approx(naive, rel=1e-9)
    assert compared["n"] == pairs.sum()
    verdict = page.locator("section.comparison p.verdict")
    assert verdict.get_attribute("data-verdict") == compared["verdict"] == "worse"
    assert f"over {compared['n']} ids both joined" in verdict.inner_text()
    screenshot(page, "model-page-comparison", full_page=True)
    assert errors == []
