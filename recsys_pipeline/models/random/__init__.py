"""Random: uniform scores, a floor for any metric (deterministic given ``seed``)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recsys_pipeline.models.base import Recommender

if TYPE_CHECKING:
    from recsys_pipeline.content.features import ItemFeatures

__all__ = ["RandomRecommender"]


class RandomRecommender(Recommender):
    """Uniform random scores in ``[0, 1)``: a (user, item) pair gets the same score on every call, in every
    process (a generator per user seeded by ``seed`` and the CRC-32 of the user id)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def fit(self, interactions: pd.DataFrame, features: ItemFeatures | None = None) -> RandomRecommender:
        catalog = (
            list(features.item_ids) if features is not None else sorted(interactions["item_id"].astype(str).unique())
        )
        self._remember(catalog, interactions)
        self._columns = pd.Index(self.item_ids, dtype=object)
        return self

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        cols = self._columns.get_indexer(pd.Index([str(i) for i in item_ids], dtype=object))
        if (cols < 0).any():
            raise ValueError(f"{int((cols < 0).sum())} item ids are not in the catalog")
        rows = [
            np.random.default_rng([self.seed, zlib.crc32(str(u).encode())]).random(len(self._columns), dtype=np.float32)
            for u in user_ids
        ]
        return np.stack(rows)[:, cols] if rows else np.zeros((0, len(cols)), np.float32)
