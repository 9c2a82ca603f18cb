"""DuckDB warehouse helpers: one embedded file, every write in one transaction.

Conventions (see DESIGN.md): ``user_id``/``item_id`` are VARCHAR; event times are naive ``TIMESTAMP`` in UTC;
partition windows are half-open ``[start, end)`` timestamp ranges; embeddings are ``FLOAT[d]`` arrays.
Results are always fetched whole (``fetchall``): DuckDB 2 refuses new work on a connection with a pending result.
All values reach SQL as bound parameters or registered DataFrames, never by string formatting; table and column
names come from this module's constants only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd

# Table DDL in one place; ``ensure_schema`` creates what is missing.
TABLES: dict[str, str] = {
    "raw_events": """
        partition_date DATE NOT NULL,
        user_id VARCHAR,
        item_id VARCHAR,
        timestamp_raw VARCHAR,
        value_raw VARCHAR,
        source VARCHAR NOT NULL,
        source_row BIGINT NOT NULL
    """,
    "interactions": """
        user_id VARCHAR NOT NULL,
        item_id VARCHAR NOT NULL,
        timestamp TIMESTAMP NOT NULL,
        value DOUBLE NOT NULL
    """,
    "quarantine": """
        stage VARCHAR NOT NULL,
        partition_date DATE,
        reason VARCHAR NOT NULL,
        user_id VARCHAR,
        item_id VARCHAR,
        timestamp_raw VARCHAR,
        value_raw VARCHAR,
        source VARCHAR,
        source_row BIGINT
    """,
}


def connect(path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the warehouse file (created if missing, parent folders too) with the tables of ``TABLES``.

    Raises:
        duckdb.IOException: another process holds the write lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
    if not read_only:
        ensure_schema(con)
    return con


@contextlib.contextmanager
def session(path: str | Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """``connect`` as a context manager that always closes the connection."""
    con = connect(path, read_only=read_only)
    try:
        yield con
    finally:
        con.close()


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the tables of ``TABLES`` that do not exist yet."""
    for name, columns in TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN … COMMIT, with ROLLBACK on any exception (a crash mid-write leaves the previous state)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether ``table`` exists in the main schema."""
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main' AND table_name = ?", [table]
    ).fetchall()
    return bool(row and row[0][0])


def insert_frame(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> int:
    """Insert ``frame`` into ``table`` by column name; returns the row count. Call inside a transaction."""
    if frame.empty:
        return 0
    con.register("_insert_frame", frame)
    try:
        cols = ", ".join(f'"{c}"' for c in frame.columns)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _insert_frame")
    finally:
        con.unregister("_insert_frame")
    return len(frame)


def replace_window(
    con: duckdb.DuckDBPyConnection,
    table: str,
    column: str,
    start: datetime,
    end: datetime,
    frame: pd.DataFrame,
    extra_where: str = "",
    extra_params: Sequence[object] = (),
) -> int:
    """Replace the rows of ``table`` whose ``column`` lies in ``[start, end)`` by ``frame``, in one transaction.

    Re-running with the same frame gives the same rows (no duplicates). ``start``/``end`` are naive UTC datetimes;
    ``column`` is a TIMESTAMP or DATE column, compared as a timestamp. Returns the number of rows inserted.
    """
    with transaction(con):
        con.execute(
            f"DELETE FROM {table} WHERE CAST({column} AS TIMESTAMP) >= ? AND CAST({column} AS TIMESTAMP) < ? {extra_where}",
            [start, end, *extra_params],
        )
        return insert_frame(con, table, frame)


def replace_table(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> int:
    """Atomically replace the whole of ``table`` with ``frame`` (readers see the old or the new table)."""
    con.register("_replace_frame", frame)
    try:
        with transaction(con):
            con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM _replace_frame")
    finally:
        con.unregister("_replace_frame")
    return len(frame)


def read_frame(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] = ()) -> pd.DataFrame:
    """Run a parameterised query and return a DataFrame."""
    return con.execute(sql, list(params)).df()


def row_count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    """Rows in ``table`` (0 if it does not exist)."""
    if not table_exists(con, table):
        return 0
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])


def embedding_hashes(con: duckdb.DuckDBPyConnection, table: str, model_id: str) -> dict[str, str]:
    """``item_id -> content_hash`` of the stored embeddings made by ``model_id`` (empty if no table)."""
    if not table_exists(con, table):
        return {}
    rows = con.execute(f"SELECT item_id, content_hash FROM {table} WHERE model_id = ?", [model_id]).fetchall()
    return dict(rows)


def sync_embeddings(
    con: duckdb.DuckDBPyConnection,
    table: str,
    model_id: str,
    item_ids: Sequence[str],
    content_hashes: Sequence[str],
    vectors_for_changed: Callable[[list[int]], "np.ndarray"],
) -> dict[str, int]:
    """Bring ``table`` (``item_id, model_id, content_hash, embedding FLOAT[d], encoded_at``) in line with the catalog.

    Only items that are new, whose ``content_hash`` changed, or that were encoded by another model are encoded:
    ``vectors_for_changed(positions)`` gets their positions in ``item_ids`` and returns ``(len(positions), d)``
    float32. Rows for items no longer listed are removed. One transaction: a crash leaves the previous table.

    Returns:
        counts ``{"encoded": …, "reused": …, "removed": …, "total": …}``.

    Raises:
        ValueError: the vectors' row count or width disagrees with the request or the stored width.
    """
    import numpy as np
    import pyarrow as pa

    stored = embedding_hashes(con, table, model_id)
    changed = [i for i, (item, h) in enumerate(zip(item_ids, content_hashes)) if stored.get(item) != h]
    vectors = np.asarray(vectors_for_changed(changed), dtype=np.float32) if changed else None
    if vectors is not None and (vectors.ndim != 2 or vectors.shape[0] != len(changed)):
        raise ValueError(f"{table}: expected ({len(changed)}, d) vectors, got {getattr(vectors, 'shape', None)}")
    dim = None if vectors is None else int(vectors.shape[1])
    with transaction(con):
        if table_exists(con, table):
            stored_dim = con.execute(
                "SELECT data_type FROM information_schema.columns WHERE table_name = ? AND column_name = 'embedding'",
                [table],
            ).fetchall()[0][0]
            if dim is not None and stored_dim != f"FLOAT[{dim}]":
                con.execute(f"DROP TABLE {table}")  # the model's width changed: every row is re-encoded below
                if len(changed) != len(item_ids):
                    raise ValueError(f"{table}: width changed to {dim}; re-encode all items")
        if dim is not None:
            con.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (item_id VARCHAR PRIMARY KEY, model_id VARCHAR NOT NULL, "
                f"content_hash VARCHAR NOT NULL, embedding FLOAT[{dim}] NOT NULL, encoded_at TIMESTAMP NOT NULL)"
            )
        removed = 0
        if table_exists(con, table):
            keep = pd.DataFrame({"item_id": list(item_ids)})
            con.register("_keep_items", keep)
            removed = con.execute(
                f"DELETE FROM {table} WHERE model_id <> ? OR item_id NOT IN (SELECT item_id FROM _keep_items)",
                [model_id],
            ).fetchall()[0][0]
            con.unregister("_keep_items")
        if changed:
            flat = pa.array(vectors.reshape(-1), type=pa.float32())
            batch = pa.table(
                {
                    "item_id": pa.array([item_ids[i] for i in changed], type=pa.string()),
                    "model_id": pa.array([model_id] * len(changed), type=pa.string()),
                    "content_hash": pa.array([content_hashes[i] for i in changed], type=pa.string()),
                    "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
                }
            )
            con.register("_new_embeddings", batch)
            con.execute(f"DELETE FROM {table} WHERE item_id IN (SELECT item_id FROM _new_embeddings)")
            con.execute(
                f"INSERT INTO {table} SELECT item_id, model_id, content_hash, embedding, now()::TIMESTAMP "
                "FROM _new_embeddings"
            )
            con.unregister("_new_embeddings")
    return {
        "encoded": len(changed),
        "reused": len(item_ids) - len(changed),
        "removed": int(removed or 0),
        "total": len(item_ids),
    }


def read_interactions(con: duckdb.DuckDBPyConnection, until: datetime | None = None) -> pd.DataFrame:
    """Interactions with ``timestamp < until`` (all when ``None``), ordered by time.

    Returns ``user_id, item_id`` (str), ``timestamp`` (datetime64, naive UTC), ``value`` (float64).
    """
    if until is None:
        return con.execute("SELECT * FROM interactions ORDER BY timestamp, user_id, item_id").df()
    return con.execute(
        "SELECT * FROM interactions WHERE timestamp < ? ORDER BY timestamp, user_id, item_id", [until]
    ).df()
