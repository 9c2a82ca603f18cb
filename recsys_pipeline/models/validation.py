"""How a model carves its early-stopping validation split from its training data.

The evaluation protocols (``evaluation.protocols``) build their train/test splits from these same functions, so a
model's validation can be carved the same way as the protocol it is judged by.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["VALIDATION_SPLITS", "split_last_fraction_per_user", "split_random_fraction_per_user", "split_per_user"]

# How a per-user holdout picks its rows: "last" (the latest by timestamp) or "random" (seeded, stratified by user)
VALIDATION_SPLITS = ("last", "random")


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


def split_random_fraction_per_user(
    interactions: pd.DataFrame, fraction: float, min_interactions: int, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user with ``>= min_interactions`` rows, hold out ``max(1, floor(n * fraction))`` rows drawn uniformly at
    random (a per-user stratified random split, as Microsoft Recommenders' ``python_stratified_split``).

    The draw depends on ``seed`` and on the rows, not on their order: rows are first sorted stably by
    ``(user_id, timestamp, item_id)``. Returns ``(train, held_out)``, each in that sorted order; with
    ``fraction <= 0`` (or no rows), ``(interactions, empty)`` unchanged, as :func:`split_last_fraction_per_user`.

    Raises:
        ValueError: ``fraction >= 1``.
    """
    if fraction <= 0 or interactions.empty:
        return interactions, interactions.iloc[:0]
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    df = interactions.reset_index(drop=True)
    df = df.loc[df.sort_values(["user_id", "timestamp", "item_id"], kind="stable").index].reset_index(drop=True)
    keys = np.random.default_rng(seed).random(len(df))
    # rank of each row's random key within its user: the n_hold smallest keys are held out
    order = np.lexsort((keys, pd.factorize(df["user_id"])[0]))
    rank = np.empty(len(df), dtype=np.int64)
    g = df.groupby("user_id", sort=False)
    rank[order] = df.iloc[order].groupby("user_id", sort=False).cumcount().to_numpy()
    n = g["item_id"].transform("size").to_numpy()
    n_hold = np.where(n >= min_interactions, np.maximum(1, np.floor(n * fraction)).astype(np.int64), 0)
    hold = rank < n_hold
    return df[~hold], df[hold]


def split_per_user(
    interactions: pd.DataFrame, fraction: float, min_interactions: int, how: str = "last", seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`split_last_fraction_per_user` (``how="last"``) or :func:`split_random_fraction_per_user`
    (``how="random"``, ``seed``). Returns ``(train, held_out)``.

    Raises:
        ValueError: ``how`` not in :data:`VALIDATION_SPLITS`, or ``fraction >= 1``.
    """
    if how == "last":
        return split_last_fraction_per_user(interactions, fraction, min_interactions)
    if how == "random":
        return split_random_fraction_per_user(interactions, fraction, min_interactions, seed)
    raise ValueError(f"unknown validation split {how!r}; choose from {VALIDATION_SPLITS}")
