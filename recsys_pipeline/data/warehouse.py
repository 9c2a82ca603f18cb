"""DuckDB warehouse: one embedded file, every write in one transaction, all DDL from ``data.schema``.

Conventions (see DESIGN.md): ``user_id``/``item_id`` are VARCHAR; event times are naive ``TIMESTAMP`` in UTC;
partition windows are half-open ``[start, end)`` timestamp ranges; embeddings are ``FLOAT[d]`` arrays.
Results are always fetched whole (``fetchall``): DuckDB 2 refuses new work on a connection with a pending result.
All values reach SQL as bound parameters or registered DataFrames, never by string formatting; table and column
names come from ``data.schema`` only.

Why not ``dagster-duckdb``'s ``DuckDBResource``: it retries a held lock with a fixed backoff and no deadline, while
a run here must wait a bounded, configured time and then fail with a message naming the file; and this layer has no
Dagster import (notebooks and the CLI use it too).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from recsys_pipeline.data.schema import EVENT_TABLES, INTERACTIONS, TABLES, Table, embedding_table
from recsys_pipeline.settings import get_settings, pause_point

LOCK_TIMEOUT_ENV = "RECSYS_DUCKDB_LOCK_TIMEOUT"


class WarehouseLockedError(duckdb.IOException):
    """Another process kept the warehouse file locked for longer than the lock timeout."""


def lock_timeout() -> float:
    """Seconds ``connect`` waits for another process's lock: ``RECSYS_DUCKDB_LOCK_TIMEOUT`` (default 300).

    Raises:
        SettingsError: the variable is not a number >= 0.
    """
    return float(get_settings().duckdb_lock_timeout)


def connect(path: str | Path, read_only: bool = False, timeout: float | None = None) -> duckdb.DuckDBPyConnection:
    """Open the warehouse file (created if missing, parent folders too) with the event tables of ``data.schema``.

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
    """Create the event tables (``schema.EVENT_TABLES``) that do not exist yet, and add the declared nullable
    columns missing from tables an older release wrote (``raw_events.parse_error``, ``raw_line``, ...)."""
    for table in EVENT_TABLES:
        con.execute(f"CREATE TABLE IF NOT EXISTS {table.name} ({table.ddl()})")
    for table in TABLES.values():
        _add_nullable_columns(con, table)


def _add_nullable_columns(con: duckdb.DuckDBPyConnection, table: Table) -> None:
    """Add the declared nullable columns an existing ``table`` lacks (written by an older release)."""
    have = {
        row[0]
        for row in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ?",
            [table.name],
        ).fetchall()
    }
    for column in table.columns if have else ():
        if column.name not in have and column.nullable:
            con.execute(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.sql_type}")


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection, name: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN … COMMIT, with ROLLBACK on any exception (a crash mid-write leaves the previous state).

    ``name`` (the table written, or the group of tables) names the fault-injection point
    ``<name>.before_commit`` (:func:`recsys_pipeline.settings.pause_point`), hit after the body ran.
    """
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
        pause_point(f"{name}.before_commit")
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
        # after a failed INSERT the transaction is aborted and unregister raises too: keep the INSERT's error
        with contextlib.suppress(duckdb.TransactionException):
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
    with transaction(con, table):
        con.execute(
            f"DELETE FROM {table} WHERE CAST({column} AS TIMESTAMP) >= ? AND CAST({column} AS TIMESTAMP) < ?",
            [start, end],
        )
        return insert_frame(con, table, frame)


def replace_table(
    con: duckdb.DuckDBPyConnection, table: Table, frame: pd.DataFrame, *, own_transaction: bool = True
) -> int:
    """Atomically replace the whole of ``table`` with ``frame`` (readers see the old or the new table).

    The table is created with its declared columns and types (``data.schema``); ``frame`` must hold every
    declared column (others are ignored). ``own_transaction=False`` when the caller already holds a transaction
    that must cover other writes too. Returns the row count.

    Raises:
        KeyError: ``frame`` lacks a declared column.
        duckdb.Error: a value does not fit its declared type (nothing is replaced).
    """
    missing = [c for c in table.column_names if c not in frame.columns]
    if missing:
        raise KeyError(f"{table.name}: frame lacks column(s) {missing}")
    with transaction(con, table.name) if own_transaction else contextlib.nullcontext():
        con.execute(f"CREATE OR REPLACE TABLE {table.name} ({table.ddl()})")
        insert_frame(con, table.name, frame[table.column_names])
    return len(frame)


def ensure_table(con: duckdb.DuckDBPyConnection, table: Table) -> None:
    """Create ``table`` with its declared columns when it does not exist yet."""
    con.execute(f"CREATE TABLE IF NOT EXISTS {table.name} ({table.ddl()})")


def has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    """Whether ``table`` exists with a column ``column`` (a table an older release wrote may lack one)."""
    rows = con.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ? "
        "AND column_name = ?",
        [table, column],
    ).fetchall()
    return bool(rows[0][0])


def replace_partition(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    day: date,
    frame: pd.DataFrame,
    *,
    column: str = "partition_date",
    keep_days: int | None = None,
    own_transaction: bool = True,
) -> dict[str, int]:
    """Replace the rows of ``table`` whose ``column`` (a DATE) is ``day`` by ``frame``, other days untouched; with
    ``keep_days``, also delete the days before ``day - (keep_days - 1)`` (retention counted back from ``day``).

    Re-running with the same frame gives the same rows (no duplicates); one transaction (``own_transaction=False``
    when the caller holds one that covers other writes too), so a crash leaves the previous state. The table is
    created from its declaration when missing. A table an older release wrote without ``column`` (one whole set
    of rows) gets the column and loses its old rows: they carry no day of the data (``produced_on`` is the
    wall-clock day they were made, which would date them after every partition and keep them past retention).

    Args:
        day: the UTC day (``datetime.date``) the rows belong to; every row of ``frame`` must carry it in
            ``column``.
        frame: rows holding every declared column (others are ignored).

    Returns:
        ``{"rows": inserted, "days_deleted": n, "rows_deleted": n}`` (the last two: retention).

    Raises:
        KeyError: ``frame`` lacks a declared column.
        ValueError: a row of ``frame`` is of another day, or ``keep_days < 1``.
    """
    missing = [c for c in table.column_names if c not in frame.columns]
    if missing:
        raise KeyError(f"{table.name}: frame lacks column(s) {missing}")
    days = pd.to_datetime(frame[column]).dt.date.unique() if len(frame) else []
    if any(d != day for d in days):
        raise ValueError(f"{table.name}: rows of {sorted(set(days) - {day})[:3]} given for the partition {day}")
    if keep_days is not None and keep_days < 1:
        raise ValueError(f"keep_days must be at least 1, got {keep_days}")
    with transaction(con, table.name) if own_transaction else contextlib.nullcontext():
        if table_exists(con, table.name) and not has_column(con, table.name, column):
            con.execute(f"ALTER TABLE {table.name} ADD COLUMN {column} DATE")
            con.execute(f"DELETE FROM {table.name}")
        _add_nullable_columns(con, table)
        ensure_table(con, table)
        con.execute(f"DELETE FROM {table.name} WHERE {column} = ?", [day])
        inserted = insert_frame(con, table.name, frame[table.column_names])
        retention = {"days_deleted": 0, "rows_deleted": 0}
        if keep_days is not None:
            cutoff = day - timedelta(days=keep_days - 1)
            n_days, n_rows = con.execute(
                f"SELECT count(DISTINCT {column}), count(*) FROM {table.name} WHERE {column} < ?", [cutoff]
            ).fetchall()[0]
            con.execute(f"DELETE FROM {table.name} WHERE {column} < ?", [cutoff])
            retention = {"days_deleted": int(n_days), "rows_deleted": int(n_rows)}
    return {"rows": inserted, **retention}


def partition_days(con: duckdb.DuckDBPyConnection, table: str, column: str = "partition_date") -> list[date]:
    """The distinct days of ``table.column`` (a DATE), ascending; ``[]`` when the table or column is absent."""
    if not table_exists(con, table) or not has_column(con, table, column):
        return []
    rows = con.execute(f"SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL ORDER BY 1").fetchall()
    return [r[0] for r in rows]


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
    vectors_for_changed: Callable[[list[int]], np.ndarray],
    keep: Sequence[str] | None = None,
) -> dict[str, int]:
    """Bring ``table`` (``item_id, model_id, content_hash, embedding FLOAT[d], encoded_at``) in line with the catalog.

    Only items that are new, whose ``content_hash`` changed, or that were encoded by another model are encoded:
    ``vectors_for_changed(positions)`` gets their positions in ``item_ids`` and returns ``(len(positions), d)``
    float32. Rows for items not in ``keep`` (default: ``item_ids``; e.g. the whole catalog when ``item_ids`` are
    the items of the catalog as of one day) are removed, as are rows of another model. One transaction: a crash
    leaves the previous table.

    Returns:
        counts ``{"encoded": …, "reused": …, "removed": …, "total": …}``.

    Raises:
        ValueError: the vectors' row count or width disagrees with the request or the stored width.
    """
    stored = embedding_hashes(con, table, model_id)
    changed = [i for i, (item, h) in enumerate(zip(item_ids, content_hashes)) if stored.get(item) != h]
    vectors = np.asarray(vectors_for_changed(changed), dtype=np.float32) if changed else None
    if vectors is not None and (vectors.ndim != 2 or vectors.shape[0] != len(changed)):
        raise ValueError(f"{table}: expected ({len(changed)}, d) vectors, got {getattr(vectors, 'shape', None)}")
    dim = None if vectors is None else int(vectors.shape[1])
    with transaction(con, table):
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
            con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({embedding_table(table, dim).ddl()})")
        removed = 0
        if table_exists(con, table):
            kept = pd.DataFrame({"item_id": list(item_ids if keep is None else keep)}, dtype=object)
            con.register("_keep_items", kept)
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


def read_interactions(
    con: duckdb.DuckDBPyConnection, until: datetime | None = None, since: datetime | None = None
) -> pd.DataFrame:
    """Interactions with ``since <= timestamp < until`` (naive UTC; a bound left ``None`` is open), ordered by time.

    Returns ``user_id, item_id`` (str), ``timestamp`` (datetime64, naive UTC), ``value`` (float64).
    """
    columns = ", ".join(INTERACTIONS.column_names)
    where, params = [], []
    if since is not None:
        where.append("timestamp >= ?")
        params.append(since)
    if until is not None:
        where.append("timestamp < ?")
        params.append(until)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    return con.execute(f"SELECT {columns} FROM interactions {clause}ORDER BY timestamp, user_id, item_id", params).df()


def read_tuned_params(con: duckdb.DuckDBPyConnection) -> tuple[dict, dict]:
    """``(params, about)``: the ``ModelConfig`` overrides of the chosen trial of the latest search
    (``model_tuning``) and ``about`` it (``protocol, metric, value, default_value, trials, tuned_at,
    mlflow_run_id``); ``({}, {})`` when no search was run.

    Raises:
        ValueError: the table holds no chosen trial or unreadable params (a half-written search cannot happen: the
            table is replaced in one transaction).
    """
    import json

    from recsys_pipeline.data.schema import MODEL_TUNING

    if not table_exists(con, MODEL_TUNING.name):
        return {}, {}
    rows = read_frame(con, f"SELECT * FROM {MODEL_TUNING.name} ORDER BY trial")
    if rows.empty:
        return {}, {}
    chosen = rows[rows["chosen"]]
    if len(chosen) != 1:
        raise ValueError(f"{MODEL_TUNING.name} holds {len(chosen)} chosen trials, not 1: materialize model_tuning")
    best = chosen.iloc[0]
    try:
        params = json.loads(best["params"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{MODEL_TUNING.name}: unreadable params of trial {best['trial']}: {exc}") from exc
    default = rows[rows["trial"] == 0]
    about = {
        "protocol": str(best["protocol"]),
        "metric": str(best["metric"]),
        "value": float(best["value"]),
        "default_value": float(default["value"].iloc[0]) if len(default) else float("nan"),
        "trials": len(rows),
        "tuned_at": str(best["tuned_at"]),
        "mlflow_run_id": str(best["mlflow_run_id"]),
    }
    return params, about
