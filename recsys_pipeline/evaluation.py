"""Offline evaluation: splits, ranking through the ``score`` contract, and metrics by warm/cold item.

Evaluation never knows which model it evaluates: anything with ``score(user_ids, item_ids) -> (n_u, n_i)`` works
(see ``recsys_pipeline.model.recommender.Recommender``), including the popularity and random baselines.

Example::

    split = split_user_last_fraction(interactions, fraction=0.2, min_interactions=5)
    pop = PopularityRecommender().fit(split.train)
    evaluate_split(pop, split, catalog_item_ids)["ndcg_at_10"]
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
import pandas as pd

from .metrics import ranking_metrics

__all__ = [
    "Split",
    "split_last_fraction_per_user",
    "split_user_last_fraction",
    "split_temporal",
    "split_item_cold_start",
    "rank_for_split",
    "evaluate_split",
]


@dataclass
class Split:
    """A train/test partition of interactions; ``cold_items`` = items held out entirely (item cold start)."""

    train: pd.DataFrame
    test: pd.DataFrame
    cold_items: set[str] | None = None

    def describe(self) -> dict[str, int]:
        return {
            "n_train": len(self.train),
            "n_test": len(self.test),
            "n_test_users": int(self.test["user_id"].nunique()),
            "n_cold_items": len(self.cold_items) if self.cold_items is not None else 0,
        }


def split_last_fraction_per_user(
    interactions: pd.DataFrame, fraction: float, min_interactions: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user with ``>= min_interactions`` rows, hold out the latest ``max(1, floor(n * fraction))`` rows.

    Sorting is stable by ``(user_id, timestamp)`` so timestamp ties keep input order. Returns ``(train, held_out)``.
    """
    if fraction <= 0 or interactions.empty:
        return interactions, interactions.iloc[:0]
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    df = interactions.reset_index(drop=True)
    df = df.loc[df.sort_values(["user_id", "timestamp"], kind="stable").index]
    g = df.groupby("user_id", sort=False)
    n = g["item_id"].transform("size").to_numpy()
    pos = g.cumcount().to_numpy()
    n_hold = np.where(n >= min_interactions, np.maximum(1, np.floor(n * fraction)).astype(np.int64), 0)
    hold = pos >= n - n_hold
    return df[~hold], df[hold]


def split_user_last_fraction(interactions: pd.DataFrame, fraction: float = 0.2, min_interactions: int = 5) -> Split:
    """Per user (by timestamp) the last ``fraction`` is test; users with < ``min_interactions`` stay all-train."""
    train, test = split_last_fraction_per_user(interactions, fraction, min_interactions)
    return Split(train.reset_index(drop=True), test.reset_index(drop=True))


def split_temporal(interactions: pd.DataFrame, cutoff: datetime) -> Split:
    """Global time split: train ``timestamp < cutoff <=`` test; test keeps only users with train history."""
    ts = interactions["timestamp"]
    train = interactions[ts < pd.Timestamp(cutoff)]
    test = interactions[(ts >= pd.Timestamp(cutoff)) & interactions["user_id"].isin(train["user_id"].unique())]
    return Split(train.reset_index(drop=True), test.reset_index(drop=True))


def split_item_cold_start(interactions: pd.DataFrame, fraction: float = 0.2, seed: int = 0) -> Split:
    """A random ``fraction`` of items (``seed``) moves to test with ALL of its interactions.

    Test may contain users with no train history; scorers treat them as unknown users.
    """
    items = np.sort(interactions["item_id"].astype(str).unique())
    n_cold = int(round(fraction * len(items)))
    rng = np.random.default_rng(seed)
    cold = set(rng.choice(items, size=n_cold, replace=False).tolist()) if n_cold else set()
    is_cold = interactions["item_id"].astype(str).isin(cold)
    return Split(interactions[~is_cold].reset_index(drop=True), interactions[is_cold].reset_index(drop=True), cold)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest entries per row, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def rank_for_split(
    model,
    split: Split,
    k: int = 20,
    candidates: Literal["all", "cold"] = "all",
    catalog_item_ids: Sequence[str] | None = None,
    user_batch: int = 1024,
) -> pd.DataFrame:
    """Top-``k`` lists for every test user via ``model.score``.

    Candidates: ``"all"`` = the catalog (``catalog_item_ids``, default train ∪ test items) minus the user's train
    items; ``"cold"`` = only ``split.cold_items`` (in the catalog if given). Returns
    ``user_id, rank (1..k), item_id, score``; lists are shorter when fewer candidates remain.
    """
    train_items = split.train["item_id"].astype(str)
    if catalog_item_ids is None:
        catalog = pd.Index(pd.concat([train_items, split.test["item_id"].astype(str)]).unique())
    else:
        catalog = pd.Index(pd.unique(pd.Series(catalog_item_ids, dtype=str)))
    if candidates == "cold":
        if split.cold_items is None:
            raise ValueError("candidates='cold' needs a split with cold_items (split_item_cold_start)")
        cand = pd.Index(sorted(set(split.cold_items) & set(catalog))) if catalog_item_ids is not None else pd.Index(
            sorted(split.cold_items)
        )
    elif candidates == "all":
        cand = catalog
    else:
        raise ValueError(f"candidates must be 'all' or 'cold', got {candidates!r}")
    users = pd.Index(np.sort(split.test["user_id"].astype(str).unique()))
    empty = pd.DataFrame({"user_id": pd.Series(dtype=str), "rank": pd.Series(dtype=np.int64),
                          "item_id": pd.Series(dtype=str), "score": pd.Series(dtype=np.float32)})
    if len(users) == 0 or len(cand) == 0:
        return empty
    seen_r = users.get_indexer(split.train["user_id"].astype(str))
    seen_c = cand.get_indexer(train_items)
    ok = (seen_r >= 0) & (seen_c >= 0)
    seen_r, seen_c = seen_r[ok], seen_c[ok]
    order = np.argsort(seen_r, kind="stable")
    seen_r, seen_c = seen_r[order], seen_c[order]
    bounds = np.searchsorted(seen_r, np.arange(0, len(users) + user_batch, user_batch))
    cand_list = cand.tolist()
    frames = []
    for b, s in enumerate(range(0, len(users), user_batch)):
        batch_users = users[s : s + user_batch].tolist()
        scores = np.asarray(model.score(batch_users, cand_list), dtype=np.float32).copy()
        if scores.shape != (len(batch_users), len(cand_list)):
            raise ValueError(f"score returned shape {scores.shape}, expected {(len(batch_users), len(cand_list))}")
        lo, hi = bounds[b], bounds[b + 1]
        scores[seen_r[lo:hi] - s, seen_c[lo:hi]] = -np.inf
        top = _top_k(scores, k)
        top_s = np.take_along_axis(scores, top, axis=1)
        kk = top.shape[1]
        frames.append(
            pd.DataFrame(
                {
                    "user_id": np.repeat(np.asarray(batch_users, dtype=object), kk),
                    "rank": np.tile(np.arange(1, kk + 1, dtype=np.int64), len(batch_users)),
                    "item_id": cand.to_numpy(dtype=object)[top.ravel()],
                    "score": top_s.ravel(),
                }
            )
        )
    out = pd.concat(frames, ignore_index=True)
    return out[np.isfinite(out["score"].to_numpy())].reset_index(drop=True)


def _prefixed(d: dict, prefix: str) -> dict:
    return {f"{prefix}{k}": v for k, v in d.items()}


def evaluate_split(
    model,
    split: Split,
    catalog_item_ids: Sequence[str] | None = None,
    k: int = 20,
    item_groups: Mapping[str, Collection[str]] | None = None,
) -> dict[str, float]:
    """Metrics of ``model`` on ``split``.

    Keys: ``recall_at_10, recall_at_{k}, ndcg_at_10, ndcg_at_{k}, coverage, n_users`` ranking over the whole
    catalog minus train items; the same with prefix ``warm_`` (truth restricted to items seen in train) and
    ``cold_`` (items not in train, same ranking). If the split has ``cold_items``, also ``cold_candidates_*``
    (ranking among cold items only) and ``cold_candidates_random_recall_at_{k}`` (= k / n_cold_candidates, the
    expected recall of a random ranker). For each ``name -> item ids`` of ``item_groups`` (e.g. ``with_image`` /
    ``without_image``), the same metrics with prefix ``{name}_`` over the test items of that group (same ranking),
    and with ``cold_candidates_{name}_`` for the cold-candidates ranking.
    """
    ks = (10, k) if k != 10 else (10,)
    catalog = (
        list(catalog_item_ids)
        if catalog_item_ids is not None
        else pd.concat([split.train["item_id"], split.test["item_id"]]).astype(str).unique().tolist()
    )
    n_catalog = len(set(map(str, catalog)))
    ranked = rank_for_split(model, split, k, "all", catalog)
    test = split.test.assign(item_id=split.test["item_id"].astype(str), user_id=split.test["user_id"].astype(str))
    seen = test["item_id"].isin(set(split.train["item_id"].astype(str)))
    out = ranking_metrics(ranked, test, n_catalog, ks)
    out.update(_prefixed(ranking_metrics(ranked, test[seen], n_catalog, ks), "warm_"))
    out.update(_prefixed(ranking_metrics(ranked, test[~seen], n_catalog, ks), "cold_"))
    if split.cold_items is not None:
        cold = set(split.cold_items) & set(map(str, catalog))
        ranked_c = rank_for_split(model, split, k, "cold", catalog)
        truth_c = test[test["item_id"].isin(cold)]
        out.update(_prefixed(ranking_metrics(ranked_c, truth_c, max(len(cold), 1), ks), "cold_candidates_"))
        out[f"cold_candidates_random_recall_at_{k}"] = min(k, len(cold)) / max(len(cold), 1)
    for name, items in (item_groups or {}).items():
        in_group = test["item_id"].isin({str(i) for i in items})
        out.update(_prefixed(ranking_metrics(ranked, test[in_group], n_catalog, ks), f"{name}_"))
        if split.cold_items is not None:
            truth_g = truth_c[truth_c["item_id"].isin({str(i) for i in items})]
            out.update(_prefixed(ranking_metrics(ranked_c, truth_g, max(len(cold), 1), ks), f"cold_candidates_{name}_"))
    return out
