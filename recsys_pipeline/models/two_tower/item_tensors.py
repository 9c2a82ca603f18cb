"""The item table: torch tensors of every catalog item that the item tower reads (one row per item)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from recsys_pipeline.content.features import ItemFeatures

__all__ = ["item_table"]


def item_table(
    items: ItemFeatures,
    item_index: Mapping[str, int],
    genre_names: Sequence[str] | None = None,
    modality_dims: Mapping[str, int] | None = None,
    rows: np.ndarray | None = None,
) -> dict:
    """Torch tensors the item tower reads, one row per item of ``items`` (or per ``rows`` of it).

    Args:
        items: the catalog's :class:`ItemFeatures`.
        item_index: ``item_id -> id-embedding index`` (1-based); ids not in it map to ``0`` (cold item).
        genre_names: the model's genre column order; the items' genres are realigned by name (unknown names
            dropped, missing ones zero). Default: the items' order.
        modality_dims: the model's ``name -> width`` in modality order; a model modality absent from ``items`` is
            all-absent (zeros). Default: the items'.
        rows: optional rows of ``items`` to take (default all).

    Returns:
        ``{"id_idx": (n,) int64, "features": {name: (n, d_m) float32}, "present": (n, M) bool,
        "genres": (n, G) float32, "year": (n,) int64}``.

    Raises:
        ValueError: a modality's width differs from the model's.
    """
    sel = np.arange(len(items)) if rows is None else np.asarray(rows, dtype=np.int64)
    ids = [items.item_ids[r] for r in sel]
    id_idx = np.fromiter((item_index.get(i, 0) for i in ids), dtype=np.int64, count=len(ids))
    genre_names = list(items.genre_names) if genre_names is None else list(genre_names)
    modality_dims = dict(items.modality_dims if modality_dims is None else modality_dims)
    modality_names = list(modality_dims)
    gcol = {g: j for j, g in enumerate(items.genre_names)}
    genres = np.zeros((len(sel), len(genre_names)), dtype=np.float32)
    for j, g in enumerate(genre_names):
        if g in gcol:
            genres[:, j] = items.genres[sel, gcol[g]]
    mcol = {m: j for j, m in enumerate(items.modalities)}
    vectors, present = {}, np.zeros((len(sel), len(modality_names)), dtype=bool)
    for j, m in enumerate(modality_names):
        if m in mcol:
            if items.modalities[m].shape[1] != modality_dims[m]:
                raise ValueError(
                    f"modality {m!r} has width {items.modalities[m].shape[1]} in the item features, the model "
                    f"expects {modality_dims[m]}"
                )
            vectors[m] = torch.from_numpy(np.ascontiguousarray(items.modalities[m][sel]))
            present[:, j] = items.present[sel, mcol[m]]
        else:
            vectors[m] = torch.zeros(len(sel), modality_dims[m])
    return {
        "id_idx": torch.from_numpy(id_idx),
        "features": vectors,
        "present": torch.from_numpy(present),
        "genres": torch.from_numpy(genres),
        "year": torch.from_numpy(np.ascontiguousarray(items.year[sel])),
    }
