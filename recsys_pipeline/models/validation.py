"""How a model carves its early-stopping validation split from its training data.

The evaluation protocols (``evaluation.protocols``) build their train/test splits from these same functions, so a
model's validation can be carved the same way as the protocol it is judged by.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["split_last_fraction_per_user"]


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
