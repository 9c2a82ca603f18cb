"""The item-item head of the two-tower recommender: EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse
Data", WWW 2019), a closed-form item-item weight matrix ``B`` that scores a user's unseen items from the set of items
they interacted with (order ignored).

It is the collaborative part that a per-user random holdout asks for: on ml-latest-small's ``user_random_fraction``
split the two-tower model alone reaches NDCG@10 0.31 (no history head), EASE alone 0.39, the blend 0.40
(``benchmarks/results/model_changes.md``, session of 2026-12-07). An item outside the head (a new item, or one
too rarely interacted with) has no column in ``B``; :meth:`ItemItemHead.catalog_map` lets it borrow the columns of
its nearest head items in a content space (a neighbour-based mapping from content to collaborative scores, in the
spirit of Gantner et al., "Learning Attribute-to-Feature Mappings for Cold-Start Recommendations", ICDM 2010), so
that a new item mixed into the whole catalogue is scored on the same scale as the known ones.

``B = I - P diag(1 / diag(P))`` with ``P = (XᵀX + λI)⁻¹`` and ``X`` the binary ``(n_users, n_items)`` train
matrix (Steck 2019, eq. 8), i.e. ``B_ij = -P_ij / P_jj`` and ``B_jj = 0``. Each column keeps its ``neighbours``
largest weights by magnitude (a sparse matrix to store and serve; the dense one is ``n_items²`` floats).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_pipeline.models.base import SeenItems

__all__ = ["ItemItemHead"]


class ItemItemHead:
    """EASE item-item weights over ``item_ids`` (the most-interacted trained items, at most ``max_items``).

    Args:
        item_ids: ``n`` item ids, the rows and columns of ``weights``.
        weights: ``(n, n)`` float32 CSR; ``weights[i, j]``: how much having interacted with item ``i`` adds to item
            ``j``'s score.
    """

    FILE = "item_item.npz"
    IDS_FILE = "item_item_ids.json"

    def __init__(self, item_ids: Sequence[str], weights: sp.csr_matrix) -> None:
        self.item_ids = pd.Index([str(i) for i in item_ids], dtype=object)
        if weights.shape != (len(self.item_ids), len(self.item_ids)):
            raise ValueError(f"weights {weights.shape} do not match {len(self.item_ids)} item ids")
        self.weights = weights.tocsr().astype(np.float32)

    @classmethod
    def fit(
        cls,
        interactions: pd.DataFrame,
        l2: float = 500.0,
        neighbours: int = 200,
        max_items: int = 5_000,
    ) -> ItemItemHead:
        """Fit EASE on ``interactions`` (``user_id, item_id``; repeats count once).

        Args:
            l2: λ of the ridge penalty (Steck 2019 used 200-1000 on MovieLens-20M-sized data).
            neighbours: weights kept per column (largest by magnitude).
            max_items: only the ``max_items`` items with the most distinct users get weights: memory and time are
                ``O(n²)`` and ``O(n³)``: the fit holds about 7 dense ``(n, n)`` float32 copies at its peak (5,000 items:
                about 0.7 GB; 20,000: about 11 GB); the others score 0.

        Raises:
            ValueError: empty interactions, or ``l2 <= 0`` / ``neighbours < 1`` / ``max_items < 1``.
        """
        from scipy.linalg import lapack

        if len(interactions) == 0:
            raise ValueError("ItemItemHead.fit: no interactions")
        if l2 <= 0 or neighbours < 1 or max_items < 1:
            raise ValueError(f"need l2 > 0, neighbours >= 1, max_items >= 1; got {l2}, {neighbours}, {max_items}")
        pairs = interactions[["user_id", "item_id"]].astype(str).drop_duplicates()
        counts = pairs["item_id"].value_counts(sort=False)
        # most distinct users first, ties by id: the same items whatever the row order
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_items]
        item_ids = pd.Index(sorted(item for item, _ in ranked), dtype=object)
        pairs = pairs[pairs["item_id"].isin(item_ids)]
        user_codes, _ = pd.factorize(pairs["user_id"], sort=True)
        cols = item_ids.get_indexer(pairs["item_id"])
        x = sp.csr_matrix(
            (np.ones(len(cols), np.float32), (user_codes, cols)), shape=(int(user_codes.max()) + 1, len(item_ids))
        )
        gram = (x.T @ x).toarray()  # float32: exact counts below 2**24, and λ keeps it well conditioned
        gram[np.diag_indices_from(gram)] += l2
        # P = gram⁻¹ through its Cholesky factor (symmetric positive definite: a third of an LU inverse's work;
        # float32 halves it again: 11 s instead of 21 s for 9,000 items on 2 busy cores)
        factor, info = lapack.spotrf(gram, lower=False, overwrite_a=True)
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE: the Gram matrix is not positive definite (spotrf info {info})")
        inverse, info = lapack.spotri(factor, lower=False, overwrite_c=True)
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE: inverting the Gram matrix failed (spotri info {info})")
        inverse = np.triu(inverse) + np.triu(inverse, 1).T  # dpotri writes the upper triangle only
        weights = inverse / -np.diag(inverse)[None, :]
        np.fill_diagonal(weights, 0.0)
        return cls(item_ids, _keep_largest(weights, neighbours))

    def scores(self, seen: SeenItems, user_ids: Sequence[str]) -> np.ndarray:
        """``(len(user_ids), n)`` float32 item-item scores of this head's items from each user's ``seen`` items; a
        user with none of them scores 0 everywhere."""
        rows, cols = seen.mask_positions([str(u) for u in user_ids], self.item_ids)
        x = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(user_ids), len(self.item_ids)))
        return np.asarray((x @ self.weights).todense(), dtype=np.float32)

    def catalog_map(self, catalog_ids: Sequence[str], content: np.ndarray, neighbours: int) -> sp.csc_matrix:
        """How each catalog item's item-item score is read from the head's columns: ``scores @ map``.

        A head item reads its own column. Another item reads the cosine-weighted mean of the columns of its
        ``neighbours`` nearest head items in ``content`` (negative similarities count 0; weights sum to 1, or the
        item scores 0 when no neighbour is similar); ``neighbours = 0``: it scores 0.

        Args:
            catalog_ids: ``n_catalog`` item ids.
            content: ``(n_catalog, d)`` float32 content vectors of the catalog items (row order = ``catalog_ids``),
                e.g. the item tower's vectors with the id hidden.
            neighbours: head items borrowed from per item outside the head (``>= 0``).

        Returns:
            ``(n_heads_items, n_catalog)`` float32 CSC matrix.

        Raises:
            ValueError: ``content`` rows differ from ``catalog_ids``, or ``neighbours < 0``.
        """
        catalog = pd.Index([str(i) for i in catalog_ids], dtype=object)
        content = np.asarray(content, dtype=np.float32)
        if content.ndim != 2 or content.shape[0] != len(catalog):
            raise ValueError(f"content {content.shape} does not match {len(catalog)} catalog items")
        if neighbours < 0:
            raise ValueError(f"neighbours must be >= 0, got {neighbours}")
        head_cols = self.item_ids.get_indexer(catalog)  # -1: outside the head
        inside = np.flatnonzero(head_cols >= 0)
        outside = np.flatnonzero(head_cols < 0)
        rows, cols, vals = [head_cols[inside]], [inside], [np.ones(len(inside), np.float32)]
        k = min(neighbours, len(inside))
        if k > 0 and len(outside):
            unit = content / np.maximum(np.linalg.norm(content, axis=1, keepdims=True), 1e-12)
            keys = unit[inside]  # head items present in this catalog, in catalog order
            for start in range(0, len(outside), 4096):  # bounded memory: 4,096 x n_head similarities at a time
                part = outside[start : start + 4096]
                sim = unit[part] @ keys.T
                top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
                weight = np.maximum(np.take_along_axis(sim, top, axis=1), 0.0)
                total = weight.sum(axis=1, keepdims=True)
                weight = np.divide(weight, total, out=np.zeros_like(weight), where=total > 0)
                rows.append(head_cols[inside[top]].ravel())
                cols.append(np.repeat(part, k))
                vals.append(weight.ravel().astype(np.float32))
        return sp.csc_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(len(self.item_ids), len(catalog)),
            dtype=np.float32,
        )

    def save(self, directory: Path) -> None:
        """Write ``item_item.npz`` (``scipy.sparse.save_npz``, no pickle) and ``item_item_ids.json``."""
        import json

        sp.save_npz(directory / self.FILE, self.weights)
        (directory / self.IDS_FILE).write_text(json.dumps(list(self.item_ids)))

    @classmethod
    def load(cls, directory: Path) -> ItemItemHead | None:
        """What :meth:`save` wrote, or ``None`` where the model has no item-item head."""
        import json

        if not (directory / cls.FILE).exists():
            return None
        return cls(json.loads((directory / cls.IDS_FILE).read_text()), sp.load_npz(directory / cls.FILE))


def _keep_largest(weights: np.ndarray, k: int) -> sp.csr_matrix:
    """``weights`` with all but each column's ``k`` largest-magnitude entries set to zero, as CSR."""
    n = weights.shape[0]
    if k >= n:
        return sp.csr_matrix(weights)
    rows = np.argpartition(-np.abs(weights), k - 1, axis=0)[:k]  # (k, n): the kept rows of each column
    cols = np.broadcast_to(np.arange(n), rows.shape)
    values = weights[rows, cols]
    return sp.csr_matrix((values.ravel(), (rows.ravel(), cols.ravel())), shape=weights.shape)
