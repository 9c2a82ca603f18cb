"""DuckDB warehouse helpers: one embedded file, every write in one transaction.

Conventions (see DESIGN.md): ``user_id``/``item_id`` are VARCHAR; event times are naive ``TIMESTAMP`` in UTC;
partition windows are half-open ``[start, end)`` timestamp ranges; embeddings are ``FLOAT[d]`` arrays.
Results are always fetched whole (``fetchall``): DuckDB 2 refuses new work on a connection with a pending result.
All values reach SQL as bound parameters or registered DataFrames, never by string formatting; table and column
names come from this module's constants only.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
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
        source_row BIGINT NOT NULL,
        parse_error VARCHAR,
        raw_line VARCHAR
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
        source_row BIGINT,
        raw_line VARCHAR
    """,
}
# Columns added after a table's first release: ``ensure_schema`` adds them to older warehouse files.
ADDED_COLUMNS: dict[str, dict[str, str]] = {
    "raw_events": {"parse_error": "VARCHAR", "raw_line": "VARCHAR"},
    "quarantine": {"raw_line": "VARCHAR"},
}


LOCK_TIMEOUT_ENV = "RECSYS_DUCKDB_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 300.0


class WarehouseLockedError(duckdb.IOException):
    """Another process kept the warehouse file locked for longer than the lock timeout."""


def lock_timeout() -> float:
    """Seconds ``connect`` waits for another process's lock: ``$RECSYS_DUCKDB_LOCK_TIMEOUT``, default 300.

    Raises:
        ValueError: the variable is not a number >= 0.
    """
    text = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also rejects nan
        raise ValueError(f"{LOCK_TIMEOUT_ENV}={text!r} must be a number of seconds >= 0")
    return seconds


def connect(path: str | Path, read_only: bool = False, timeout: float | None = None) -> duckdb.DuckDBPyConnection:
    """Open the warehouse file (created if missing, parent folders too) with the tables of ``TABLES``.

    DuckDB lets one process at a time hold a file open for writing, and no reader beside it. When another process
    holds the lock, this retries with jittered exponential backoff (50 ms doubling to 2 s) for up to ``timeout``
    seconds (``None``: :func:`lock_timeout`). Dagster runs do not normally wait here: their DuckDB-writing steps
    share the ``duckdb`` concurrency pool (dagster.yaml); this covers everything else (asset checks, the CLI, a
    script, a run on an instance without the pool).

    Raises:
        WarehouseLockedError: still locked after ``timeout`` seconds; the message names the file and the holder.
        duckdb.IOException: any other I/O error (e.g. ``read_only`` on a file that does not exist).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    budget = lock_timeout() if timeout is None else timeout
    deadline, delay = time.monotonic() + budget, 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "could not set lock" not in str(exc).lower():
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WarehouseLockedError(
                    f"warehouse {path} stayed locked by another process for {budget:g} s (DuckDB allows one "
                    f"writing process per file): wait for the run holding it or raise {LOCK_TIMEOUT_ENV}. "
                    f"DuckDB said: {exc}"
                ) from exc
            time.sleep(min(delay * random.uniform(0.5, 1.0), remaining))
            delay = min(delay * 2, 2.0)
    if not read_only:
        ensure_schema(con)
    return con


@contextlib.contextmanager
def session(
    path: str | Path, read_only: bool = False, timeout: float | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """``connect`` (same arguments and errors) as a context manager that always closes the connection."""
    con = connect(path, read_only=read_only, timeout=timeout)
    try:
        yield con
    finally:
        con.close()


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the tables of ``TABLES`` that do not exist yet; add ``ADDED_COLUMNS`` missing from older files."""
    for name, columns in TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")
    for name, added in ADDED_COLUMNS.items():
        have = {row[0] for row in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ?", [name]
        ).fetchall()}
        for column, sql_type in added.items():
            if column not in have:
                con.execute(f"ALTER TABLE {name} ADD COLUMN {column} {sql_type}")


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
) -> int:
    """Replace the rows of ``table`` whose ``column`` lies in ``[start, end)`` by ``frame``, in one transaction.

    Re-running with the same frame gives the same rows (no duplicates). ``start``/``end`` are naive UTC datetimes;
    ``column`` is a TIMESTAMP or DATE column, compared as a timestamp. Returns the number of rows inserted.
    """
    with transaction(con):
        con.execute(
            f"DELETE FROM {table} WHERE CAST({column} AS TIMESTAMP) >= ? AND CAST({column} AS TIMESTAMP) < ?",
            [start, end],
        )
        return insert_frame(con, table, frame)


def replace_table(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame, *, own_transaction: bool = True) -> int:
    """Atomically replace the whole of ``table`` with ``frame`` (readers see the old or the new table).

    ``own_transaction=False`` when the caller already holds a transaction that must cover other writes too.
    """
    con.register("_replace_frame", frame)
    try:
        if own_transaction:
            with transaction(con):
                con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM _replace_frame")
        else:
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
