"""Nearest items by content: how an item without collaborative state (a new item) borrows that of similar items."""

from __future__ import annotations

import numpy as np

__all__ = ["content_neighbours"]


def content_neighbours(
    content: np.ndarray, keys: np.ndarray, queries: np.ndarray, k: int, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Each query item's ``k`` nearest key items by cosine similarity of their ``content`` vectors, and the weights
    of a cosine-weighted mean over them.

    Args:
        content: ``(n, d)`` float32 content vectors (e.g. the item tower's vectors with the id hidden).
        keys: ``(n_keys,)`` int64 rows of ``content`` that may be borrowed from.
        queries: ``(n_queries,)`` int64 rows of ``content`` that borrow.
        k: neighbours per query, ``1 <= k``; fewer keys than ``k``: all of them.
        chunk: queries compared at a time (memory: ``chunk x n_keys`` float32 similarities).

    Returns:
        ``(n_queries, k')`` int64 positions into ``keys`` (``k' = min(k, n_keys)``) and ``(n_queries, k')`` float32
        weights: the similarities with negatives set to 0, divided by their sum, so a row sums to 1, or is all 0
        when no key is similar.

    Raises:
        ValueError: ``k < 1``, or ``keys`` / ``queries`` outside ``content``'s rows.
    """
    content = np.asarray(content, dtype=np.float32)
    keys, queries = np.asarray(keys, dtype=np.int64), np.asarray(queries, dtype=np.int64)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for name, rows in (("keys", keys), ("queries", queries)):
        if len(rows) and (rows.min() < 0 or rows.max() >= len(content)):
            raise ValueError(f"{name} must be rows of content (0 to {len(content) - 1})")
    k = min(k, len(keys))
    if k == 0 or not len(queries):
        return np.zeros((len(queries), k), np.int64), np.zeros((len(queries), k), np.float32)
    unit = content / np.maximum(np.linalg.norm(content, axis=1, keepdims=True), 1e-12)
    key_vectors = unit[keys]
    positions, weights = [], []
    for start in range(0, len(queries), chunk):
        sim = unit[queries[start : start + chunk]] @ key_vectors.T
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        weight = np.maximum(np.take_along_axis(sim, top, axis=1), 0.0)
        total = weight.sum(axis=1, keepdims=True)
        positions.append(top.astype(np.int64))
        weights.append(np.divide(weight, total, out=np.zeros_like(weight), where=total > 0).astype(np.float32))
    return np.concatenate(positions), np.concatenate(weights)
