"""``InteractionDataModule``: index maps, per-user temporal train/validation split, dataloaders.

Items are addressed by their *row in the ItemFeatures* (the catalog the model ranks over); the id-embedding index
of an item (``item_index``, 1-based, 0 = unknown/cold) is a separate map covering items seen in the training split.
Users are 1-based (0 = unknown user).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from recsys_pipeline.content.features import ItemFeatures
from recsys_pipeline.models.validation import split_per_user

__all__ = ["InteractionDataModule", "PairDataset", "UserEvalDataset"]


class PairDataset(Dataset):
    """``(user_idx, item_row, position)`` training pairs; fetched a whole batch at a time via ``__getitems__``.

    ``position`` is the pair's index in the time-ordered history CSR (its items before it are its history).
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, positions: np.ndarray):
        self.users = torch.tensor(np.asarray(users), dtype=torch.long)
        self.items = torch.tensor(np.asarray(items), dtype=torch.long)
        self.positions = torch.tensor(np.asarray(positions), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, i):
        return self.users[i], self.items[i], self.positions[i]

    def __getitems__(self, idx: list[int]):
        t = torch.as_tensor(idx, dtype=torch.long)
        return self.users[t], self.items[t], self.positions[t]


def _collate_pairs(batch):
    if isinstance(batch, tuple):  # from __getitems__
        return batch
    return tuple(torch.stack(col) for col in zip(*batch))


def _csr_order(user_idx: np.ndarray) -> np.ndarray:
    """Stable order by user: pairs keep their (time) order within each user."""
    return np.argsort(user_idx, kind="stable")


def _csr(user_idx: np.ndarray, item_row: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(n_users + 2, dtype=np.int64)
    np.add.at(indptr, user_idx + 1, 1)
    return np.cumsum(indptr), item_row[_csr_order(user_idx)]


class UserEvalDataset(Dataset):
    """Validation users; a batch gives ``(users (b,), seen (2, n_seen) [batch_row, item_row],
    truth (2, n_truth) [batch_row, item_row])``."""

    def __init__(self, users: np.ndarray, seen_csr, truth_csr):
        self.users = np.asarray(users, dtype=np.int64)
        self.seen_csr, self.truth_csr = seen_csr, truth_csr

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, i):
        return self.__getitems__([i])

    @staticmethod
    def _pairs(csr, users):
        indptr, indices = csr
        starts, ends = indptr[users], indptr[users + 1]
        counts = ends - starts
        rows = np.repeat(np.arange(len(users)), counts)
        offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return torch.from_numpy(np.stack([rows, indices[np.repeat(starts, counts) + offs]]))

    def __getitems__(self, idx: list[int]):
        users = self.users[np.asarray(idx, dtype=np.int64)]
        return torch.from_numpy(users), self._pairs(self.seen_csr, users), self._pairs(self.truth_csr, users)


class InteractionDataModule(L.LightningDataModule):
    """Index maps, temporal validation split and dataloaders for implicit-feedback training.

    Args:
        interactions: ``user_id, item_id, timestamp[, value]``; every row is a positive. Duplicated
            ``(user, item)`` pairs keep their first occurrence.
        items: the catalog's item features; every interacted item must be in it.
        val_fraction: per user (with ``>= min_val_interactions`` rows) this fraction goes to validation.
        batch_size, seed: loader settings (``seed`` also draws a random validation split).
        val_split: which rows: ``"last"`` (each user's latest) or ``"random"`` (``models.validation``).

    Attributes (after construction):
        user_ids: index ``i`` -> user ``user_ids[i-1]``; ``user_index`` the inverse (1-based).
        item_ids: items with an id embedding (seen in the training split); ``item_index`` the inverse (1-based).
        train_pairs / val_pairs: ``(user_idx, item_row)`` arrays, ``item_row`` = row in ``items``; train pairs
            are in time order.
        train_positions: ``(n_train,) int64`` index of each train pair in the history CSR (``train_history``).
    """

    def __init__(
        self,
        interactions: pd.DataFrame,
        items: ItemFeatures,
        val_fraction: float = 0.1,
        batch_size: int = 1024,
        seed: int = 42,
        min_val_interactions: int = 3,
        val_split: str = "last",
    ):
        super().__init__()
        self.items = items
        self.batch_size = batch_size
        self.seed = seed
        df = interactions[["user_id", "item_id", "timestamp"]].copy()
        df["user_id"] = df["user_id"].astype(str)
        df["item_id"] = df["item_id"].astype(str)
        df = df.sort_values("timestamp", kind="stable").drop_duplicates(["user_id", "item_id"], keep="first")
        train, val = split_per_user(df, val_fraction, min_val_interactions, val_split, seed)
        # time order within each user is what the history CSR (and a causal user history) relies on
        train = train.sort_values("timestamp", kind="stable")
        self.user_ids: list[str] = sorted(df["user_id"].unique())
        self.user_index = {u: i + 1 for i, u in enumerate(self.user_ids)}
        self.item_ids: list[str] = sorted(train["item_id"].unique())
        self.item_index = {it: i + 1 for i, it in enumerate(self.item_ids)}
        rows = items.index
        self.train_pairs = self._pairs(train, rows)
        self.val_pairs = self._pairs(val, rows)
        n_users = len(self.user_ids)
        self._seen_csr = _csr(*self.train_pairs, n_users)
        self.train_positions = np.empty(len(self.train_pairs[0]), dtype=np.int64)
        self.train_positions[_csr_order(self.train_pairs[0])] = np.arange(len(self.train_positions))
        self._val_csr = _csr(*self.val_pairs, n_users)
        self.val_users = np.unique(self.val_pairs[0])

    def _pairs(self, df: pd.DataFrame, rows: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        u = df["user_id"].map(self.user_index).to_numpy(dtype=np.int64)
        i = df["item_id"].map(rows).to_numpy(dtype=np.int64)
        return u, i

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def train_history(self) -> tuple[np.ndarray, np.ndarray]:
        """Training-split histories as CSR ``(indptr (n_users + 2,) int64, item_rows int64)`` over user index,
        oldest first within each user; ``train_positions[j]`` is training pair ``j``'s index in ``item_rows``."""
        return self._seen_csr

    @property
    def has_validation(self) -> bool:
        return len(self.val_users) > 0

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            PairDataset(*self.train_pairs, self.train_positions),
            batch_size=self.batch_size,
            shuffle=True,
            generator=g,
            collate_fn=_collate_pairs,
            drop_last=False,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            UserEvalDataset(self.val_users, self._seen_csr, self._val_csr),
            batch_size=256,
            shuffle=False,
            collate_fn=_collate_pairs,
        )

    def seen_items(self, user_ids: Sequence[str]) -> list[np.ndarray]:
        """Content rows each user interacted with in the training split."""
        indptr, indices = self._seen_csr
        out = []
        for u in user_ids:
            i = self.user_index.get(u, 0)
            out.append(indices[indptr[i] : indptr[i + 1]] if i else np.zeros(0, np.int64))
        return out
