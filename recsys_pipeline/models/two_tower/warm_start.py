"""Carry trained weights over to a model with other id vocabularies: the warm refit after early stopping, and
warm-started retraining from the champion (``ModelConfig.refit_epochs``, ``TwoTowerRecommender.fit(init=...)``).

Id embeddings are rows keyed by user or item id (row ``i + 1`` = ``ids[i]``, row 0 = unknown / padding): a row is
copied to the row of the same id in the new vocabulary; ids new to it keep the new model's fresh initialisation.
Every other tensor (content projections, fusion, cross layers, MLP) is copied as is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["USER_ROWS", "ITEM_ROWS", "carry_rows", "remap_state"]

# state-dict keys of ``TwoTowerModel`` whose rows are user / item id indices
USER_ROWS = ("user_tower.emb.weight", "user_tower.folded_history")
ITEM_ROWS = ("item_tower.id_emb.weight", "user_tower.history.emb.weight", "next_item_emb.weight")


def _row_map(old_ids: Sequence[str], new_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(new_rows, old_rows)``: 1-based rows of the ids present in both vocabularies."""
    old_row = {str(x): i + 1 for i, x in enumerate(old_ids)}
    pairs = [(j + 1, old_row[str(x)]) for j, x in enumerate(new_ids) if str(x) in old_row]
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    new_rows, old_rows = np.asarray(pairs, dtype=np.int64).T
    return new_rows, old_rows


def carry_rows(old: Tensor, fresh: Tensor, old_ids: Sequence[str], new_ids: Sequence[str]) -> Tensor:
    """``fresh`` (rows ``len(new_ids) + 1``) with the rows of the ids also in ``old_ids`` copied from ``old``, and
    row 0 (unknown / padding) from ``old``; returns the number of ids carried too: ``(tensor, n)``.

    Raises:
        ValueError: the rows differ in width (another embedding size).
    """
    if old.shape[1:] != fresh.shape[1:]:
        raise ValueError(
            f"cannot warm start: rows of {tuple(old.shape[1:])} vs the new model's {tuple(fresh.shape[1:])}"
        )
    new_rows, old_rows = (torch.from_numpy(r).to(fresh.device) for r in _row_map(old_ids, new_ids))
    t = fresh.clone()
    t[new_rows] = old.to(fresh.device, fresh.dtype)[old_rows]
    t[0] = old[0]
    return t, len(new_rows)


def remap_state(
    old_state: Mapping[str, Tensor],
    new_state: Mapping[str, Tensor],
    old_users: Sequence[str],
    new_users: Sequence[str],
    old_items: Sequence[str],
    new_items: Sequence[str],
) -> tuple[dict[str, Tensor], dict[str, int]]:
    """A state dict for the new model: ``new_state`` (its fresh initialisation) with ``old_state``'s weights
    copied in, id rows matched by id.

    Args:
        old_state / new_state: ``TwoTowerModel.state_dict()`` of the trained and of the new model (same config
            apart from the vocabularies).
        old_users, new_users / old_items, new_items: the id lists (row ``i + 1`` is ``ids[i]``).

    Returns:
        ``(state, counts)``: counts ``users_carried``, ``items_carried`` (ids whose rows were copied).

    Raises:
        ValueError: a tensor other than an id embedding differs in shape, or a key is missing from
            ``old_state`` (another architecture: warm starting needs the same config).
    """
    out: dict[str, Tensor] = {}
    counts = {"users_carried": 0, "items_carried": 0}
    for key, fresh in new_state.items():
        if key not in old_state:
            raise ValueError(f"cannot warm start: the trained weights lack {key!r} (another model config?)")
        old = old_state[key].to(fresh.device, fresh.dtype)
        if key in USER_ROWS:
            out[key], counts["users_carried"] = carry_rows(old, fresh, old_users, new_users)
        elif key in ITEM_ROWS:
            out[key], counts["items_carried"] = carry_rows(old, fresh, old_items, new_items)
        elif old.shape != fresh.shape:
            raise ValueError(f"cannot warm start: {key} is {tuple(old.shape)}, the new model's {tuple(fresh.shape)}")
        else:
            out[key] = old.clone()
    return out, counts
