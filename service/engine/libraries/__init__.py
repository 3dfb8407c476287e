"""The boosting libraries' conventions: each library's evaluation metrics under their own names.

Under `convention` "xgboost", "lightgbm" or "catboost" the loss is the library's metric name as
the library writes it (`logloss`, `error@0.7`, `tweedie-nloglik@1.5`), its options are named as
the library names its parameters, and the option `margin` says the predictions are raw scores
rather than what the library's `predict` returns. `compute` answers the library's weighted mean
sum(w l) / sum(w) (or its root, `aggregate="root_mean"`, for RMSE-type metrics, or the weighted
sum itself, `aggregate="sum"`).

How to add a library's table (LightGBM, CatBoost)
-------------------------------------------------
1. Write the package `service/engine/libraries/<library>/` (see `xgboost/`): an `__init__.py`
   whose docstring cites the library source followed and says in which precision the library
   computes each row and accumulates, and which imports its family modules in the library's table
   order; in those modules, one function per metric declared with
   `@metric("<library>", "<name as the library writes it>", loss=..., link=..., precision=...)`:
   - signature `(predictions, labels, convention, /, *, margin: Margin = False, <options>)`,
     options as `Annotated[type, Range?, Doc("...")]` named as the library names its parameter;
   - a docstring with a summary line and Formula, Shapes and Follows sections (they are the
     metric's documentation in the API and the docs);
   - `loss=`: the catalogue loss whose formula it is, with the library's constants; call that
     loss's function (with convention "torch": one value per element) or its shared kernel
     (`binary_log_loss`, `squared_log_errors`, `absolute_percentage_errors`, `poisson_terms`,
     `gamma_nloglik_terms`, `tweedie_nloglik_terms`, `unit_deviance`), extending a kernel by a
     constant rather than copying a formula.
     `loss=None` only where no catalogue loss is the same function (say so in the Formula);
   - `aggregate="root_mean"` for RMSE-type metrics (values are squared errors; mean = root);
   - `aggregate="sum"` where the library divides by nothing (LightGBM's gamma_deviance);
   - `parameter=` for a `name@value` form (CatBoost's `Name:key=value` names any option),
     `describe=` where the library names a configured metric otherwise, `aliases=` for the other
     names it accepts, `class_labels=True` for class-index labels;
   - `float32_targets=True` where the library holds labels and weights as float32 (`compute`
     rounds them), `weight_sum=` where it sums the weights other than in double;
   - return `LossValues(values)`, unweighted, with the library's domain checks raising
     `LossInputError(field, reason, index)` where its formula would give inf or NaN.
2. Import the package at the bottom of this file. The API, the OIP route, model configurations,
   the client, the CLI, `GET /v1/conventions/<library>` and the docs pick the table up from here.
3. Tests: `tests/engine/test_engine_<library>.py` comparing `compute(...).mean` against the library's
   own recorded evaluation on models it trains (importorskip), and a committed fixture
   `tests/fixtures/<library>_reference.json` written by `tests/reference/generate_<library>_fixtures.py`
   (the format of `xgboost_reference.json`), checked without the library installed.
"""

from service.engine.libraries.base import (
    LIBRARY_TITLES,
    NAME_PATTERN,
    SEPARATORS,
    LibraryMetric,
    accepted,
    base_name,
    bind,
    canonical,
    find,
    is_library_metric,
    lookup,
    metric,
    metrics,
)

__all__ = [
    "LIBRARY_TITLES",
    "NAME_PATTERN",
    "SEPARATORS",
    "LibraryMetric",
    "accepted",
    "base_name",
    "bind",
    "canonical",
    "find",
    "is_library_metric",
    "lookup",
    "metric",
    "metrics",
]

# The tables: importing a library's module declares its metrics.
from service.engine.libraries import catboost, lightgbm, xgboost  # noqa: F401
