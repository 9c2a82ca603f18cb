"""The one ``Recommender`` contract (Cornac-style) and the one top-k routine.

Every model honours :class:`Recommender`: ``fit(interactions, features) -> self``, ``score(user_ids, item_ids) ->
(n_users, n_items) float32``, ``recommend(user_ids, k) -> ranked ids + scores`` and ``save(dir)`` / ``load(dir)``.
Evaluation, the ``recommendations`` asset, the MLflow pyfunc and ``recsys serve`` all rank through
:meth:`Recommender.recommend`, which ranks with :func:`top_k`: what is measured is what is served.

Example::

    >>> import pandas as pd
    >>> from recsys_pipeline.models.popularity import PopularityRecommender
    >>> data = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "a"]})
    >>> PopularityRecommender().fit(data).recommend(["u2"], k=2)[["user_id", "rank", "item_id"]].values.tolist()
    [['u2', 1, 'b']]
"""

from __future__ import annotations

import abc
import copy
import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from typing import Self

    from recsys_pipeline.content.features import ItemFeatures

__all__ = ["Recommender", "SeenItems", "top_k", "RANKED_COLUMNS"]

RANKED_COLUMNS = ["user_id", "rank", "item_id", "score"]


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row, best first; equal scores are ordered by column (lower first).

    Args:
        scores: ``(n_rows, n_cols)`` float scores; ``-inf`` marks an excluded entry (it still sorts last).
        k: list length; at most ``n_cols``.

    Returns:
        ``(columns (n_rows, k) int64, values (n_rows, k) float32)``. Selection is exact and deterministic: a
        column is in row ``r``'s top-k iff fewer than ``k`` columns beat it in ``(-score, column)`` order.
    """
    scores = np.asarray(scores, dtype=np.float32)
    n_rows, n_cols = scores.shape
    k = max(min(int(k), n_cols), 0)
    if k == 0 or n_rows == 0:
        return np.zeros((n_rows, k), np.int64), np.zeros((n_rows, k), np.float32)
    if k < n_cols:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
        # a tie at the boundary: argpartition picks among equal scores arbitrarily; redo those rows by column order
        ties = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k)
        for r in ties:
            row = scores[r]
            above = np.flatnonzero(row > kth[r])
            equal = np.flatnonzero(row == kth[r])[: k - len(above)]
            part[r] = np.concatenate([above, equal])
    else:
        part = np.broadcast_to(np.arange(n_cols), (n_rows, n_cols)).copy()
    values = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -values), axis=1)
    columns = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return columns, np.take_along_axis(values, order, axis=1)


class SeenItems:
    """Which items each user interacted with, as integer CSR (compact at 10 M events: no string pairs kept).

    Args:
        pairs: ``user_id, item_id`` rows (duplicates ignored; ids are compared as strings).
    """

    def __init__(self, pairs: pd.DataFrame):
        users = pairs["user_id"].astype(str).to_numpy()
        items = pairs["item_id"].astype(str).to_numpy()
        user_codes, self.users = pd.factorize(users, sort=True)
        item_codes, self.items = pd.factorize(items, sort=True)
        order = np.lexsort((item_codes, user_codes))
        u, i = user_codes[order], item_codes[order]
        keep = np.ones(len(u), dtype=bool)
        keep[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
        u, i = u[keep], i[keep]
        self.indptr = np.zeros(len(self.users) + 1, dtype=np.int64)
        np.add.at(self.indptr, u + 1, 1)
        self.indptr = np.cumsum(self.indptr)
        self.indices = i.astype(np.int32)
        self.users = pd.Index(self.users, dtype=object)
        self.items = pd.Index(self.items, dtype=object)
        self._extra: SeenItems | None = None  # with_pairs: a small overlay on these arrays
        self._columns_cache: dict = {}  # shared with the overlays (copy.copy): see _columns

    def with_pairs(self, pairs: pd.DataFrame) -> SeenItems:
        """These pairs and ``pairs`` (``user_id, item_id``), without rebuilding the arrays: a request-time overlay
        (e.g. a visitor's items) costs ``O(len(pairs))``, not ``O(len(self))``."""
        combined = copy.copy(self)
        combined._extra = SeenItems(pairs if self._extra is None else pd.concat([self._extra.pairs(), pairs]))
        return combined

    def __len__(self) -> int:
        return len(self.pairs()) if self._extra is not None else len(self.indices)

    def pairs(self) -> pd.DataFrame:
        """The distinct ``user_id, item_id`` pairs (str)."""
        counts = np.diff(self.indptr)
        own = pd.DataFrame(
            {"user_id": np.repeat(self.users.to_numpy(), counts), "item_id": self.items.to_numpy()[self.indices]}
        )
        if self._extra is None:
            return own
        return pd.concat([own, self._extra.pairs()], ignore_index=True).drop_duplicates(ignore_index=True)

    def mask_positions(self, user_ids: Sequence[str], candidates: pd.Index) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` of the seen (user, candidate) entries of a ``(len(user_ids), len(candidates))`` matrix,
        each entry once."""
        rows, cols = self._own_positions(user_ids, candidates)
        if self._extra is None:
            return rows, cols
        extra_rows, extra_cols = self._extra.mask_positions(user_ids, candidates)
        flat = np.unique(np.concatenate([rows, extra_rows]) * len(candidates) + np.concatenate([cols, extra_cols]))
        return flat // len(candidates), flat % len(candidates)

    def _own_positions(self, user_ids: Sequence[str], candidates: pd.Index) -> tuple[np.ndarray, np.ndarray]:
        user_rows = self.users.get_indexer(pd.Index(user_ids, dtype=object))
        item_to_col = self._columns(candidates)
        ok = user_rows >= 0
        starts, ends = self.indptr[user_rows[ok]], self.indptr[user_rows[ok] + 1]
        counts = ends - starts
        rows = np.repeat(np.flatnonzero(ok), counts)
        flat = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
        cols = item_to_col[self.indices[flat]]
        hit = cols >= 0
        return rows[hit], cols[hit]

    def _columns(self, candidates: pd.Index) -> np.ndarray:
        """``candidates.get_indexer(self.items)``: once per vocabulary, not per pair, and once per candidates
        object (a model's fixed catalog or head index is asked at every request)."""
        cache = self._columns_cache
        hit = cache.get(id(candidates))
        if hit is None or hit[0] is not candidates:
            if len(cache) >= 4:
                cache.clear()
            hit = cache[id(candidates)] = (candidates, candidates.get_indexer(self.items))
        return hit[1]

    def save(self, path: Path) -> None:
        """Write the pairs as Parquet."""
        self.pairs().to_parquet(path, index=False)

    @classmethod
    def load(cls, path: Path) -> SeenItems:
        return cls(pd.read_parquet(path))


class Recommender(abc.ABC):
    """Contract of every model: fit on interactions (and item features), score, recommend top-k, save / load.

    After :meth:`fit`, ``item_ids`` is the catalog the model ranks (``features.item_ids`` when features are
    given) and ``seen`` the fit interactions, excluded by :meth:`recommend` by default. A user the model has no
    representation for must get a defined fallback score (e.g. popularity), never an error.
    """

    item_ids: list[str]
    seen: SeenItems

    @abc.abstractmethod
    def fit(self, interactions: pd.DataFrame, features: ItemFeatures | None = None) -> Self:
        """Learn from ``interactions`` (``user_id, item_id[, timestamp, value]``; every row a positive).

        Raises:
            ValueError: empty or inconsistent inputs (the message says which).
        """

    @abc.abstractmethod
    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """``(len(user_ids), len(item_ids))`` float32 scores, higher = more relevant.

        Raises:
            ValueError: an item id is not in the model's catalog.
        """

    @property
    def known_users(self) -> Collection[str]:
        """Users with a learned, personal representation (empty for a model that is the same for everyone)."""
        return ()

    def _remember(self, catalog: Sequence[str], interactions: pd.DataFrame) -> None:
        """Set ``item_ids`` and ``seen`` (call at the end of :meth:`fit`)."""
        self.item_ids = [str(i) for i in catalog]
        self.seen = SeenItems(interactions[["user_id", "item_id"]])

    def _catalog_index(self) -> pd.Index:
        """``pd.Index(self.item_ids)``, built once per catalog list (recommend ranks it at every call)."""
        cached = self.__dict__.get("_catalog_index_cache")
        if cached is None or cached[0] is not self.item_ids:
            cached = self.__dict__["_catalog_index_cache"] = (self.item_ids, pd.Index(self.item_ids, dtype=object))
        return cached[1]

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        exclude_seen: bool = True,
        exclude: pd.DataFrame | None = None,
        candidates: Sequence[str] | None = None,
        user_batch: int = 1024,
    ) -> pd.DataFrame:
        """Top-``k`` items per user, ranked by :meth:`score` through :func:`top_k` (ties: catalog order).

        Args:
            user_ids: users to rank for (duplicates are ranked once; order kept).
            k: list length; a user with fewer than ``k`` candidates left gets a shorter list.
            exclude_seen: leave out the items each user interacted with in the fit data.
            exclude: more ``user_id, item_id`` pairs to leave out (e.g. interactions newer than the model).
            candidates: rank only these items (default: the whole catalog, ``item_ids``).
            user_batch: users scored at once (memory: ``user_batch x n_candidates`` float32).

        Returns:
            ``user_id`` (str), ``rank`` (int64, 1 = best), ``item_id`` (str), ``score`` (float32), users in input
            order.
        """
        users = list(dict.fromkeys(str(u) for u in user_ids))
        cand = self._catalog_index() if candidates is None else pd.Index([str(i) for i in candidates], dtype=object)
        if not cand.is_unique:
            raise ValueError("candidates must be unique item ids")
        masks = []
        if exclude_seen:
            masks.append(self.seen)
        if exclude is not None and len(exclude):
            masks.append(SeenItems(exclude[["user_id", "item_id"]]))
        cand_list = cand.tolist()
        frames = []
        for start in range(0, len(users), user_batch):
            batch = users[start : start + user_batch]
            scores = np.array(self.score(batch, cand_list), dtype=np.float32)
            if scores.shape != (len(batch), len(cand_list)):
                raise ValueError(f"score returned shape {scores.shape}, expected {(len(batch), len(cand_list))}")
            for seen in masks:
                rows, cols = seen.mask_positions(batch, cand)
                scores[rows, cols] = -np.inf
            cols, values = top_k(scores, k)
            n = cols.shape[1]
            frames.append(
                pd.DataFrame(
                    {
                        "user_id": np.repeat(np.asarray(batch, dtype=object), n),
                        "rank": np.tile(np.arange(1, n + 1, dtype=np.int64), len(batch)),
                        "item_id": cand.to_numpy()[cols.ravel()],
                        "score": values.ravel(),
                    }
                )
            )
        if not frames:
            return pd.DataFrame(
                {
                    "user_id": pd.Series(dtype=object),
                    "rank": pd.Series(dtype=np.int64),
                    "item_id": pd.Series(dtype=object),
                    "score": pd.Series(dtype=np.float32),
                }
            )
        out = pd.concat(frames, ignore_index=True)
        return out[np.isfinite(out["score"].to_numpy())].reset_index(drop=True)

    def save(self, directory: str | Path) -> None:
        """Write the model to ``directory`` (created); :meth:`load` reads it back with identical scores."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        """Read what :meth:`save` wrote."""
        raise NotImplementedError(f"{cls.__name__} cannot be loaded")

    # helpers for subclasses' save/load
    def _save_common(self, directory: Path, meta: dict) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.seen.save(directory / "seen.parquet")
        (directory / "recommender.json").write_text(json.dumps({"class": type(self).__name__, **meta}, indent=2))

    @staticmethod
    def _load_common(directory: Path) -> tuple[dict, SeenItems]:
        meta = json.loads((directory / "recommender.json").read_text())
        return meta, SeenItems.load(directory / "seen.parquet")
