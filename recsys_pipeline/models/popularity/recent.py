"""Time-aware popularity: how many distinct users started interacting with each item in the days before a given
time (a trailing window of whole UTC days).

Global popularity ranks every user's list as of the end of the data; a user who arrived in 1997 could not have
rated a film of 2010. For a user the model has never seen, the time of their latest interaction says which items
were in circulation and in fashion then: on ``benchmarks/user_cold_start.py``'s validation users (3 seeds) the
popularity of the 365 days before a new user's latest revealed interaction alone reaches Recall@20 0.104 with 3
revealed items, against 0.096 for EASE fold-in over those items (``benchmarks/results/
model_changes.md``, sixth session of 2026-12-07). A time-aware popularity baseline is the usual remedy for the
global-timeline blind spot of user-split evaluations (Ji et al., "A Critical Study on Data Leakage in Recommender
System Offline Evaluation", ACM TOIS 2023).

The window is causal: it ends with the day *before* the day of the given time, so no interaction later than that
time is counted. A time after the data's newest day is clamped to the day after it (the window is then the data's
last days): a request made today against a model trained on older data gets the freshest popularity it knows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["RecentPopularity", "utc_seconds"]

SECONDS_PER_DAY = 86_400


def utc_seconds(values) -> np.ndarray:
    """``(n,)`` int64 seconds since 1970-01-01 UTC.

    Args:
        values: datetimes (naive ones are read as UTC; aware ones are converted), or numbers taken as seconds since
            the epoch (MovieLens' raw ``timestamp``).

    Raises:
        ValueError: a value that is neither a number nor a date (pandas' message), or a missing one.
    """
    series = pd.Series(values)
    if series.isna().any():
        raise ValueError(f"{int(series.isna().sum())} missing timestamps")
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return np.floor(series.to_numpy(dtype=np.float64)).astype(np.int64)
    if pd.api.types.is_datetime64_dtype(series):  # naive, read as UTC: numpy alone (a request's fold-in path)
        return series.to_numpy().astype("datetime64[s]").astype(np.int64)
    times = pd.to_datetime(series, utc=True)
    return ((times - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


class RecentPopularity:
    """Per UTC day and item, how many distinct users interacted with the item for the first time that day.

    Args:
        item_ids: ``n_items`` item ids, the columns of ``counts``.
        days: ``(n_days,)`` int64, strictly increasing UTC day numbers (days since 1970-01-01) that have
            interactions, the rows of ``counts``.
        counts: ``(n_days, n_items)`` sparse counts (stored as float32 CSR).

    Raises:
        ValueError: shapes that do not match, or ``days`` not strictly increasing.
    """

    FILE = "recent_popularity.npz"

    def __init__(self, item_ids: Sequence[str], days: np.ndarray, counts: sp.spmatrix) -> None:
        self.item_ids = pd.Index([str(i) for i in item_ids], dtype=object)
        self.days = np.asarray(days, dtype=np.int64)
        self.counts = sp.csr_matrix(counts, dtype=np.float32)
        if self.counts.shape != (len(self.days), len(self.item_ids)):
            raise ValueError(
                f"counts {self.counts.shape} do not match {len(self.days)} days x {len(self.item_ids)} items"
            )
        if len(self.days) > 1 and (np.diff(self.days) <= 0).any():
            raise ValueError("days must be strictly increasing")

    @classmethod
    def fit(cls, interactions: pd.DataFrame) -> RecentPopularity:
        """Count ``interactions`` (``user_id, item_id, timestamp``; a user's repeats of an item count once, at the
        first).

        Raises:
            ValueError: no interactions, a missing column, or an unreadable / missing timestamp.
        """
        missing = {"user_id", "item_id", "timestamp"} - set(interactions.columns)
        if missing:
            raise ValueError(f"RecentPopularity.fit: interactions lack {sorted(missing)}")
        if len(interactions) == 0:
            raise ValueError("RecentPopularity.fit: no interactions")
        frame = pd.DataFrame(
            {
                "user_id": interactions["user_id"].astype(str).to_numpy(),
                "item_id": interactions["item_id"].astype(str).to_numpy(),
                "day": utc_seconds(interactions["timestamp"]) // SECONDS_PER_DAY,
            }
        )
        first = frame.sort_values("day", kind="stable").drop_duplicates(["user_id", "item_id"])
        item_ids = pd.Index(np.sort(first["item_id"].unique()), dtype=object)
        days, day_row = np.unique(first["day"].to_numpy(), return_inverse=True)
        cols = item_ids.get_indexer(first["item_id"])
        counts = sp.csr_matrix(
            (np.ones(len(first), np.float32), (day_row, cols)), shape=(len(days), len(item_ids)), dtype=np.float32
        )
        counts.sum_duplicates()
        return cls(item_ids, days, counts)

    @property
    def newest_day(self) -> int:
        """The last UTC day number with an interaction."""
        return int(self.days[-1])

    def window_counts(
        self, at_seconds: np.ndarray, window_days: int, item_ids: Sequence[str] | None = None
    ) -> np.ndarray:
        """Distinct users per item in the ``window_days`` whole UTC days before each time's day.

        Args:
            at_seconds: ``(n,)`` int64 seconds since the epoch (UTC), one time per row; a time after the newest
                day is clamped to the day after it.
            window_days: the window's length in days (>= 1).
            item_ids: the ``m`` items to count (an item never interacted with counts 0); default :attr:`item_ids`.

        Returns:
            ``(n, m)`` float32 counts.

        Raises:
            ValueError: ``window_days < 1``.
        """
        if window_days < 1:
            raise ValueError(f"window_days must be >= 1, got {window_days}")
        day = np.minimum(np.asarray(at_seconds, dtype=np.int64) // SECONDS_PER_DAY, self.newest_day + 1)
        lo = np.searchsorted(self.days, day - window_days, side="left")
        hi = np.searchsorted(self.days, day, side="left")  # the day itself excluded: nothing after the time
        lengths = np.maximum(hi - lo, 0)
        row = np.repeat(np.arange(len(day)), lengths)
        col = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if lengths.sum() else np.zeros(0, np.int64)
        window = sp.csr_matrix((np.ones(len(row), np.float32), (row, col)), shape=(len(day), len(self.days)))
        per_item = (window @ self.counts).toarray()  # (n, n_items)
        if item_ids is None:
            return per_item
        return self.take(per_item, self.columns(item_ids))

    def columns(self, item_ids: Sequence[str]) -> np.ndarray:
        """``(m,)`` int64: each item's column in :attr:`item_ids`, ``-1`` for an item never interacted with."""
        return self.item_ids.get_indexer(pd.Index([str(i) for i in item_ids], dtype=object))

    @staticmethod
    def take(per_item: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """``per_item[:, columns]`` with ``0`` where a column is ``-1`` (see :meth:`columns`)."""
        out = np.zeros((per_item.shape[0], len(columns)), np.float32)
        known = columns >= 0
        out[:, known] = per_item[:, columns[known]]
        return out

    def save(self, directory: Path) -> None:
        """Write ``recent_popularity.npz`` (plain arrays; no pickle)."""
        np.savez_compressed(
            Path(directory) / self.FILE,
            item_ids=np.asarray(list(self.item_ids), dtype=str),
            days=self.days,
            data=self.counts.data,
            indices=self.counts.indices,
            indptr=self.counts.indptr,
        )

    @classmethod
    def load(cls, directory: Path) -> RecentPopularity | None:
        """What :meth:`save` wrote, or ``None`` where the directory has none (a model saved before it existed)."""
        path = Path(directory) / cls.FILE
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as z:
            item_ids, days = z["item_ids"].tolist(), z["days"]
            counts = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=(len(days), len(item_ids)))
        return cls(item_ids, days, counts)
