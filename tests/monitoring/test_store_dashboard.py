"""The store dashboard (deploy/grafana/dashboards/loss-service-store.json) on a real PostgreSQL.

Predictions and labels are logged through the app with the test's clock, so the rollups the panels
read are the ones the store keeps. Every panel's and variable's SQL is taken from the dashboard JSON,
Grafana's macros and variables are substituted as Grafana substitutes them (`substitute`), the SQL
runs on the store's database, and its numbers are compared with a naive float64 computation over
the pairs the test sent: per prediction day and segment value, sum(w |p - l|) / sum(w) over the
joined pairs (XGBoost's weighted mean absolute error), joined / predictions, predictions.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.api.test_history import DAY, HOUR, T0, Client, served  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "loss-service-store.json"
DATASOURCE = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "postgresql.yml"
CONFIG = {
    "losses": [{"loss": "mae"}],
    "convention": "xgboost",
    "dtype": "float64",
    "segments": ["country"],
    "retention_seconds": 30 * DAY,
}
COUNTRIES = ["BR", "US", "DE", None]
# The dashboard's time range: from the middle of day 0 to just into day 2 (days -1 and 3 are outside).
FROM, TO = T0 + HOUR, T0 + 2 * DAY + 2 * HOUR


def substitute(sql: str, variables: dict[str, str], start: float, end: float) -> str:
    """What Grafana sends for a panel's SQL: `${name:sqlstring}` is the variable's value quoted with
    ' and each ' in it doubled (Grafana's sqlstring format); `$__unixEpochFrom()` and
    `$__unixEpochTo()` are the time range's ends in whole Unix seconds (as Grafana's PostgreSQL
    macros give them). The dashboard uses nothing else: anything left starting with $ fails."""
    for name, given in variables.items():
        sql = sql.replace(f"${{{name}:sqlstring}}", "'" + given.replace("'", "''") + "'")
    sql = sql.replace("$__unixEpochFrom()", str(int(start))).replace("$__unixEpochTo()", str(int(end)))
    assert "$" not in sql, f"a macro or variable this test does not substitute: {sql}"
    return sql


def run(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url) as connection:
        return list(connection.execute(sql).fetchall())  # type: ignore[arg-type]


def log(client: Client, model: str, seed: int) -> list[dict[str, Any]]:
    """Predictions over days -1 to 3 of T0; labels (weighted) for two thirds of them, some logged
    before their predictions (joined as the predictions come), some two days after."""
    rng = np.random.default_rng(seed)
    n = 90
    pairs = [
        {
            "id": f"{model}-{i}",
            "time": float(T0 + (i % 5 - 1) * DAY + rng.uniform(0, DAY - 1)),
            "prediction": float(rng.normal()),
            "label": float(rng.normal()),
            "weight": float(rng.uniform(0.5, 2.0)),
            "country": COUNTRIES[int(rng.integers(0, 4))],
            "labelled": i % 3 != 0,
            "early": i % 3 == 1,
        }
        for i in range(n)
    ]
    client.ok("PUT", f"/v1/models/{model}", json=CONFIG)

    def labels(chosen: list[dict[str, Any]]) -> None:
        body = {
            "ids": [p["id"] for p in chosen],
            "labels": [p["label"] for p in chosen],
            "sample_weight": [p["weight"] for p in chosen],
        }
        client.ok("POST", f"/v1/models/{model}/labels", json=body)

    client.clock.now = T0 + 4 * DAY + HOUR
    labels([p for p in pairs if p["labelled"] and p["early"]])
    predictions = {
        "ids": [p["id"] for p in pairs],
        "predictions": [p["prediction"] for p in pairs],
        "timestamps": [p["time"] for p in pairs],
        "segments": {"country": [p["country"] for p in pairs]},
    }
    client.ok("POST", f"/v1/models/{model}/predictions", json=predictions)
    client.clock.now = T0 + 6 * DAY
    labels([p for p in pairs if p["labelled"] and not p["early"]])
    return pairs


def naive(pairs: list[dict[str, Any]]) -> dict[str, dict[tuple[float, str], float]]:
    """Per panel, {(day start, series): value} over the days the time range overlaps."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = defaultdict(list)
    for p in pairs:
        day = float(np.floor(p["time"] / DAY) * DAY)
        if FROM - DAY < day < TO:
            groups[(day, "all")].append(p)
            groups[(day, "null" if p["country"] is None else p["country"])].append(p)
    mean, coverage, count = {}, {}, {}
    for cell, members in groups.items():
        joined = [p for p in members if p["labelled"]]
        count[cell] = float(len(members))
        coverage[cell] = len(joined) / len(members)
        if joined:
            weights = np.array([p["weight"] for p in joined], dtype=np.float64)
            errors = np.abs(np.array([p["prediction"] - p["label"] for p in joined], dtype=np.float64))
            mean[cell] = float(np.sum(weights * errors) / np.sum(weights))
    return {"mean_loss": mean, "coverage": coverage, "predictions": count}


def panels() -> dict[str, str]:
    """{the panel's value column: its SQL}."""
    found = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        (target,) = panel["targets"]
        assert panel["datasource"]["type"] == target["datasource"]["type"] == "grafana-postgresql-datasource"
        assert target["format"] == "time_series"
        column = re.findall(r"\bAS (\w+)\s*FROM", target["rawSql"])[0]
        found[column] = target["rawSql"]
    return found


def variables() -> dict[str, str]:
    return {v["name"]: v["query"] for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}


@pytest.mark.parametrize("served", ["postgresql"], indirect=True)
def test_every_panel_of_the_store_dashboard_gives_the_naive_numbers(served: Client, postgres_url: str) -> None:  # noqa: F811
    shop = log(served, "shop", 1)
    log(served, "shop-eu", 2)  # another model, which no panel of shop's may count
    url = postgres_url  # the store's database (the fixture's)
    history = served.ok("GET", "/v1/models/shop/history", params={"start": 0, "end": 1})
    chosen = {"model": "shop", "segment_key": "country", "loss": history["losses"][0]}
    # The variables' own queries offer what the store holds.
    asked = variables()
    assert [r[0] for r in run(url, substitute(asked["model"], {}, FROM, TO))] == ["shop", "shop-eu"]
    assert [r[0] for r in run(url, substitute(asked["segment_key"], chosen, FROM, TO))] == ["country"]
    assert [r[0] for r in run(url, substitute(asked["loss"], chosen, FROM, TO))] == [chosen["loss"]]
    expected = naive(shop)
    found = panels()
    assert set(found) == set(expected)
    for column, sql in found.items():
        rows = run(url, substitute(sql, chosen, FROM, TO))
        got = {(row[0].timestamp(), row[1]): float(row[2]) for row in rows}
        assert all(isinstance(row[0], datetime) for row in rows)
        assert set(got) == set(expected[column]), column
        for cell, number in expected[column].items():
            assert got[cell] == pytest.approx(number, rel=1e-12), (column, cell)
    # Days 0, 1 and 2, each with every series: the time range's filter and the day level.
    assert {day for day, _ in expected["coverage"]} == {T0, T0 + DAY, T0 + 2 * DAY}
    assert {series for _, series in expected["coverage"]} == {"all", "null", "BR", "US", "DE"}


def test_the_data_source_is_provisioned_as_grafanas_postgresql_one() -> None:
    (source,) = yaml.safe_load(DATASOURCE.read_text())["datasources"]
    assert source["type"] == "grafana-postgresql-datasource"
    assert source["uid"] == json.loads(DASHBOARD.read_text())["panels"][0]["datasource"]["uid"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    provided = set(compose["environment"])
    wanted = set(re.findall(r"\$\{(\w+)\}", DATASOURCE.read_text()))
    assert wanted, "the data source reads its connection from the environment"
    assert wanted <= provided, f"docker-compose.yml leaves unset: {sorted(wanted - provided)}"
