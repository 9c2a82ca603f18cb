"""Item features: the typed per-item model input (:class:`ItemFeatures`), and the ``item_features`` table.

An :class:`ItemFeatures` is the only thing a model knows about an item besides its id: one dense vector per
modality (text, image, audio; any of them may be missing for an item) with a presence mask, a multi-hot genre
vector and a release year. Rows are aligned with ``item_ids``. It persists as a pickle-free ``.npz``.

The ``item_features`` table (``data.schema.item_features_table``) holds, per catalog item, each modality's vector
(NULL when missing) and presence flag, genres and year; :func:`build_item_features` (re)builds it from the catalog
and the embedding tables, :func:`load_item_features` reads it back as an :class:`ItemFeatures`.

Example::

    >>> import numpy as np
    >>> f = ItemFeatures(item_ids=["a", "b"], modalities={"text": np.eye(2, 4, dtype=np.float32)},
    ...                  present=np.array([[True], [False]]), genres=np.zeros((2, 1), np.float32),
    ...                  genre_names=["Drama"], year=np.array([1999, 0]))
    >>> f.validate(); f.subset(["b"]).item_ids
    ['b']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np

from recsys_pipeline.data import warehouse
from recsys_pipeline.data.schema import item_features_table

__all__ = ["ItemFeatures", "genres_multi_hot", "MODALITY_TABLES", "build_item_features", "load_item_features"]

_MOD_PREFIX = "modality__"


@dataclass
class ItemFeatures:
    """Per-item model input (what ``Recommender.fit`` and the two-tower item tower read).

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
            raise ValueError(f"ItemFeatures has {n - len(set(self.item_ids))} duplicate item_ids, e.g. {dups[:5]}")
        if not self.modalities:
            raise ValueError("ItemFeatures needs at least one modality (arrays may be all-absent)")
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

    def subset(self, item_ids: Sequence[str]) -> ItemFeatures:
        """Rows for ``item_ids`` in that order. Raises ``KeyError`` naming how many ids are missing."""
        rows = self.rows(list(item_ids))
        if (rows < 0).any():
            missing = [str(i) for i, r in zip(item_ids, rows) if r < 0]
            raise KeyError(f"{len(missing)} item_ids not in ItemFeatures, e.g. {missing[:5]}")
        return ItemFeatures(
            item_ids=[self.item_ids[r] for r in rows],
            modalities={k: v[rows] for k, v in self.modalities.items()},
            present=self.present[rows],
            genres=self.genres[rows],
            genre_names=list(self.genre_names),
            year=self.year[rows],
        )

    def with_modalities(self, names: Sequence[str]) -> ItemFeatures:
        """The same items with only the modalities ``names`` (in this object's order).

        Raises:
            KeyError: a name is not a modality here.
        """
        missing = [n for n in names if n not in self.modalities]
        if missing:
            raise KeyError(f"modalities {missing} not in the item features (has {self.modality_names})")
        keep = [j for j, n in enumerate(self.modality_names) if n in names]
        return ItemFeatures(
            item_ids=self.item_ids,
            modalities={self.modality_names[j]: self.modalities[self.modality_names[j]] for j in keep},
            present=self.present[:, keep],
            genres=self.genres,
            genre_names=self.genre_names,
            year=self.year,
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
        for i, (_name, arr) in enumerate(self.modalities.items()):
            arrays[f"{_MOD_PREFIX}{i}"] = arr
        np.savez(Path(path), **arrays)

    @classmethod
    def from_npz(cls, path: str | Path) -> ItemFeatures:
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
    ) -> ItemFeatures:
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
        y = (
            np.zeros(n, dtype=np.int64)
            if year is None
            else np.nan_to_num(np.asarray(year, dtype=float)).astype(np.int64)
        )
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


# modality name -> embeddings table (item_id, model_id, content_hash, embedding FLOAT[d], encoded_at). An item
# without a row (no file, or a failure listed in ``media_failures``) gets a NULL vector and ``{m}_present = FALSE``;
# ``load_item_features`` turns that into a zero row masked by the model, never a vector passed off as real.
MODALITY_TABLES: dict[str, str] = {"text": "text_embeddings", "image": "image_embeddings", "audio": "audio_embeddings"}


def _embedding_width(con: duckdb.DuckDBPyConnection, table: str) -> int | None:
    """The ``d`` of ``table.embedding FLOAT[d]``, or ``None`` when the table does not exist."""
    rows = con.execute(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ? "
        "AND column_name = 'embedding'",
        [table],
    ).fetchall()
    if not rows:
        return None
    return int(rows[0][0].removeprefix("FLOAT[").removesuffix("]"))


def build_item_features(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """(Re)build ``item_features`` (``data.schema.item_features_table``) from ``item_catalog`` and the modality
    tables, atomically.

    Returns:
        counts ``items`` and ``{m}_present`` per modality.

    Raises:
        ValueError: ``item_catalog`` does not exist yet.
    """
    if not warehouse.table_exists(con, "item_catalog"):
        raise ValueError("item_features needs item_catalog: materialize item_catalog first")
    dims = {m: _embedding_width(con, t) for m, t in MODALITY_TABLES.items()}
    table = item_features_table(dims)
    select = ["c.item_id"]
    joins = []
    for m, source in MODALITY_TABLES.items():
        if dims[m] is not None:
            select += [f"{m}.embedding", f"{m}.item_id IS NOT NULL"]
            joins.append(f"LEFT JOIN {source} AS {m} ON {m}.item_id = c.item_id")
        else:
            select += ["NULL", "FALSE"]
    select += ["c.genres", "c.year::INTEGER", "c.added_at"]
    with warehouse.transaction(con, table.name):
        con.execute(f"CREATE OR REPLACE TABLE {table.name} ({table.ddl()})")
        con.execute(
            f"INSERT INTO {table.name} SELECT {', '.join(select)} FROM item_catalog AS c "
            f"{' '.join(joins)} ORDER BY c.item_id"
        )
    counts = {"items": warehouse.row_count(con, table.name)}
    for m in MODALITY_TABLES:
        counts[f"{m}_present"] = int(
            con.execute(f"SELECT count(*) FROM item_features WHERE {m}_present").fetchall()[0][0]
        )
    return counts


def load_item_features(con: duckdb.DuckDBPyConnection, until: datetime | None = None) -> ItemFeatures:
    """Read the ``item_features`` table as an :class:`ItemFeatures` (absent modality rows are zeros, masked).

    ``until``: the catalog as of that moment (naive UTC, exclusive): only items with ``added_at < until``, e.g.
    the end of day D for the model of day D; ``None``: every item.

    Raises:
        ValueError: ``item_features`` is missing or has no item (before ``until``), or a present vector is not
            finite.
    """
    if not warehouse.table_exists(con, "item_features") or warehouse.row_count(con, "item_features") == 0:
        raise ValueError("item_features is empty: materialize item_features first")
    if until is None:
        frame = con.execute("SELECT * FROM item_features ORDER BY item_id").df()
    else:
        frame = con.execute(
            "SELECT * FROM item_features WHERE CAST(added_at AS TIMESTAMP) < ? ORDER BY item_id",
            [until],
        ).df()
        if frame.empty:
            raise ValueError(f"item_features has no item added before {until} (UTC): materialize item_features")
    item_ids = frame["item_id"].astype(str).tolist()
    modalities: dict[str, np.ndarray] = {}
    masks = []
    for m in MODALITY_TABLES:
        mask = frame[f"{m}_present"].fillna(False).to_numpy(dtype=bool)
        vectors = frame[f"{m}_embedding"]
        dims = {len(v) for v in vectors[mask]}
        if not dims:
            continue  # modality absent for every item: not a model input
        if len(dims) != 1:
            raise ValueError(f"item_features.{m}_embedding: mixed widths {sorted(dims)}")
        out = np.zeros((len(frame), dims.pop()), dtype=np.float32)
        out[mask] = np.stack(vectors[mask].to_numpy()).astype(np.float32)
        modalities[m] = out
        masks.append(mask)
    genre_lists = frame["genres"].map(lambda g: list(g) if g is not None else [])
    genre_names = sorted({g for gs in genre_lists for g in gs})
    genre_index = {g: i for i, g in enumerate(genre_names)}
    genres = np.zeros((len(frame), len(genre_names)), dtype=np.float32)
    for row, gs in enumerate(genre_lists):
        genres[row, [genre_index[g] for g in gs]] = 1.0
    year = frame["year"].fillna(0).to_numpy(dtype=np.int64)
    present = np.stack(masks, axis=1) if masks else np.zeros((len(frame), 0), dtype=bool)
    features = ItemFeatures(
        item_ids=item_ids, modalities=modalities, present=present, genres=genres, genre_names=genre_names, year=year
    )
    features.validate()
    return features
