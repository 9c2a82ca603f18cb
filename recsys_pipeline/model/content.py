"""Per-item model input (:class:`ItemContent`) and its pickle-free ``.npz`` persistence.

An :class:`ItemContent` is the only thing the model knows about an item besides its id: one dense vector per
modality (text, later image and audio; any of them may be missing for an item), a multi-hot genre vector and a
release year. Rows are aligned with ``item_ids``.

Example::

    >>> import numpy as np
    >>> c = ItemContent(item_ids=["a", "b"], modalities={"text": np.eye(2, 4, dtype=np.float32)},
    ...                 present=np.array([[True], [False]]), genres=np.zeros((2, 1), np.float32),
    ...                 genre_names=["Drama"], year=np.array([1999, 0]))
    >>> c.validate(); c.subset(["b"]).item_ids
    ['b']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ItemContent", "genres_multi_hot"]

_MOD_PREFIX = "modality__"


@dataclass
class ItemContent:
    """Per-item model input.

    Args:
        item_ids: ``(n_items,)`` item keys (strings), unique.
        modalities: ordered ``name -> (n_items, d_m)`` float32 arrays. Rows of items lacking the modality are zeros
            and are masked by the model (their values never matter).
        present: ``(n_items, n_modalities)`` bool; column order = ``modalities`` order.
        genres: ``(n_items, n_genres)`` float32 multi-hot.
        genre_names: ``n_genres`` names, column order of ``genres``.
        year: ``(n_items,)`` int64 release year, ``0`` = unknown.
    """

    item_ids: list[str]
    modalities: dict[str, np.ndarray]
    present: np.ndarray
    genres: np.ndarray
    genre_names: list[str]
    year: np.ndarray
    _index: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.item_ids = [str(i) for i in self.item_ids]
        self.modalities = {str(k): np.asarray(v, dtype=np.float32) for k, v in self.modalities.items()}
        self.present = np.asarray(self.present, dtype=bool)
        if self.present.ndim == 1:
            self.present = self.present[:, None]
        self.genres = np.asarray(self.genres, dtype=np.float32)
        self.genre_names = [str(g) for g in self.genre_names]
        self.year = np.asarray(self.year, dtype=np.int64)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def modality_names(self) -> list[str]:
        return list(self.modalities)

    @property
    def modality_dims(self) -> dict[str, int]:
        """``name -> d_m`` in modality order."""
        return {k: int(v.shape[1]) for k, v in self.modalities.items()}

    @property
    def index(self) -> dict[str, int]:
        """``item_id -> row`` (built lazily, cached)."""
        if self._index is None or len(self._index) != len(self.item_ids):
            self._index = {item: i for i, item in enumerate(self.item_ids)}
        return self._index

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row positions of ``item_ids``; ``-1`` for ids not in this content."""
        idx = self.index
        return np.fromiter((idx.get(str(i), -1) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def validate(self) -> None:
        """Raise ``ValueError`` on inconsistent shapes, non-finite values or duplicate ids."""
        n = len(self.item_ids)
        if len(set(self.item_ids)) != n:
            seen: set[str] = set()
            dups = sorted({i for i in self.item_ids if i in seen or seen.add(i)})
            raise ValueError(f"ItemContent has {n - len(set(self.item_ids))} duplicate item_ids, e.g. {dups[:5]}")
        if not self.modalities:
            raise ValueError("ItemContent needs at least one modality (arrays may be all-absent)")
        for name, arr in self.modalities.items():
            if arr.ndim != 2 or arr.shape[0] != n:
                raise ValueError(f"modality {name!r} has shape {arr.shape}, expected ({n}, d)")
            if arr.shape[1] == 0:
                raise ValueError(f"modality {name!r} has zero width")
            bad = ~np.isfinite(arr).all(axis=1)
            if bad.any():
                raise ValueError(
                    f"modality {name!r} has non-finite values in {int(bad.sum())} rows, "
                    f"e.g. item {self.item_ids[int(np.argmax(bad))]!r}"
                )
        if self.present.shape != (n, len(self.modalities)):
            raise ValueError(
                f"present has shape {self.present.shape}, expected ({n}, {len(self.modalities)}) "
                f"(one column per modality, order {list(self.modalities)})"
            )
        if self.genres.ndim != 2 or self.genres.shape[0] != n:
            raise ValueError(f"genres has shape {self.genres.shape}, expected ({n}, n_genres)")
        if self.genres.shape[1] != len(self.genre_names):
            raise ValueError(f"genres has {self.genres.shape[1]} columns but {len(self.genre_names)} genre_names")
        if len(set(self.genre_names)) != len(self.genre_names):
            raise ValueError("genre_names has duplicates")
        if not np.isfinite(self.genres).all():
            raise ValueError("genres has non-finite values")
        if self.year.shape != (n,):
            raise ValueError(f"year has shape {self.year.shape}, expected ({n},)")
        if (self.year < 0).any():
            raise ValueError("year has negative values (use 0 for unknown)")

    def subset(self, item_ids: Sequence[str]) -> ItemContent:
        """Rows for ``item_ids`` in that order. Raises ``KeyError`` naming how many ids are missing."""
        rows = self.rows(list(item_ids))
        if (rows < 0).any():
            missing = [str(i) for i, r in zip(item_ids, rows) if r < 0]
            raise KeyError(f"{len(missing)} item_ids not in ItemContent, e.g. {missing[:5]}")
        return ItemContent(
            item_ids=[self.item_ids[r] for r in rows],
            modalities={k: v[rows] for k, v in self.modalities.items()},
            present=self.present[rows],
            genres=self.genres[rows],
            genre_names=list(self.genre_names),
            year=self.year[rows],
        )

    # ------------------------------------------------------------------ persistence
    def to_npz(self, path: str | Path) -> None:
        """Save as an uncompressed ``.npz`` of plain arrays (no pickled objects)."""
        arrays = {
            "item_ids": np.asarray(self.item_ids, dtype=np.str_),
            "modality_names": np.asarray(list(self.modalities), dtype=np.str_),
            "present": self.present,
            "genres": self.genres,
            "genre_names": np.asarray(self.genre_names, dtype=np.str_),
            "year": self.year,
        }
        for i, (name, arr) in enumerate(self.modalities.items()):
            arrays[f"{_MOD_PREFIX}{i}"] = arr
        np.savez(Path(path), **arrays)

    @classmethod
    def from_npz(cls, path: str | Path) -> ItemContent:
        """Load what :meth:`to_npz` wrote (``allow_pickle=False``)."""
        with np.load(Path(path), allow_pickle=False) as z:
            names = [str(s) for s in z["modality_names"]]
            return cls(
                item_ids=[str(s) for s in z["item_ids"]],
                modalities={name: z[f"{_MOD_PREFIX}{i}"] for i, name in enumerate(names)},
                present=z["present"].reshape(len(z["item_ids"]), len(names)),
                genres=z["genres"],
                genre_names=[str(s) for s in z["genre_names"]],
                year=z["year"],
            )

    @classmethod
    def from_parts(
        cls,
        item_ids: Sequence[str],
        modalities: Mapping[str, tuple[Sequence[str], np.ndarray]],
        genres: Sequence[str] | None = None,
        year: Sequence[int] | None = None,
        genre_sep: str = "|",
    ) -> ItemContent:
        """Assemble content for ``item_ids`` from per-modality ``(ids, vectors)`` pairs.

        Items missing from a modality's ids get a zero row and ``present=False``. ``genres`` are separator-joined
        strings aligned with ``item_ids`` (MovieLens style, ``"(no genres listed)"`` ignored).
        """
        item_ids = [str(i) for i in item_ids]
        pos = {item: i for i, item in enumerate(item_ids)}
        n = len(item_ids)
        mods: dict[str, np.ndarray] = {}
        present = np.zeros((n, len(modalities)), dtype=bool)
        for j, (name, (ids, vecs)) in enumerate(modalities.items()):
            vecs = np.asarray(vecs, dtype=np.float32)
            out = np.zeros((n, vecs.shape[1]), dtype=np.float32)
            src = np.fromiter((pos.get(str(i), -1) for i in ids), dtype=np.int64, count=len(ids))
            ok = src >= 0
            out[src[ok]] = vecs[ok]
            present[src[ok], j] = True
            mods[name] = out
        g, names = genres_multi_hot(genres if genres is not None else [""] * n, sep=genre_sep)
        y = np.zeros(n, dtype=np.int64) if year is None else np.nan_to_num(np.asarray(year, dtype=float)).astype(np.int64)
        return cls(item_ids=item_ids, modalities=mods, present=present, genres=g, genre_names=names, year=y)


def genres_multi_hot(genres: Sequence[str | None], sep: str = "|") -> tuple[np.ndarray, list[str]]:
    """``["Action|Comedy", "Drama", None]`` -> ``((3, n_genres) float32 multi-hot, sorted genre names)``."""
    split = [[t.strip() for t in str(s).split(sep) if t.strip()] if s is not None and s == s else [] for s in genres]
    split = [[t for t in row if t != "(no genres listed)"] for row in split]
    names = sorted({t for row in split for t in row})
    col = {g: i for i, g in enumerate(names)}
    out = np.zeros((len(split), len(names)), dtype=np.float32)
    for i, row in enumerate(split):
        for t in row:
            out[i, col[t]] = 1.0
    return out, names


def item_table(
    content: ItemContent,
    item_index: Mapping[str, int],
    genre_names: Sequence[str] | None = None,
    modality_dims: Mapping[str, int] | None = None,
    rows: np.ndarray | None = None,
) -> dict:
    """Torch tensors the item tower reads, one row per content item (or per ``rows`` of it).

    Args:
        content: the items.
        item_index: ``item_id -> id-embedding index`` (1-based); ids not in it map to ``0`` (cold item).
        genre_names: the model's genre column order; content genres are realigned by name (unknown names dropped,
            missing ones zero). Default: content order.
        modality_dims: the model's ``name -> width`` in modality order; a model modality absent from ``content`` is
            all-absent (zeros). Default: content's. A width mismatch raises ``ValueError``.
        rows: optional content rows to take (default all).

    Returns:
        ``{"id_idx": (n,) int64, "features": {name: (n, d_m) float32}, "present": (n, M) bool,
        "genres": (n, G) float32, "year": (n,) int64}``.
    """
    import torch

    sel = np.arange(len(content)) if rows is None else np.asarray(rows, dtype=np.int64)
    ids = [content.item_ids[r] for r in sel]
    id_idx = np.fromiter((item_index.get(i, 0) for i in ids), dtype=np.int64, count=len(ids))
    genre_names = list(content.genre_names) if genre_names is None else list(genre_names)
    modality_dims = dict(content.modality_dims if modality_dims is None else modality_dims)
    modality_names = list(modality_dims)
    gcol = {g: j for j, g in enumerate(content.genre_names)}
    genres = np.zeros((len(sel), len(genre_names)), dtype=np.float32)
    for j, g in enumerate(genre_names):
        if g in gcol:
            genres[:, j] = content.genres[sel, gcol[g]]
    mcol = {m: j for j, m in enumerate(content.modalities)}
    features, present = {}, np.zeros((len(sel), len(modality_names)), dtype=bool)
    for j, m in enumerate(modality_names):
        if m in mcol:
            if content.modalities[m].shape[1] != modality_dims[m]:
                raise ValueError(
                    f"modality {m!r} has width {content.modalities[m].shape[1]} in content, model expects "
                    f"{modality_dims[m]}"
                )
            features[m] = torch.from_numpy(np.ascontiguousarray(content.modalities[m][sel]))
            present[:, j] = content.present[sel, mcol[m]]
        else:
            features[m] = torch.zeros(len(sel), modality_dims[m])
    return {
        "id_idx": torch.from_numpy(id_idx),
        "features": features,
        "present": torch.from_numpy(present),
        "genres": torch.from_numpy(genres),
        "year": torch.from_numpy(np.ascontiguousarray(content.year[sel])),
    }
