"""Hyperparameter search on a validation split carved as the protocol carves its test part (Optuna, TPE).

One loop for every model: :func:`tune` (the ``model_tuning`` asset tunes the two-tower model with it,
``benchmarks/quality.py`` tunes every peer with it, with the same number of trials). The validation split is carved
from the **train part** of the protocol's split, the same way (:func:`tuning_split`), so that split's test rows
are never seen while tuning (on the same data and settings; a seeded random split redrawn over other data is
another split).

Example::

    split = tuning_split(interactions, "user_last_fraction", EvaluationSettings())
    result = tune(lambda params, train: fit_something(train, **params), space, split, "user_last_fraction", 10)
    result.best_params, result.best_value, result.default_value
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace

import pandas as pd

from recsys_pipeline.evaluation.evaluate import evaluate
from recsys_pipeline.evaluation.protocols import EvaluationSettings, Split, make_split
from recsys_pipeline.models.base import Recommender

__all__ = [
    "ITEM_ITEM_WEIGHTS",
    "TUNED_FIELDS",
    "Trial",
    "TuningResult",
    "tune",
    "tuning_split",
    "two_tower_space",
    "two_tower_variants",
    "validation_metric",
    "validation_value",
]

# The two-tower fields :func:`two_tower_space` searches (a user's explicit setting of one of them wins over tuning).
TUNED_FIELDS = ("history_length", "item_item_weight", "id_dropout", "max_epochs", "lr")


# The item-item head's blend weights a trial is evaluated at. The weight does not change training, so every trial's
# fitted model is scored at each of them (:func:`two_tower_variants`; no extra fit) rather than drawn once per trial:
# drawn, each value was tried with one random draw of the other fields only, and a trial's figure mixed both.
ITEM_ITEM_WEIGHTS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


def two_tower_space(trial, fixed: Collection[str] = ()) -> dict:
    """The two-tower model's search space (``ModelConfig`` overrides): the history head's length (0 = off), id
    dropout, epochs and learning rate; fields in ``fixed`` (set by the user) are not searched. The item-item head's
    weight is not drawn: unless fixed, the fit gets the largest of :data:`ITEM_ITEM_WEIGHTS` (so it has a head) and
    :func:`two_tower_variants` scores the fitted model at each of them."""
    suggest = {
        "history_length": lambda: trial.suggest_categorical("history_length", [0, 20, 50]),
        "item_item_weight": lambda: max(ITEM_ITEM_WEIGHTS),
        "id_dropout": lambda: trial.suggest_float("id_dropout", 0.0, 0.6),
        "max_epochs": lambda: trial.suggest_int("max_epochs", 6, 20),
        "lr": lambda: trial.suggest_float("lr", 1e-3, 1e-2, log=True),
    }
    return {name: draw() for name, draw in suggest.items() if name not in fixed}


def two_tower_variants(params: dict, model, fixed: Collection[str] = ()) -> list[tuple[dict, Recommender]]:
    """The fitted two-tower ``model`` (fit with ``params``) at each blend weight of :data:`ITEM_ITEM_WEIGHTS`, as
    ``(params with that item_item_weight, model)`` pairs; just ``[(params, model)]`` when the weight is ``fixed``
    or the model has no item-item head."""
    if "item_item_weight" in fixed or getattr(model, "item_item", None) is None:
        return [(params, model)]
    return [({**params, "item_item_weight": w}, model.with_item_item_weight(w)) for w in ITEM_ITEM_WEIGHTS]


# The two item-cold protocols share one split and one model (``item_cold_mixed`` ranks ``item_cold_start``'s new
# items in the whole catalogue), so either is tuned on both: judged on one alone, the tuning on the 10-core view
# kept the item-item weight that ranks new items well among themselves but keeps them out of mixed lists.
_ITEM_COLD_PARTS = ("cold_candidates_ndcg_at_10", "cold_ndcg_at_10")


def validation_metric(protocol: str) -> str:
    """The name of the validation figure a protocol is tuned on (:func:`validation_value`): ``ndcg_at_10`` for
    the user protocols; ``item_cold_ndcg_at_10`` for ``item_cold_start`` and ``item_cold_mixed``: the mean of the
    new items' NDCG@10 ranked among the new items (``cold_candidates_ndcg_at_10``) and in the whole catalogue
    (``cold_ndcg_at_10``)."""
    return "item_cold_ndcg_at_10" if protocol in ("item_cold_start", "item_cold_mixed") else "ndcg_at_10"


def validation_value(metrics: Mapping[str, float], protocol: str) -> float:
    """The figure named by :func:`validation_metric` from :func:`~recsys_pipeline.evaluation.evaluate.evaluate`'s
    ``metrics`` of ``protocol``'s split.

    Raises:
        KeyError: ``metrics`` lack a part (not the metrics of that protocol's split).
    """
    if validation_metric(protocol) == "item_cold_ndcg_at_10":
        return sum(float(metrics[k]) for k in _ITEM_COLD_PARTS) / len(_ITEM_COLD_PARTS)
    return float(metrics["ndcg_at_10"])


def tuning_split(interactions: pd.DataFrame, protocol: str, settings: EvaluationSettings) -> Split:
    """The validation split of ``protocol``: its split (``settings``) of ``interactions``, then the same split of
    that train part (seed ``settings.seed + 1000``; the data view is already applied).

    Raises:
        ValueError: an unknown protocol, or an empty part (too little data for two nested splits).
    """
    outer = make_split(interactions, protocol, settings)
    inner = make_split(outer.train, protocol, replace(settings, seed=settings.seed + 1000, k_core=0))
    if inner.train.empty or inner.test.empty:
        raise ValueError(f"{protocol}: the validation split of the train part is empty; too little data to tune")
    return inner


@dataclass(frozen=True)
class Trial:
    """One trial: its ``params``, validation ``value`` and fit + evaluation ``seconds``; with variants (see
    :func:`tune`), ``params`` and ``value`` are the best variant's and ``variant_values`` every variant's
    ``(params, value)``."""

    number: int
    params: dict
    value: float
    seconds: float
    variant_values: tuple = ()


@dataclass(frozen=True)
class TuningResult:
    """``best_params`` (the winning trial's, number ``best_number``: Optuna's ``best_trial``), its ``best_value``,
    ``default_value`` (trial 0: the given default) and every trial, on validation ``metric``."""

    protocol: str
    metric: str
    best_params: dict
    best_value: float
    default_value: float
    trials: list[Trial] = field(default_factory=list)
    best_number: int = 0


def tune(
    fit: Callable[[dict, pd.DataFrame], Recommender],
    space: Callable,
    split: Split,
    protocol: str,
    n_trials: int,
    default: dict | None = None,
    seed: int = 0,
    on_trial: Callable[[Trial], None] | None = None,
    variants: Callable[[dict, Recommender], list[tuple[dict, Recommender]]] | None = None,
) -> TuningResult:
    """Search ``space`` for the params whose model, ``fit(params, split.train)``, has the best validation
    :func:`validation_metric` on ``split`` (ranked through ``Recommender.recommend``).

    Args:
        space: ``space(optuna_trial) -> params``.
        n_trials: trials in all, the ``default`` one included (trial 0; ``{}`` = the model's own defaults).
        seed: the TPE sampler's seed (the first trials are its random start-up draws).
        on_trial: called after each trial (e.g. to log it as an MLflow child run).
        variants: ``variants(params, fitted) -> [(params', model'), ...]``: versions of a trial's fitted model that
            differ only in settings that do not change training (:func:`two_tower_variants`); each is evaluated
            and the trial is its best variant. A trial is still one fit. ``default_value`` is trial 0's variant
            with ``default``'s values, if there is one.

    Raises:
        ValueError: ``n_trials < 1``.
        ImportError: optuna is not installed.
    """
    import optuna

    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    metric = validation_metric(protocol)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    if default is not None:
        study.enqueue_trial(default)
    trials: list[Trial] = []

    def objective(trial) -> float:
        params = space(trial)
        started = time.perf_counter()
        fitted = fit(params, split.train)
        candidates = variants(params, fitted) if variants is not None else [(params, fitted)]
        scored = tuple((p, validation_value(evaluate(m, split).metrics, protocol)) for p, m in candidates)
        best_params, value = max(scored, key=lambda pv: pv[1])  # the first of equal values
        done = Trial(trial.number, best_params, value, time.perf_counter() - started, scored if variants else ())
        trials.append(done)
        if on_trial is not None:
            on_trial(done)
        return value

    study.optimize(objective, n_trials=n_trials)
    best = trials[study.best_trial.number]
    default_value = trials[0].value
    if default is not None and trials[0].variant_values:
        matching = [v for p, v in trials[0].variant_values if all(p.get(k) == x for k, x in default.items())]
        default_value = matching[0] if matching else default_value
    return TuningResult(protocol, metric, best.params, best.value, default_value, trials, best.number)
