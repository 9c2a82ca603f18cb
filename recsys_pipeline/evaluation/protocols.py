"""Evaluation protocols: how interactions are split into train and test, and the settings that choose them.

- ``user_last_fraction``: per user (by time) the latest ``holdout_fraction`` is test (users with < 5 stay train).
- ``user_random_fraction``: per user a seeded random ``random_fraction`` is test (a stratified random split, as
  Microsoft Recommenders' ``python_stratified_split``; users with < 5 stay train).
- ``item_cold_start``: a seeded random ``cold_fraction`` of items moves to test with all its interactions; their
  users rank only those held-out items (item cold start).
- ``item_cold_mixed``: the same split (the same model serves both), but the held-out items are ranked among the
  whole catalogue, as a new item is served: how far new items reach into lists full of known ones.
- ``temporal``: a global cutoff; test keeps the users with train history.
- ``user_cold_start`` (:func:`split_user_cold_start`, not a ``model_evaluation`` protocol): a seeded random
  fraction of users is held out entirely; at request time each reveals their first ``n`` interactions and the
  model ranks the rest (new users served from their first clicks, without retraining).

Example::

    split = make_split(interactions, "user_last_fraction", EvaluationSettings())
    split.describe()
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from recsys_pipeline.models.validation import split_last_fraction_per_user, split_random_fraction_per_user

__all__ = [
    "PROTOCOLS",
    "EvaluationSettings",
    "Split",
    "make_split",
    "split_user_last_fraction",
    "split_user_random_fraction",
    "validation_split",
    "split_temporal",
    "split_item_cold_start",
    "split_user_cold_start",
    "UserColdStart",
    "USER_COLD_START_REVEALED",
    "split_family",
    "k_core",
    "view_catalog",
    "evaluation_fingerprint",
]

PROTOCOLS = ("user_last_fraction", "user_random_fraction", "item_cold_start", "item_cold_mixed", "temporal")
# Protocols that are another view of one split: evaluated on the same split with the same fitted model.
_SAME_SPLIT_AS = {"item_cold_mixed": "item_cold_start"}
# How a model evaluated on a protocol carves its early-stopping validation split from the train part
# (``ModelConfig.val_split``): the same way as the protocol carves its test part, so early stopping optimises
# what the protocol measures.
_VALIDATION_OF = {
    "user_last_fraction": "last",
    "user_random_fraction": "random",
    "item_cold_start": "last",
    "item_cold_mixed": "last",
}


@dataclass(frozen=True)
class EvaluationSettings:
    """Which protocols are evaluated and how (the defaults of ``model_evaluation``, written once).

    Attributes:
        protocols: names from :data:`PROTOCOLS`.
        holdout_fraction: ``user_last_fraction``: per-user latest fraction held out.
        random_fraction: ``user_random_fraction``: per-user random fraction held out (drawn with ``seed``).
        cold_fraction: ``item_cold_start``: fraction of items held out.
        temporal_cutoff: ``temporal``: naive UTC datetime; train is before it, test from it on.
        k: list length (Recall@k, NDCG@k; Recall@10 and NDCG@10 are always computed too).
        seed: split seed.
        k_core: the data view: ``0`` every interaction; ``n`` the ``n``-core (:func:`k_core`: users and items with
            at least ``n`` interactions, iterated), as dense-data benchmarks filter (e.g. ``10``).

    Raises:
        ValueError: an unknown protocol, a fraction outside (0, 1), ``k < 1``, or ``temporal`` without a cutoff.
    """

    protocols: tuple[str, ...] = ("user_last_fraction", "item_cold_start", "item_cold_mixed")
    holdout_fraction: float = 0.2
    random_fraction: float = 0.25
    cold_fraction: float = 0.2
    temporal_cutoff: datetime | None = None
    k: int = 20
    seed: int = 0
    k_core: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocols", tuple(self.protocols))
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise ValueError(f"unknown or no protocols {list(unknown)}; choose from {PROTOCOLS}")
        for name in ("holdout_fraction", "random_fraction", "cold_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.k_core < 0:
            raise ValueError(f"k_core must be >= 0 (0 = every interaction), got {self.k_core}")
        if "temporal" in self.protocols and self.temporal_cutoff is None:
            raise ValueError("protocol 'temporal' needs temporal_cutoff (a UTC date)")


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


def split_user_last_fraction(interactions: pd.DataFrame, fraction: float = 0.2, min_interactions: int = 5) -> Split:
    """Per user (by timestamp) the last ``fraction`` is test; users with < ``min_interactions`` stay all-train."""
    train, test = split_last_fraction_per_user(interactions, fraction, min_interactions)
    return Split(train.reset_index(drop=True), test.reset_index(drop=True))


def split_user_random_fraction(
    interactions: pd.DataFrame, fraction: float = 0.25, seed: int = 0, min_interactions: int = 5
) -> Split:
    """Per user a random ``fraction`` (``seed``) is test; users with < ``min_interactions`` stay all-train."""
    train, test = split_random_fraction_per_user(interactions, fraction, min_interactions, seed)
    return Split(train.reset_index(drop=True), test.reset_index(drop=True))


def validation_split(protocol: str) -> str:
    """The ``ModelConfig.val_split`` (``"last"`` or ``"random"``) of a model evaluated on ``protocol``: its
    validation rows are carved from the train part as the protocol carves its test rows. ``item_cold_start`` (held-out
    items) and ``temporal`` (one global cutoff) have no per-user equivalent here and keep the default ``"last"``.

    Raises:
        ValueError: unknown protocol.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    return _VALIDATION_OF.get(protocol, "last")


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


USER_COLD_START_REVEALED = (1, 3, 5, 10)  # interactions a held-out user reveals at request time


@dataclass
class UserColdStart:
    """The ``user_cold_start`` split: ``train`` (the other users' interactions) and ``held_out`` (every
    interaction of the held-out users, oldest first; ties by item id)."""

    train: pd.DataFrame
    held_out: pd.DataFrame

    def reveal(self, n: int) -> tuple[pd.DataFrame, Split]:
        """Each held-out user's first ``n`` interactions, and the split that ranks the rest.

        Returns:
            ``(revealed, split)``: ``revealed`` the first ``n`` rows per held-out user (what a model folds in);
            ``split.train`` = ``train`` + ``revealed`` (their items are excluded from the lists), ``split.test``
            = the held-out users' later rows. A user with ``n`` or fewer interactions has no test rows.

        Raises:
            ValueError: ``n < 1``.
        """
        if n < 1:
            raise ValueError(f"reveal needs n >= 1, got {n}")
        position = self.held_out.groupby("user_id", sort=False).cumcount()
        revealed = self.held_out[position < n].reset_index(drop=True)
        test = self.held_out[position >= n].reset_index(drop=True)
        return revealed, Split(pd.concat([self.train, revealed], ignore_index=True), test)


def split_user_cold_start(interactions: pd.DataFrame, fraction: float = 0.1, seed: int = 0) -> UserColdStart:
    """Hold out a random ``fraction`` of users (``seed``) with all their interactions (new users).

    Raises:
        ValueError: ``fraction`` outside (0, 1), or no user left on either side.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    users = np.sort(interactions["user_id"].astype(str).unique())
    n_out = int(round(fraction * len(users)))
    if n_out < 1 or n_out >= len(users):
        raise ValueError(f"holding out {n_out} of {len(users)} users leaves one side empty")
    out = set(np.random.default_rng(seed).choice(users, size=n_out, replace=False).tolist())
    is_out = interactions["user_id"].astype(str).isin(out)
    held = interactions[is_out].sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    return UserColdStart(interactions[~is_out].reset_index(drop=True), held.reset_index(drop=True))


def k_core(interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k``-core of ``interactions``: drop the users with fewer than ``k`` distinct items and the items with
    fewer than ``k`` distinct users, again until none is left to drop (each pass can push others below ``k``), as
    dense-data benchmarks filter (e.g. the 10-core of MovieLens; He & McAuley 2016, "VBPR", use 5-cores).

    Returns:
        the kept rows (same columns, original order, new index); empty when nothing survives. ``k <= 1``: all rows.
    """
    kept = interactions
    while k > 1 and len(kept):
        pairs = kept[["user_id", "item_id"]].drop_duplicates()
        users = pairs["user_id"].value_counts()
        items = pairs["item_id"].value_counts()
        ok = kept["user_id"].isin(users.index[users >= k]) & kept["item_id"].isin(items.index[items >= k])
        if ok.all():
            break
        kept = kept[ok]
    return kept.reset_index(drop=True)


def view_catalog(features, interactions: pd.DataFrame, k: int):
    """The catalog of the data view ``k``: ``features`` (``ItemFeatures``) restricted to the items of the ``k``-core
    of ``interactions`` (catalog order kept); every item when ``k <= 1``.

    A view's item set is its core's, as dense-data benchmarks define it: an item the view dropped is not a
    candidate, and a model that ranks items without interactions from their content (as new items) would otherwise
    fill lists with items the view's test part never holds.
    """
    if k <= 1:
        return features
    kept = set(k_core(interactions, k)["item_id"].astype(str))
    return features.subset([i for i in features.item_ids if i in kept])


def split_family(protocol: str) -> str:
    """The protocol whose split (and fitted model) ``protocol`` shares: ``item_cold_mixed`` -> ``item_cold_start``;
    any other protocol is its own."""
    return _SAME_SPLIT_AS.get(protocol, protocol)


def make_split(interactions: pd.DataFrame, protocol: str, settings: EvaluationSettings) -> Split:
    """The train/test split of ``protocol`` under ``settings`` (``item_cold_mixed``: ``item_cold_start``'s), on the
    data view ``settings.k_core``.

    Raises:
        ValueError: unknown protocol, or ``temporal`` without a cutoff.
    """
    protocol = split_family(protocol)
    if settings.k_core:
        interactions = k_core(interactions, settings.k_core)
    if protocol == "user_last_fraction":
        return split_user_last_fraction(interactions, fraction=settings.holdout_fraction)
    if protocol == "user_random_fraction":
        return split_user_random_fraction(interactions, fraction=settings.random_fraction, seed=settings.seed)
    if protocol == "item_cold_start":
        return split_item_cold_start(interactions, fraction=settings.cold_fraction, seed=settings.seed)
    if protocol == "temporal":
        if settings.temporal_cutoff is None:
            raise ValueError("protocol 'temporal' needs temporal_cutoff (a UTC date)")
        return split_temporal(interactions, settings.temporal_cutoff)
    raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")


def evaluation_fingerprint(interactions: pd.DataFrame, features, settings: EvaluationSettings) -> str:
    """sha256 (hex, 16 characters) of what an evaluation's figures depend on besides the model config: the
    interactions (``user_id, item_id, timestamp``, in any row order), the item features (ids, vectors, presence,
    genres, years) and the protocol ``settings``. Equal fingerprints mean the same splits and inputs, so the same
    config, seed and code give the same figures: exactly with one torch thread per fit (the evaluation's fits on 2
    cores), up to CPU summation order with more (measured: scores within 0.004, the same ranks)."""
    import hashlib

    h = hashlib.sha256(repr(settings).encode())
    frame = interactions[["user_id", "item_id", "timestamp"]].astype({"user_id": str, "item_id": str})
    rows = np.sort(pd.util.hash_pandas_object(frame, index=False).to_numpy())
    h.update(rows.tobytes())
    h.update("\x1f".join(features.item_ids).encode())
    for name, vectors in features.modalities.items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(vectors).tobytes())
    for array in (features.present, features.genres, features.year):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]
