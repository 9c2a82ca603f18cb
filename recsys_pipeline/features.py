"""The ``item_features`` table: per item, one vector per modality with a presence flag, plus side features.

Columns: ``item_id``; for each modality ``m`` in ``MODALITY_TABLES``: ``{m}_embedding FLOAT[d_m]`` (NULL when the
item lacks it) and ``{m}_present BOOLEAN``; ``genres VARCHAR[]``; ``year INTEGER`` (NULL when unknown).
Adding a modality is one entry in ``MODALITY_TABLES`` and its embeddings table.
"""

from __future__ import annotations

import duckdb
import numpy as np

from recsys_pipeline import warehouse
from recsys_pipeline.model.content import ItemContent

# modality name -> embeddings table (item_id, model_id, content_hash, embedding FLOAT[d], encoded_at). An item
# without a row (no file, or a failure listed in ``media_failures``) gets a NULL vector and ``{m}_present = FALSE``;
# ``load_item_content`` turns that into a zero row masked by the model, never a vector passed off as real.
MODALITY_TABLES: dict[str, str] = {"text": "text_embeddings", "image": "image_embeddings", "audio": "audio_embeddings"}


def build_item_features(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """(Re)build ``item_features`` from ``item_catalog`` and the modality tables, atomically.

    Returns counts: ``items`` and ``{m}_present`` per modality.

    Raises:
        ValueError: ``item_catalog`` does not exist yet.
    """
    if not warehouse.table_exists(con, "item_catalog"):
        raise ValueError("item_features needs item_catalog: materialize item_catalog first")
    present = {m: t for m, t in MODALITY_TABLES.items() if warehouse.table_exists(con, t)}
    select = ["c.item_id"]
    joins = []
    for m, table in MODALITY_TABLES.items():
        if m in present:
            select += [f"{m}.embedding AS {m}_embedding", f"{m}.item_id IS NOT NULL AS {m}_present"]
            joins.append(f"LEFT JOIN {table} AS {m} ON {m}.item_id = c.item_id")
        else:
            select += [f"NULL::FLOAT[] AS {m}_embedding", f"FALSE AS {m}_present"]
    select += ["c.genres", "c.year::INTEGER AS year"]
    sql = f"SELECT {', '.join(select)} FROM item_catalog AS c {' '.join(joins)} ORDER BY c.item_id"
    with warehouse.transaction(con):
        con.execute(f"CREATE OR REPLACE TABLE item_features AS {sql}")
    counts = {"items": warehouse.row_count(con, "item_features")}
    for m in MODALITY_TABLES:
        counts[f"{m}_present"] = int(
            con.execute(f"SELECT count(*) FROM item_features WHERE {m}_present").fetchall()[0][0]
        )
    return counts


def load_item_content(con: duckdb.DuckDBPyConnection) -> ItemContent:
    """Read ``item_features`` into the model's ``ItemContent`` (absent modality rows are zeros, masked).

    Raises:
        ValueError: ``item_features`` is missing or empty, or a present vector is not finite.
    """
    if not warehouse.table_exists(con, "item_features") or warehouse.row_count(con, "item_features") == 0:
        raise ValueError("item_features is empty: materialize item_features first")
    frame = con.execute("SELECT * FROM item_features ORDER BY item_id").df()
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
    content = ItemContent(
        item_ids=item_ids, modalities=modalities, present=present, genres=genres, genre_names=genre_names, year=year
    )
    content.validate()
    return content
