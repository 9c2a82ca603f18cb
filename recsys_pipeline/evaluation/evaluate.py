"""Offline evaluation through the ``Recommender`` contract: ``evaluate(model, split)`` ranks with
``model.recommend`` (the routine serving uses) and computes Recall@K, NDCG@K and coverage, overall and for warm /
cold items; ``evaluate_protocols`` fits our model and the popularity baseline on each protocol's train part.

Evaluation never knows which model it evaluates: any :class:`~recsys_pipeline.models.base.Recommender` works.

Example::

    split = make_split(interactions, "user_last_fraction", EvaluationSettings())
    pop = PopularityRecommender().fit(split.train, features)
    evaluate(pop, split).metrics["ndcg_at_10"]
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_pipeline.content.features import ItemFeatures
from recsys_pipeline.evaluation.metrics import ranking_metrics
from recsys_pipeline.evaluation.protocols import (
    EvaluationSettings,
    Split,
    make_split,
    split_family,
    validation_split,
    view_catalog,
)
from recsys_pipeline.models.base import Recommender
from recsys_pipeline.models.popularity import PopularityRecommender

__all__ = ["SplitEvaluation", "EvaluationResult", "evaluate", "evaluate_protocols", "modality_groups"]


@dataclass
class SplitEvaluation:
    """Figures of one model on one split, and the ranked lists they were computed from.

    Attributes:
        metrics: metric name -> value (see :func:`evaluate`).
        ranked: ``user_id, rank, item_id, score`` over the whole catalog (minus train items).
        ranked_cold: the same over the split's cold items only, or ``None`` when the split has none.
    """

    metrics: dict[str, float]
    ranked: pd.DataFrame
    ranked_cold: pd.DataFrame | None = None


def _prefixed(d: dict, prefix: str) -> dict:
    return {f"{prefix}{k}": v for k, v in d.items()}


def evaluate(
    model: Recommender,
    split: Split,
    k: int = 20,
    item_groups: Mapping[str, Collection[str]] | None = None,
) -> SplitEvaluation:
    """Figures of ``model`` (fit on ``split.train``) on ``split.test``, ranking with ``model.recommend``.

    Every test user ranks the model's catalog minus the items they interacted with in ``split.train``. Keys:
    ``recall_at_10, recall_at_{k}, ndcg_at_10, ndcg_at_{k}, coverage, n_users``; the same with prefix ``warm_``
    (truth restricted to items seen in train) and ``cold_`` (items not in train, same ranking). If the split has
    ``cold_items``, also ``cold_candidates_*`` (ranking among the cold items only) and
    ``cold_candidates_random_recall_at_{k}`` (``k / n_cold``, a random order's expected recall), and
    ``cold_share_at_{k}``: the share of the whole-catalogue top-``k`` slots held by the cold items. For each
    ``name -> item ids`` of ``item_groups`` (e.g. ``with_image`` / ``without_image``), the same metrics with prefix
    ``{name}_`` over the test items of that group, and ``cold_candidates_{name}_`` for the cold ranking.
    Definitions of the metrics: ``evaluation.metrics``.
    """
    ks = (10, k) if k != 10 else (10,)
    catalog = list(model.item_ids)
    n_catalog = len(catalog)
    test = split.test.assign(item_id=split.test["item_id"].astype(str), user_id=split.test["user_id"].astype(str))
    users = sorted(test["user_id"].unique())
    ranked = model.recommend(users, k, exclude_seen=False, exclude=split.train)
    seen = test["item_id"].isin(set(split.train["item_id"].astype(str)))
    out = ranking_metrics(ranked, test, n_catalog, ks)
    out.update(_prefixed(ranking_metrics(ranked, test[seen], n_catalog, ks), "warm_"))
    out.update(_prefixed(ranking_metrics(ranked, test[~seen], n_catalog, ks), "cold_"))
    ranked_cold = truth_cold = None
    if split.cold_items is not None:
        cold = sorted(set(split.cold_items) & set(catalog))
        # of the whole-catalogue lists, the share of slots new items hold (all test users, empty lists count 0)
        out[f"cold_share_at_{k}"] = float(ranked["item_id"].isin(set(cold)).sum()) / max(len(users) * k, 1)
        ranked_cold = model.recommend(users, k, exclude_seen=False, exclude=split.train, candidates=cold)
        truth_cold = test[test["item_id"].isin(set(cold))]
        out.update(_prefixed(ranking_metrics(ranked_cold, truth_cold, max(len(cold), 1), ks), "cold_candidates_"))
        out[f"cold_candidates_random_recall_at_{k}"] = min(k, len(cold)) / max(len(cold), 1)
    for name, items in (item_groups or {}).items():
        group = {str(i) for i in items}
        out.update(_prefixed(ranking_metrics(ranked, test[test["item_id"].isin(group)], n_catalog, ks), f"{name}_"))
        if ranked_cold is not None:
            truth_g = truth_cold[truth_cold["item_id"].isin(group)]
            out.update(
                _prefixed(ranking_metrics(ranked_cold, truth_g, max(len(cold), 1), ks), f"cold_candidates_{name}_")
            )
    return SplitEvaluation(out, ranked, ranked_cold)


def modality_groups(features: ItemFeatures, modality: str = "image") -> dict[str, set[str]]:
    """``{"with_image": ids, "without_image": ids}`` from the presence mask (``{}`` when the modality is absent)."""
    if modality not in features.modalities:
        return {}
    has = features.present[:, features.modality_names.index(modality)]
    ids = np.asarray(features.item_ids, dtype=object)
    return {f"with_{modality}": set(ids[has]), f"without_{modality}": set(ids[~has])}


@dataclass
class EvaluationResult:
    """Figures per protocol and model, and the ranked lists / ground truth to recompute them.

    Attributes:
        metrics: ``protocol, model, metric, value``.
        ranked: ``protocol, model, user_id, rank, item_id, score`` (the cold-candidates ranking for
            ``item_cold_start``, the whole catalog otherwise).
        truth: ``protocol, user_id, item_id``.
        details: per protocol: train seconds, test users and interactions, epochs.
        models: per protocol, our model fitted on that protocol's train part (for figures at inference only,
            such as :func:`~recsys_pipeline.evaluation.ablation.masked_ablation`; not saved anywhere).
        splits: per protocol, the split it was fitted and evaluated on.
    """

    metrics: pd.DataFrame
    ranked: pd.DataFrame
    truth: pd.DataFrame
    details: dict = field(default_factory=dict)
    models: dict[str, Recommender] = field(default_factory=dict, repr=False, compare=False)
    splits: dict[str, Split] = field(default_factory=dict, repr=False, compare=False)


def _fit_timed(make_model: Callable[[str], Recommender], val_split: str, train: pd.DataFrame, features: ItemFeatures):
    started = time.perf_counter()
    model = make_model(val_split).fit(train, features)
    return model, time.perf_counter() - started


def _fit_and_save(make_model, val_split, train, features, threads: int, directory: str) -> tuple[dict, float]:
    """In a spawned process: fit with ``threads`` torch threads, save to ``directory``; ``(train_stats, seconds)``."""
    import torch

    torch.set_num_threads(threads)  # a TrainerConfig.num_threads of the model, if set, still wins inside fit
    model, seconds = _fit_timed(make_model, val_split, train, features)
    model.save(directory)
    return getattr(model, "train_stats", {}), seconds


_TRAINING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


def _log_as_parent(levels: dict[str, int], filters: list) -> None:
    """In a spawned process: the parent's levels of the training loggers and its warning filters. A spawned child
    starts from the defaults, so under a quiet parent (e.g. ``recsys demo``) it would print Lightning's banners."""
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import: import first, then override)

    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    warnings.filters[:] = filters


def _fit_protocols(
    make_model: Callable[[str], Recommender],
    splits: Mapping[str, Split],
    features: ItemFeatures,
    processes: int,
) -> dict[str, tuple[Recommender, float]]:
    """``protocol -> (fitted model, fit seconds)``, fitted here one after another or in ``processes`` spawned
    processes at once (each with ``cores // processes`` torch threads; models come back through ``save`` /
    ``load``, the contract's own persistence)."""
    if processes <= 1 or len(splits) <= 1:
        return {p: _fit_timed(make_model, validation_split(p), s.train, features) for p, s in splits.items()}
    threads = max(1, (os.cpu_count() or 1) // processes)
    out: dict[str, tuple[Recommender, float]] = {}
    with tempfile.TemporaryDirectory(prefix="recsys-eval-") as tmp:
        # spawn, not fork: the parent may hold torch / OpenMP threads, which a forked child would inherit broken
        context = multiprocessing.get_context("spawn")
        levels = {name: logging.getLogger(name).level for name in _TRAINING_LOGGERS}
        with ProcessPoolExecutor(
            min(processes, len(splits)),
            mp_context=context,
            initializer=_log_as_parent,
            initargs=(levels, list(warnings.filters)),
        ) as pool:
            futures = {
                p: pool.submit(
                    _fit_and_save, make_model, validation_split(p), s.train, features, threads, str(Path(tmp) / p)
                )
                for p, s in splits.items()
            }
            for protocol, future in futures.items():
                stats, seconds = future.result()
                model = type(make_model(validation_split(protocol))).load(Path(tmp) / protocol)
                model.train_stats = stats
                out[protocol] = (model, seconds)
    return out


def evaluate_protocols(
    make_model: Callable[[str], Recommender],
    interactions: pd.DataFrame,
    features: ItemFeatures,
    settings: EvaluationSettings,
    item_groups: Mapping[str, Collection[str]] | None = None,
    processes: int = 1,
) -> EvaluationResult:
    """For each protocol of ``settings``: split, fit ``make_model(validation_split(protocol))`` and the popularity
    baseline on the train part, and :func:`evaluate` both on the test part (model names ``ours`` and
    ``popularity``). Protocols that are views of one split (``item_cold_mixed`` of ``item_cold_start``'s) share its
    fit and its ranking: ``item_cold_mixed``'s rows are that evaluation's whole-catalogue figures (the same values
    as ``item_cold_start``'s rows of those names), its stored lists the whole-catalogue ones.

    Args:
        make_model: given the protocol's validation split (``"last"`` or ``"random"``,
            :func:`~recsys_pipeline.evaluation.protocols.validation_split`), returns a new, unfitted recommender
            that carves its early-stopping validation that way, e.g.
            ``partial(two_tower_for_split, config, trainer)``. Picklable when ``processes > 1``.
        interactions: every interaction (``user_id, item_id, timestamp[, value]``).
        features: the catalog's item features (fit input and ranked catalog of both models; with
            ``settings.k_core``, only the view's items: :func:`~recsys_pipeline.evaluation.protocols.view_catalog`).
        settings: protocols, fractions, ``k``, seed.
        item_groups: extra per-group figures (e.g. :func:`modality_groups`).
        processes: fit the protocols' models in up to this many spawned processes at once (``1``: here, one after
            another). The figures are the same either way up to floating-point summation order (the fits have
            their seeds; thread counts differ).

    Raises:
        ValueError: a protocol's train or test part is empty (e.g. a ``k_core`` that keeps nothing, a
            ``temporal_cutoff`` after the last interaction).
    """
    features = view_catalog(features, interactions, settings.k_core)  # a k-core view ranks its own items
    rows, ranked_all, truth_all, details, models = [], [], [], {}, {}
    evaluated: dict[tuple[str, str], SplitEvaluation] = {}
    popular: dict[str, PopularityRecommender] = {}
    # one split and one fit per family: item_cold_mixed is another view of item_cold_start's split and model
    families = {protocol: split_family(protocol) for protocol in settings.protocols}
    family_splits = {f: make_split(interactions, f, settings) for f in dict.fromkeys(families.values())}
    for family, split in family_splits.items():
        if split.train.empty or split.test.empty:
            raise ValueError(
                f"protocol {family}: the {'train' if split.train.empty else 'test'} part is empty "
                f"({len(interactions)} interactions, k_core={settings.k_core}, temporal_cutoff="
                f"{settings.temporal_cutoff}): nothing to evaluate on"
            )
    fitted = _fit_protocols(make_model, family_splits, features, processes)
    splits = {protocol: family_splits[family] for protocol, family in families.items()}
    for protocol, split in splits.items():
        ours, seconds = fitted[families[protocol]]
        models[protocol] = ours
        details[protocol] = {
            "train_seconds": round(seconds, 1),
            "test_users": int(split.test["user_id"].nunique()),
            "test_interactions": len(split.test),
            "epochs": getattr(ours, "train_stats", {}).get("epochs_trained"),
            "val_split": validation_split(protocol),
        }
        if families[protocol] not in popular:
            popular[families[protocol]] = PopularityRecommender().fit(split.train, features)
        for name, model in (("ours", ours), ("popularity", popular[families[protocol]])):
            key = (families[protocol], name)  # the views of one split rank once
            result = evaluated[key] = evaluated.get(key) or evaluate(model, split, settings.k, item_groups)
            figures = result.metrics.items()
            if protocol != families[protocol]:  # item_cold_mixed: the whole-catalogue figures, not the held-out ones
                figures = [(m, v) for m, v in figures if not m.startswith("cold_candidates_")]
            rows += [(protocol, name, metric, float(value)) for metric, value in figures]
            lists = result.ranked_cold if protocol == "item_cold_start" else result.ranked
            ranked_all.append(lists.assign(protocol=protocol, model=name))
        truth_all.append(split.test[["user_id", "item_id"]].astype(str).assign(protocol=protocol))
    metrics = pd.DataFrame(rows, columns=["protocol", "model", "metric", "value"])
    ranked = pd.concat(ranked_all, ignore_index=True)[["protocol", "model", "user_id", "rank", "item_id", "score"]]
    truth = pd.concat(truth_all, ignore_index=True)[["protocol", "user_id", "item_id"]]
    return EvaluationResult(metrics, ranked, truth, details, models, splits)
