"""Top-k ranking metrics on long-format frames (vectorised pandas/numpy).

Inputs:
    ranked: ``user_id, rank, item_id`` with ``rank`` 1-based (1 = best); extra columns ignored.
    truth: ``user_id, item_id`` relevant (held-out) pairs; binary relevance, duplicates counted once.

A user is evaluated iff it has at least one relevant item in ``truth``; a user in ``truth`` with no ranked list
scores 0. Definitions:

* Recall@k: ``|top-k ∩ relevant| / |relevant|`` averaged over evaluated users (the convention of torchmetrics'
  ``retrieval_recall``; some papers divide by ``min(k, |relevant|)`` instead).
* NDCG@k (Järvelin & Kekäläinen 2002, binary gains, log2 discount):
  ``DCG = Σ_{r ≤ k, item_r relevant} 1 / log2(r + 1)``, ``IDCG = Σ_{r=1}^{min(|relevant|, k)} 1 / log2(r + 1)``.
* Catalog coverage@k: distinct items appearing in any top-k list / catalog size.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

__all__ = ["recall_at_k", "ndcg_at_k", "catalog_coverage", "ranking_metrics"]


def _prep(ranked: pd.DataFrame, truth: pd.DataFrame, k: int) -> tuple[pd.DataFrame, pd.Series]:
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    t = truth[["user_id", "item_id"]].astype(str).drop_duplicates()
    n_rel = t.groupby("user_id", sort=False).size()
    top = ranked.loc[ranked["rank"] <= k, ["user_id", "rank", "item_id"]].astype({"user_id": str, "item_id": str})
    top = top.sort_values("rank", kind="stable").drop_duplicates(["user_id", "item_id"])
    hits = top.merge(t, on=["user_id", "item_id"], how="inner")
    return hits, n_rel


def recall_at_k(ranked: pd.DataFrame, truth: pd.DataFrame, k: int) -> float:
    """Mean over users with >= 1 relevant item of ``hits in top-k / |relevant|`` (NaN if no such user)."""
    hits, n_rel = _prep(ranked, truth, k)
    if n_rel.empty:
        return float("nan")
    n_hit = hits.groupby("user_id", sort=False).size().reindex(n_rel.index, fill_value=0)
    return float((n_hit / n_rel).mean())


def ndcg_at_k(ranked: pd.DataFrame, truth: pd.DataFrame, k: int) -> float:
    """Mean binary-relevance NDCG@k over users with >= 1 relevant item (NaN if no such user)."""
    hits, n_rel = _prep(ranked, truth, k)
    if n_rel.empty:
        return float("nan")
    gain = 1.0 / np.log2(hits["rank"].to_numpy(dtype=np.float64) + 1.0)
    dcg = pd.Series(gain, index=hits["user_id"].to_numpy()).groupby(level=0, sort=False).sum()
    dcg = dcg.reindex(n_rel.index, fill_value=0.0)
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64)))  # ideal[j] = IDCG with j+1 relevant
    idcg = ideal[np.minimum(n_rel.to_numpy(), k) - 1]
    return float((dcg.to_numpy() / idcg).mean())


def catalog_coverage(ranked: pd.DataFrame, n_catalog: int, k: int) -> float:
    """Distinct items in all top-k lists / ``n_catalog``."""
    if n_catalog <= 0:
        raise ValueError("n_catalog must be positive")
    return float(ranked.loc[ranked["rank"] <= k, "item_id"].nunique() / n_catalog)


def ranking_metrics(
    ranked: pd.DataFrame, truth: pd.DataFrame, n_catalog: int, ks: Iterable[int] = (10, 20)
) -> dict[str, float]:
    """``recall_at_{k}``, ``ndcg_at_{k}`` for each k, ``coverage`` (at the largest k) and ``n_users`` evaluated."""
    ks = sorted({int(k) for k in ks})
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall_at_{k}"] = recall_at_k(ranked, truth, k)
        out[f"ndcg_at_{k}"] = ndcg_at_k(ranked, truth, k)
    out["coverage"] = catalog_coverage(ranked, n_catalog, ks[-1])
    out["n_users"] = int(truth["user_id"].astype(str).nunique())
    return out
