"""Popularity: every item scored by how many distinct users interacted with it (the same list for everyone).

The one popularity definition of the product: the baseline in evaluation, the reference of the blocking check
``model_beats_popularity``, and the serving fallback for a user without history (the ``items`` snapshot).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recsys_pipeline.models.base import Recommender

if TYPE_CHECKING:
    from recsys_pipeline.content.features import ItemFeatures

__all__ = ["PopularityRecommender"]


class PopularityRecommender(Recommender):
    """Score of an item = distinct users with an interaction in the fit data (0 for the others); ties rank in
    catalog order.

    ``fit(interactions, features=None)``: the catalog is ``features.item_ids`` when given, else the interacted
    items (sorted).
    """

    def __init__(self) -> None:
        self._scores: pd.Series | None = None

    def fit(self, interactions: pd.DataFrame, features: ItemFeatures | None = None) -> PopularityRecommender:
        pairs = interactions[["user_id", "item_id"]].astype(str).drop_duplicates()
        counts = pairs["item_id"].value_counts()
        catalog = list(features.item_ids) if features is not None else sorted(counts.index)
        self._scores = counts.reindex(pd.Index(catalog, dtype=object)).fillna(0).astype(np.float32)
        self._remember(catalog, pairs)
        return self

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        if self._scores is None:
            raise RuntimeError("PopularityRecommender.score called before fit")
        index = self._scores.index.get_indexer(pd.Index([str(i) for i in item_ids], dtype=object))
        if (index < 0).any():
            raise ValueError(
                f"{int((index < 0).sum())} item ids are not in the catalog, e.g. "
                f"{[str(i) for i, j in zip(item_ids, index) if j < 0][:5]}"
            )
        row = self._scores.to_numpy()[index]
        return np.broadcast_to(row, (len(user_ids), len(row))).copy()

    def ranking(self) -> pd.DataFrame:
        """Every catalog item, most popular first: ``item_id`` (str), ``users`` (int64), ``rank`` (int64, 1..n)."""
        if self._scores is None:
            raise RuntimeError("PopularityRecommender.ranking called before fit")
        ids, _ = self.recommend(["_"], k=len(self.item_ids), exclude_seen=False)[["item_id", "score"]].T.values
        users = self._scores.reindex(pd.Index(ids, dtype=object)).to_numpy().astype(np.int64)
        return pd.DataFrame(
            {"item_id": ids.astype(object), "users": users, "rank": np.arange(1, len(ids) + 1, dtype=np.int64)}
        )

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        self._save_common(d, {"catalog": self.item_ids})
        self._scores.rename("users").to_frame().reset_index(names="item_id").to_parquet(d / "scores.parquet")

    @classmethod
    def load(cls, directory: str | Path) -> PopularityRecommender:
        d = Path(directory)
        meta, seen = cls._load_common(d)
        model = cls()
        scores = pd.read_parquet(d / "scores.parquet")
        model._scores = pd.Series(scores["users"].to_numpy(np.float32), index=pd.Index(scores["item_id"], dtype=object))
        model.item_ids, model.seen = list(meta["catalog"]), seen
        return model
