"""Champion and challenger over HTTP, on SQLite and PostgreSQL: labels logged once for the
champion serve the challenger (labels_from), and GET .../compare/... pairs the two models' losses
over the ids both joined.

Each model's mean is checked against /v1/loss over the common ids (one request per model, the
engine's reduction of that batch); the difference against those two means; `by` and `step`
against answers over the matching subsets computed again from scratch.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from tests.api.test_history import HOUR, T0, Client, family, served  # noqa: F401

N = 90
COMPARED = {  # families whose loss is a mean over pairs, and whose mean therefore compares
    "mse-keras": 1e-12,
    "mse-torch-float32": 1e-5,  # /v1/loss sums float32 values in float32, the history float64 shares
    "scce-torch-ignored-class-weights": 1e-12,
    "kl-torch-batchmean": 1e-12,
    "catboost-logloss": 1e-12,
}


def logged_pair(client: Client, name: str, seed: int = 11) -> dict[str, Any]:
    """A champion and a challenger that takes its labels from it: the champion predicts ids
    p0..p89, the challenger p5..p89; labels (with weights) come for the first 60 ids of a shuffled
    order, to the champion only. Returns what the test needs to compute the answers again."""
    config, champion_rows, labels, weights = family(name, N, np.random.default_rng(seed))
    challenger_rows = family(name, N, np.random.default_rng(seed + 1))[1]
    times = T0 + np.arange(N) * (3 * HOUR / N)
    countries = [["BR", "US", None][i % 3] for i in range(N)]
    ids = [f"p{i}" for i in range(N)]
    client.ok("PUT", "/v1/models/champion", json=config)
    challenger = {**config, "labels_from": "champion", "compare_to": ["champion"], "segments": ["country"]}
    client.ok("PUT", "/v1/models/challenger", json=challenger)
    client.ok(
        "POST",
        "/v1/models/champion/predictions",
        json={"ids": ids, "predictions": np.asarray(champion_rows).tolist(), "timestamps": times.tolist()},
    )
    labelled = np.random.default_rng(5).permutation(N)[:60]
    client.ok(
        "POST",
        "/v1/models/champion/labels",
        json={
            "ids": [ids[i] for i in labelled],
            "labels": np.asarray(labels)[labelled].tolist(),
            "sample_weight": np.asarray(weights)[labelled].tolist(),
        },
    )
    late = np.arange(5, N)  # the challenger predicts after the labels came: they join at once
    logged = client.ok(
        "POST",
        "/v1/models/challenger/predictions",
        json={
            "ids": [ids[i] for i in late],
            "predictions": np.asarray(challenger_rows)[late].tolist(),
            "timestamps": times[late].tolist(),
            "segments": {"country": [countries[i] for i in late]},
        },
    )
    common = np.zeros(N, bool)
    common[labelled] = True
    common[:5] = False
    assert logged["joined"] == int(common.sum())
    return {
        "config": config, "champion": champion_rows, "challenger": challenger_rows, "labels": labels,
        "weights": weights, "times": times, "countries": countries, "common": common,
    }  # fmt: skip


def v1_mean(client: Client, logged: dict[str, Any], model: str, pairs: Any) -> float:
    config = logged["config"]
    call = config["losses"][0]
    answer = client.ok(
        "POST",
        "/v1/loss",
        json={
            "loss": call["loss"],
            "options": call.get("options", {}),
            "predictions": np.asarray(logged[model])[pairs].tolist(),
            "labels": np.asarray(logged["labels"])[pairs].tolist(),
            "sample_weight": np.asarray(logged["weights"])[pairs].tolist(),
            "convention": config["convention"],
            "dtype": config.get("dtype", "float64"),
        },
    )
    return float(answer["mean"])


WINDOW = f"start={T0:.0f}&end={T0 + 3 * HOUR:.0f}"


@pytest.mark.parametrize("name", list(COMPARED))
def test_each_models_mean_is_what_v1_loss_gives_over_the_common_ids(served: Client, name: str) -> None:  # noqa: F811
    logged = logged_pair(served, name)
    answer = served.ok("GET", f"/v1/models/challenger/compare/champion?{WINDOW}")
    common, rel = logged["common"], COMPARED[name]
    counted = common & (
        np.asarray(logged["labels"]).reshape(N, -1)[:, 0] != -100
    )  # scce's ignored targets count nothing
    assert answer["n"] == int(counted.sum())
    challenger, champion = (v1_mean(served, logged, model, common) for model in ("challenger", "champion"))
    assert answer["challenger"] == {"model": "challenger", "mean": pytest.approx(challenger, rel=rel)}
    assert answer["champion"] == {"model": "champion", "mean": pytest.approx(champion, rel=rel)}
    difference = answer["difference"]
    assert difference["mean"] == pytest.approx(challenger - champion, rel=max(rel, 1e-9), abs=1e-12)
    assert difference["low"] <= difference["mean"] <= difference["high"]
    verdict = "better" if difference["high"] < 0 else "worse" if difference["low"] > 0 else "undecided"
    assert answer["verdict"] == verdict
    assert answer["alpha"] == 0.05
    # the sequence's last point is the answer itself, weights and ignored targets included
    (last,) = served.ok("GET", f"/v1/models/challenger/compare/champion?{WINDOW}&step=10800")["sequence"]
    assert last["n"] == answer["n"]
    assert last["verdict"] == answer["verdict"]
    for bound in ("mean", "low", "high"):
        assert last[bound] == pytest.approx(difference[bound], rel=1e-9, abs=1e-15)
    assert "Waudby-Smith" in answer["method"]


def test_by_a_segment_compares_each_value_on_its_own_ids(served: Client) -> None:  # noqa: F811
    logged = logged_pair(served, "mse-keras")
    answer = served.ok("GET", f"/v1/models/challenger/compare/champion?{WINDOW}&by=country&alpha=0.1")
    assert answer["by"] == "country"
    assert [s["segment"] for s in answer["segments"]] == [None, "BR", "US"]
    for entry in answer["segments"]:
        pairs = logged["common"] & np.array([c == entry["segment"] for c in logged["countries"]])
        assert entry["n"] == int(pairs.sum())
        assert entry["challenger"]["mean"] == pytest.approx(v1_mean(served, logged, "challenger", pairs), rel=1e-12)
        assert entry["champion"]["mean"] == pytest.approx(v1_mean(served, logged, "champion", pairs), rel=1e-12)
        alone = served.ok("GET", f"/v1/models/challenger/compare/champion?{WINDOW}&alpha=0.1")
        assert alone["n"] == answer["n"]
    assert sum(s["n"] for s in answer["segments"]) == answer["n"]


def test_the_sequence_is_what_the_route_answered_at_each_steps_end(served: Client) -> None:  # noqa: F811
    logged_pair(served, "mse-keras")
    early = f"start={T0 - 3600:.0f}&end={T0 + 3 * HOUR:.0f}"  # an hour before the first prediction
    answer = served.ok("GET", f"/v1/models/challenger/compare/champion?{early}&step=1800")
    points = answer["sequence"]
    assert [p["end"] for p in points] == [T0 + k * 1800 for k in range(1, 7)], "steps without pairs are left out"
    for point in points:
        then = served.ok("GET", f"/v1/models/challenger/compare/champion?start={T0:.0f}&end={point['end']:.0f}")
        assert point["n"] == then["n"]
        assert point["verdict"] == then["verdict"]
        for bound in ("mean", "low", "high"):
            assert point[bound] == pytest.approx(then["difference"][bound], rel=1e-9, abs=1e-15)
    assert points[-1]["n"] == answer["n"]


def test_models_that_predict_the_same_have_no_difference_and_no_verdict(served: Client) -> None:  # noqa: F811
    config = {"losses": [{"loss": "binary_crossentropy"}]}
    served.ok("PUT", "/v1/models/champion", json=config)
    served.ok("PUT", "/v1/models/challenger", json={**config, "labels_from": "champion"})
    rng = np.random.default_rng(0)
    ids, rows = [f"i{k}" for k in range(400)], rng.uniform(0.05, 0.95, (400, 1)).tolist()
    for model in ("champion", "challenger"):
        served.ok(
            "POST", f"/v1/models/{model}/predictions", json={"ids": ids, "predictions": rows, "timestamps": [T0] * 400}
        )
    served.ok("POST", "/v1/models/champion/labels", json={"ids": ids, "labels": rng.integers(0, 2, (400, 1)).tolist()})
    answer = served.ok("GET", f"/v1/models/challenger/compare/champion?{WINDOW}")
    assert answer["n"] == 400
    assert answer["verdict"] == "undecided"
    assert answer["difference"] == {"mean": 0.0, "low": 0.0, "high": 0.0}


def problem(client: Client, method: str, url: str, status: int, **kwargs: Any) -> str:
    response = client.request(method, url, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return str(response.json()["detail"])


def test_comparisons_refuse_what_they_cannot_answer(served: Client) -> None:  # noqa: F811
    logged_pair(served, "mse-keras")
    compare = "/v1/models/challenger/compare/champion"
    assert "nope" in problem(served, "GET", "/v1/models/challenger/compare/nope", 404)
    assert "nope" in problem(served, "GET", "/v1/models/nope/compare/champion", 404)
    assert "itself" in problem(served, "GET", "/v1/models/champion/compare/champion", 422)
    assert "0: mean_squared_error" in problem(served, "GET", f"{compare}?loss=3", 422)
    assert "got 'mae'" in problem(served, "GET", f"{compare}?loss=mae", 422)
    for alpha in ("0", "1", "x", "nan", "-0.1"):
        assert problem(served, "GET", f"{compare}?alpha={alpha}", 422).startswith("alpha:")
    assert served.request("GET", f"{compare}?alpha=2").json()["errors"][0]["loc"] == ["query", "alpha"]
    assert "country" in problem(served, "GET", f"{compare}?by=device", 422)
    assert problem(served, "GET", f"{compare}?step=0", 422).startswith("step:")
    # the same loss configured otherwise: a loss of its own, never compared
    served.ok("PUT", "/v1/models/other", json={"losses": [{"loss": "mse"}], "convention": "torch"})
    assert "identically" in problem(served, "GET", "/v1/models/challenger/compare/other", 422)
    # a root-mean library metric: its mean is no mean over pairs
    rmse = {"losses": [{"loss": "rmse"}], "convention": "xgboost"}
    served.ok("PUT", "/v1/models/x1", json=rmse)
    served.ok("PUT", "/v1/models/x2", json=rmse)
    assert "root_mean" in problem(served, "GET", "/v1/models/x1/compare/x2?loss=0", 422)


def test_configurations_refuse_sources_and_champions_they_cannot_follow(served: Client) -> None:  # noqa: F811
    logged_pair(served, "mse-keras")
    mse = {"losses": [{"loss": "mse"}]}
    cases = {
        "unknown": ({"labels_from": "nope"}, "no model named 'nope'"),
        "self": ({"labels_from": "self"}, "itself"),
        "chain": ({"labels_from": "challenger"}, "takes its own labels from 'champion'"),
    }
    for model, (extra, reason) in cases.items():
        assert reason in problem(served, "PUT", f"/v1/models/{model}", 422, json={**mse, **extra})
    assert "loop" in problem(served, "PUT", "/v1/models/champion", 422, json={**mse, "labels_from": "challenger"})
    for champions, reason in (
        (["nope"], "no configured model"),
        (["m"], "itself"),
        (["champion", "champion"], "repeats"),
    ):
        assert reason in problem(served, "PUT", "/v1/models/m", 422, json={**mse, "compare_to": champions})
    served.ok("PUT", "/v1/models/bce", json={"losses": [{"loss": "binary_crossentropy"}]})
    assert "identically" in problem(served, "PUT", "/v1/models/m", 422, json={**mse, "compare_to": ["bce"]})
    for model in ("unknown", "self", "chain", "m"):
        assert served.request("GET", f"/v1/models/{model}").status_code == 404, "nothing configured"


COMPARE_TO_REFUSALS = [  # (what, compare_to, msg): the champion at index 1 is the one refused
    ("unknown", ["champion", "nope"], "names no configured model ('nope')"),
    ("itself", ["champion", "m"], "is this model itself"),
    (
        "no loss in common",
        ["champion", "bce"],
        "model bce configures none of these losses identically (loss, options, convention, dtype)",
    ),
    (
        "the loss under another convention",
        ["champion", "torch"],
        "model torch configures none of these losses identically (loss, options, convention, dtype)",
    ),
    ("repeated", ["champion", "champion"], "repeats the model at compare_to[0]"),
]


@pytest.mark.parametrize(("what", "champions", "msg"), COMPARE_TO_REFUSALS, ids=[c[0] for c in COMPARE_TO_REFUSALS])
def test_each_champion_refused_is_named_by_its_index_and_why(
    served: Client,  # noqa: F811
    what: str,
    champions: list[str],
    msg: str,
) -> None:
    """A champion that cannot be compared is refused where it stands in `compare_to`, on the first
    PUT and on a re-PUT alike (a model that exists is still no champion of its own), and the
    configuration stays as it was."""
    mse = {"losses": [{"loss": "mse"}]}
    served.ok("PUT", "/v1/models/champion", json=mse)
    served.ok("PUT", "/v1/models/bce", json={"losses": [{"loss": "binary_crossentropy"}]})
    served.ok("PUT", "/v1/models/torch", json={**mse, "convention": "torch"})
    errors = [{"loc": ["body", "compare_to", 1], "msg": msg}]
    for existing in (False, True):
        if existing:
            served.ok("PUT", "/v1/models/m", json=mse)
        refused = served.request("PUT", "/v1/models/m", json={**mse, "compare_to": champions})
        assert refused.status_code == 422, (existing, refused.text)
        assert refused.json()["detail"] == f"compare_to.1: {msg}"
        assert refused.json()["errors"] == errors
        kept = served.request("GET", "/v1/models/m")
        assert kept.status_code == (200 if existing else 404)
        assert not existing or kept.json()["compare_to"] == [], "nothing of a refused PUT is stored"


def test_labels_go_to_the_source_and_a_followed_source_stays(served: Client) -> None:  # noqa: F811
    logged_pair(served, "mse-keras")
    reason = problem(served, "POST", "/v1/models/challenger/labels", 409, json={"ids": ["p0"], "labels": [[0.0, 0.0]]})
    assert "log them for champion" in reason
    assert "['challenger']" in problem(served, "DELETE", "/v1/models/champion", 409)
    assert served.request("GET", "/v1/models/champion").status_code == 200
    config = served.ok("GET", "/v1/models/challenger")
    assert (config["labels_from"], config["compare_to"]) == ("champion", ["champion"])
    served.ok("PUT", "/v1/models/challenger", json={"losses": [{"loss": "mse"}], "segments": ["country"]})
    assert served.request("DELETE", "/v1/models/champion").status_code == 204


def test_keys_reach_only_sources_and_champions_they_may_use(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels logged for a source need only its ingest scope, and serve its followers; a key names
    another team's model as a source or a champion, or compares with it, only if it may use it."""
    import httpx
    from anyio.from_thread import start_blocking_portal

    from service.config import Settings
    from service.server.app import create_app
    from tests.api.test_tenants import keys_toml

    keys = {
        "admin": ("admin-key-0123456789", ["read", "ingest", "admin"], ["churn-*"], {}),
        "labeller": ("labeller-key-0123456", ["ingest"], ["churn-src"], {}),
        "fraud": ("fraud-key-0123456789", ["read", "ingest", "admin"], ["fraud-*"], {}),
    }
    (tmp_path / "keys.toml").write_text(keys_toml(keys))
    app = create_app(Settings(api_keys_file=str(tmp_path / "keys.toml"), store_url=f"sqlite:///{tmp_path}/s.db"))

    def call(portal: Any, key: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {keys[key][0]}"}
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://loss-service")
        response: httpx.Response = portal.call(lambda: client.request(method, url, headers=headers, **kwargs))
        return response

    mse = {"losses": [{"loss": "mse"}]}
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(app.router.lifespan_context(app)):
        assert call(portal, "fraud", "PUT", "/v1/models/fraud-a", json=mse).status_code == 200
        assert call(portal, "admin", "PUT", "/v1/models/churn-src", json=mse).status_code == 200
        follower = {**mse, "labels_from": "churn-src", "compare_to": ["churn-src"]}
        assert call(portal, "admin", "PUT", "/v1/models/churn-f", json=follower).status_code == 200
        body = {"ids": ["a"], "predictions": [[1.0]]}
        assert call(portal, "admin", "POST", "/v1/models/churn-f/predictions", json=body).status_code == 200
        logged = call(portal, "labeller", "POST", "/v1/models/churn-src/labels", json={"ids": ["a"], "labels": [[3.0]]})
        assert logged.status_code == 200
        assert logged.json()["followers"][0] == {
            "model": "churn-f",
            "accepted": 1,
            "duplicates": 0,
            "joined": 1,
            "pending_predictions": 0,
            "pending_labels": 0,
        }
        refused = [
            call(portal, "admin", "PUT", "/v1/models/churn-x", json={**mse, "labels_from": "fraud-a"}),
            call(portal, "admin", "PUT", "/v1/models/churn-x", json={**mse, "compare_to": ["fraud-a"]}),
            call(portal, "admin", "GET", "/v1/models/churn-f/compare/fraud-a"),
            call(portal, "fraud", "GET", "/v1/models/fraud-a/compare/churn-src"),
        ]
        assert [r.status_code for r in refused] == [403] * 4, [r.text for r in refused]
        assert call(portal, "admin", "GET", "/v1/models/churn-x").status_code == 404


def test_pairs_joined_before_a_model_configured_the_loss_are_left_out(served: Client) -> None:  # noqa: F811
    served.ok("PUT", "/v1/models/champion", json={"losses": [{"loss": "mae"}]})
    served.ok("PUT", "/v1/models/challenger", json={"losses": [{"loss": "mse"}], "labels_from": "champion"})
    early, late = ["a", "b"], ["c", "d", "e"]
    for model, rows in (("champion", [[1.0], [2.0]]), ("challenger", [[0.0], [0.0]])):
        served.ok(
            "POST", f"/v1/models/{model}/predictions", json={"ids": early, "predictions": rows, "timestamps": [T0] * 2}
        )
    served.ok("POST", "/v1/models/champion/labels", json={"ids": early, "labels": [[0.0], [0.0]]})
    served.ok("PUT", "/v1/models/champion", json={"losses": [{"loss": "mae"}, {"loss": "mse"}]})  # from here on
    for model, rows in (("champion", [[1.0], [2.0], [3.0]]), ("challenger", [[0.0], [1.0], [1.0]])):
        served.ok(
            "POST", f"/v1/models/{model}/predictions", json={"ids": late, "predictions": rows, "timestamps": [T0] * 3}
        )
    served.ok("POST", "/v1/models/champion/labels", json={"ids": late, "labels": [[0.0], [0.0], [0.0]]})
    answer = served.ok("GET", f"/v1/models/challenger/compare/champion?{WINDOW}")
    assert answer["loss"] == "mean_squared_error"
    assert answer["n"] == 3
    assert answer["champion"]["mean"] == pytest.approx((1 + 4 + 9) / 3, rel=1e-15)
    assert answer["challenger"]["mean"] == pytest.approx(2 / 3, rel=1e-15)


def test_the_window_and_the_loss_asked_for_are_the_ones_compared(served: Client) -> None:  # noqa: F811
    """Two losses both configure: the index, the name and the alias pick the second; only ids
    predicted inside [start, end) count; a clearly worse challenger is `worse`; an empty window
    has no means, no band and no sequence."""
    config = {"losses": [{"loss": "mse"}, {"loss": "mae"}]}
    served.ok("PUT", "/v1/models/champion", json=config)
    served.ok("PUT", "/v1/models/challenger", json={**config, "labels_from": "champion"})
    rng = np.random.default_rng(7)
    n = 200
    labels = rng.normal(size=n)
    rows = {"champion": labels + rng.normal(0, 0.1, n), "challenger": labels + rng.normal(0, 1.0, n)}
    times = np.where(np.arange(n) < 50, T0, T0 + 2 * HOUR)  # the first 50 an hour before the window
    ids = [f"i{k}" for k in range(n)]
    for model, values in rows.items():
        body = {"ids": ids, "predictions": values[:, None].tolist(), "timestamps": times.tolist()}
        served.ok("POST", f"/v1/models/{model}/predictions", json=body)
    served.ok("POST", "/v1/models/champion/labels", json={"ids": ids, "labels": labels[:, None].tolist()})
    window = f"start={T0 + HOUR:.0f}&end={T0 + 3 * HOUR:.0f}"
    inside = slice(50, None)
    naive = {model: float(np.mean(np.abs(values[inside] - labels[inside]))) for model, values in rows.items()}
    for loss in ("1", "mae", "mean_absolute_error"):
        answer = served.ok("GET", f"/v1/models/challenger/compare/champion?{window}&loss={loss}")
        assert (answer["loss"], answer["n"]) == ("mean_absolute_error", 150)
        assert (answer["start"], answer["end"]) == (T0 + HOUR, T0 + 3 * HOUR)
        assert answer["challenger"]["mean"] == pytest.approx(naive["challenger"], rel=1e-12)
        assert answer["champion"]["mean"] == pytest.approx(naive["champion"], rel=1e-12)
        assert answer["difference"]["low"] > 0
        assert answer["verdict"] == "worse"
    first = served.ok("GET", f"/v1/models/challenger/compare/champion?{window}")
    assert first["loss"] == "mean_squared_error"
    reason = problem(served, "GET", f"/v1/models/challenger/compare/champion?{window}&loss=2", 422)
    assert "1: mean_absolute_error" in reason
    empty = f"start={T0 + 4 * HOUR:.0f}&end={T0 + 5 * HOUR:.0f}&step=600"
    nothing = served.ok("GET", f"/v1/models/challenger/compare/champion?{empty}")
    assert nothing["n"] == 0
    assert nothing["challenger"] == {"model": "challenger", "mean": None}
    assert nothing["champion"] == {"model": "champion", "mean": None}
    assert nothing["difference"] == {"mean": None, "low": None, "high": None}
    assert (nothing["verdict"], nothing["sequence"], nothing["step"]) == ("undecided", [], 600.0)


def test_each_refusal_names_its_query_parameter(served: Client) -> None:  # noqa: F811
    logged_pair(served, "mse-keras")
    compare = "/v1/models/challenger/compare/champion"
    cases = {
        f"{compare}?start={T0 + HOUR:.0f}&end={T0:.0f}": "end",
        f"{compare}?start={T0:.0f}&end={T0:.0f}": "end",
        f"{compare}?start=noon": "start",
        f"{compare}?end=noon": "end",
        f"{compare}?loss=9": "loss",
        f"{compare}?loss=nope": "loss",
        f"{compare}?alpha=1.5": "alpha",
        f"{compare}?by=device": "by",
        "/v1/models/champion/compare/champion": "champion",
    }
    for url, field in cases.items():
        response = served.request("GET", url)
        assert response.status_code == 422, url
        assert response.json()["errors"][0]["loc"] == ["query", field], url
    segments = served.ok("GET", f"{compare}?{WINDOW}&by=country")["segments"]
    assert {(s["challenger"]["model"], s["champion"]["model"]) for s in segments} == {("challenger", "champion")}


def test_the_comparison_metrics_show_is_the_routes_answer_over_the_last_day(served: Client) -> None:  # noqa: F811
    """What the /metrics comparison job hands the monitor for each configured pair (`compared`)
    is the route's answer over the 24 h before the run, field by field; None once either model
    is gone or no longer configures the loss the pair was found for."""
    from service.usecases import comparisons

    logged = logged_pair(served, "scce-torch-ignored-class-weights")
    (pair,) = comparisons.configured_pairs(served.store)
    challenger, champion, loss = pair
    assert (challenger, champion, loss.name) == ("challenger", "champion", "sparse_categorical_crossentropy")
    now = T0 + 20 * HOUR  # the last pair 17 h before: inside the day; a later day holds none
    shown = comparisons.compared(served.store, challenger, champion, loss, now)
    answer = served.ok("GET", f"/v1/models/{challenger}/compare/{champion}?start={now - 24 * HOUR}&end={now}")
    assert shown is not None
    assert (shown.model, shown.champion, shown.loss, shown.n) == (challenger, champion, answer["loss"], answer["n"])
    assert answer["n"] > 0
    assert (shown.mean, shown.low, shown.high) == tuple(answer["difference"][f] for f in ("mean", "low", "high"))
    assert shown.verdict == {"better": -1, "undecided": 0, "worse": 1}[answer["verdict"]]
    later = comparisons.compared(served.store, challenger, champion, loss, T0 + 28 * HOUR)
    assert later is not None
    assert (later.n, later.mean) == (0, None)
    # Both put another loss first: the pair's loss position now names mean squared error.
    both = {**logged["config"], "losses": [{"loss": "mse"}, *logged["config"]["losses"]]}
    served.ok("PUT", "/v1/models/champion", json=both)
    served.ok(
        "PUT",
        "/v1/models/challenger",
        json={**both, "labels_from": "champion", "compare_to": ["champion"], "segments": ["country"]},
    )
    assert comparisons.compared(served.store, challenger, champion, loss, now) is None
    (moved,) = (found for _, _, found in comparisons.configured_pairs(served.store) if found.name == loss.name)
    assert comparisons.compared(served.store, challenger, champion, moved, now) == shown
    assert served.request("DELETE", "/v1/models/challenger").status_code == 204
    assert comparisons.compared(served.store, challenger, champion, moved, now) is None


def test_the_common_ids_read_in_small_batches_are_each_read_once_in_time_and_id_order(served: Client) -> None:  # noqa: F811
    """`common_batches` with batches of 3 over ids logged four to a timestamp (a batch ends inside
    a tie), in an order other than their ids': each id both models joined in [start, end) once, in
    (time, id) order, the ones at `start` in and those at `end` out, with its country and each
    model's own loss; a pair joined before the history kept losses (its row's losses NULL, as the
    migration left them) is read with none."""
    mse = {"losses": [{"loss": "mse"}], "convention": "keras"}
    served.ok("PUT", "/v1/models/champion", json=mse)
    served.ok("PUT", "/v1/models/challenger", json={**mse, "labels_from": "champion", "segments": ["country"]})
    n = 40
    rng = np.random.default_rng(21)
    ids = [f"i{(7 * k) % n:02d}" for k in range(n)]
    times = T0 + (np.arange(n) // 4) * 60.0
    countries = [["BR", "US", None][k % 3] for k in range(n)]
    rows = {"champion": rng.normal(size=n), "challenger": rng.normal(size=n)}
    labels = rng.normal(size=n)
    served.ok(
        "POST", "/v1/models/champion/predictions",
        json={"ids": ids, "predictions": rows["champion"].tolist(), "timestamps": times.tolist()},
    )  # fmt: skip
    labelled = [k for k in range(n) if k % 5 != 3]
    body = {"ids": [ids[k] for k in labelled], "labels": labels[labelled].tolist()}
    served.ok("POST", "/v1/models/champion/labels", json=body)
    predicted = [k for k in range(n) if k % 9 != 0]
    served.ok(
        "POST", "/v1/models/challenger/predictions",
        json={
            "ids": [ids[k] for k in predicted], "predictions": rows["challenger"][predicted].tolist(),
            "timestamps": times[predicted].tolist(), "segments": {"country": [countries[k] for k in predicted]},
        },
    )  # fmt: skip
    legacy = {ids[6], ids[21]}  # both models' rows of two common ids inside the window
    with served.store.database.transaction() as tx:
        for table in ("loss_predictions", "loss_labels"):
            tx.execute(f"UPDATE {table} SET losses = NULL WHERE id IN (?, ?)", sorted(legacy))
    start, end = T0 + 60, T0 + 8 * 60  # ids 4-7 made at start, ids 32-35 at end
    common = [k for k in set(labelled) & set(predicted) if start <= times[k] < end]
    expected = sorted(common, key=lambda k: (times[k], ids[k]))
    assert {times[k] for k in expected} >= {start, end - 60}
    assert legacy <= {ids[k] for k in expected}

    read: list[tuple[str, float, str | None, dict[str, list[float]]]] = []
    batches = served.store.common_batches("challenger", "champion", start, end, key="country", batch_rows=3)
    for batch in itertools.islice(batches, 2 * n):  # a batch read again and again ends here, not in a hang
        assert len(batch) <= 3
        for row in range(len(batch)):
            losses = {
                model: (entries["sum"][owners == row] / entries["denominator"][owners == row]).tolist()
                for model, entries, owners in (
                    ("challenger", batch.challenger, batch.challenger_rows),
                    ("champion", batch.champion, batch.champion_rows),
                )
            }
            read.append((batch.ids[row], float(batch.made[row]), batch.segments[row], losses))
    assert [(i, made, country) for i, made, country, _ in read] == [(ids[k], times[k], countries[k]) for k in expected]
    for (i, _, _, losses), k in zip(read, expected, strict=True):
        for model in ("challenger", "champion"):
            want = [] if i in legacy else [pytest.approx((rows[model][k] - labels[k]) ** 2, rel=1e-12)]
            assert losses[model] == want, (i, model)
