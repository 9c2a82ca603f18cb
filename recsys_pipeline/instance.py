"""The local Dagster instance under the home (orchestration layer; imports Dagster).

- :func:`prepare` points ``DAGSTER_HOME`` at ``<home>/dagster`` (its ``dagster.yaml`` written from the package's one
  template by ``settings.ensure_home``) and relaxes SQLite's fsync there (:func:`relax_sqlite_sync`). The ``recsys``
  commands and the code-location loader call it; importing a module never does.
- :func:`free_slots_of_dead_steps`: the ``duckdb`` concurrency pool. Every asset that writes the warehouse takes
  the one slot of the ``duckdb`` pool (``pool=DUCKDB_POOL``; ``concurrency: pools: default_limit: 1`` in
  dagster.yaml), because DuckDB lets one process write a file at a time. Dagster frees a slot when its step ends. A
  step whose process was killed (SIGKILL, OOM killer, power cut) never ends: its run stays "started" and the slot
  stays claimed, so every later DuckDB step would wait for it forever. The default run launcher cannot check run
  workers (Dagster's run monitoring does not cover it), so this does it for this local, single-machine instance.

SQLite sync: Dagster's SQLite storage opens a connection per event and commits each one; with the default
``synchronous=FULL`` every event costs two fsyncs. A single-run backfill of the bundled data logs about 33,000
events (8,215 daily partitions x 2 assets x planned + materialized), which took over 10 minutes; with
``synchronous=OFF`` the same events cost ~5 times less (measured: 200 partitions, 70 s -> 13 s). The trade-off: an
OS crash or power loss (not a process crash) can lose or corrupt the latest run history; the warehouse (DuckDB)
and MLflow store are not affected. ``RECSYS_DAGSTER_SQLITE_SYNC=full`` keeps SQLite's default; a production
instance uses Postgres storage instead (another ``dagster.yaml``).

Batched event writes: even with ``synchronous=OFF``, Dagster's SQLite event log opens a new engine and compiles a
new INSERT for every event (about 16 ms per partition materialization, 8,215 x 2 of them for the bundled data).
Dagster hands the materializations of a partition range to ``store_event_batch`` when ``DAGSTER_EVENT_BATCH_SIZE``
is set (:func:`prepare` sets it), but its SQLite storage stores them one by one;
:class:`BatchedSqliteEventLogStorage` (the template's ``event_log_storage``) writes a batch in two transactions.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys

import dagster as dg
from dagster._config import Field, StringSource
from dagster._core.events import DagsterEventType
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from sqlalchemy import event
from sqlalchemy.engine import Engine

from recsys_pipeline.settings import HomePaths, ensure_home, get_settings

__all__ = [
    "DUCKDB_POOL",
    "EVENT_BATCH_SIZE",
    "BatchedSqliteEventLogStorage",
    "prepare",
    "relax_sqlite_sync",
    "free_slots_of_dead_steps",
    "step_lines",
]

DUCKDB_POOL = "duckdb"
# Events per store_event_batch call (Dagster buffers a step's partition materializations up to this many).
EVENT_BATCH_SIZE = 1000


def prepare(paths: HomePaths | None = None) -> HomePaths:
    """Make ``paths`` (default: the settings' home) the home of this process: folders and ``dagster.yaml``,
    ``RECSYS_HOME`` and ``DAGSTER_HOME``, the SQLite sync hook. Idempotent. Returns the paths."""
    paths = ensure_home(paths or get_settings().paths)
    os.environ["RECSYS_HOME"] = str(paths.root)
    os.environ["DAGSTER_HOME"] = str(paths.dagster_home)
    # One planned event per asset for a single-run backfill instead of one per partition (Dagster's switch);
    # the cost: partitions of a failed run are not marked failed, the run is.
    os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "1")
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", str(EVENT_BATCH_SIZE))
    relax_sqlite_sync()
    return paths


_installed = False


def relax_sqlite_sync() -> None:
    """Register the connect hook once per process (no effect when ``RECSYS_DAGSTER_SQLITE_SYNC=full``)."""
    global _installed
    if _installed or get_settings().dagster_sqlite_sync == "full":
        return

    @event.listens_for(Engine, "connect")
    def _relax_sync(dbapi_connection, _record) -> None:
        home = os.environ.get("DAGSTER_HOME")
        if not home or not isinstance(dbapi_connection, sqlite3.Connection):
            return
        files = [row[2] for row in dbapi_connection.execute("PRAGMA database_list").fetchall()]
        if any(f and os.path.abspath(f).startswith(os.path.abspath(home) + os.sep) for f in files):
            dbapi_connection.execute("PRAGMA synchronous=OFF")

    _installed = True


_BATCHABLE = {
    DagsterEventType.ASSET_MATERIALIZATION,
    DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
    DagsterEventType.ASSET_OBSERVATION,
}


class BatchedSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's SQLite event log storage with a real ``store_event_batch``: a batch of asset materializations or
    observations, planned or done, of one run (what Dagster batches: one step's partition events) is written in one
    transaction on the run's shard and one on the index shard, with the same rows as one ``store_event`` per event.
    Anything else goes through ``store_event``. Measured (``benchmarks/pipeline.py --section events --partitions
    2000``, 2 cores, load 3.4): 2,000 daily partitions x 2 assets in one run, 85.6 s -> 1.2 s.

    Config (``dagster.yaml``): ``base_dir`` (default ``$DAGSTER_HOME/history/runs``, where Dagster's default
    SQLite storage keeps its event logs, so a home's history stays readable).
    """

    def __init__(self, base_dir: str | None = None, inst_data=None):
        home = os.environ.get("DAGSTER_HOME")
        if base_dir is None and not home:
            raise ValueError("BatchedSqliteEventLogStorage needs base_dir or DAGSTER_HOME")
        super().__init__(base_dir or os.path.join(home, "history", "runs"), inst_data=inst_data)

    @classmethod
    def config_type(cls):
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> BatchedSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def store_event_batch(self, events) -> None:
        if not events:
            return
        run_ids = {e.run_id for e in events}
        if len(run_ids) != 1 or not all(
            e.is_dagster_event and e.dagster_event_type in _BATCHABLE and e.dagster_event.asset_key for e in events
        ):
            for e in events:
                self.store_event(e)
            return
        rows = [self._event_to_row(e) for e in events]
        with self.run_connection(next(iter(run_ids))) as conn:
            conn.execute(SqlEventLogStorageTable.insert(), rows)
        insert = SqlEventLogStorageTable.insert().returning(SqlEventLogStorageTable.c.id, sort_by_parameter_order=True)
        with self.index_transaction() as conn:
            ids = [row[0] for row in conn.execute(insert, rows)]
            self._store_asset_event_tags(conn, events, ids)
            last: dict = {}  # asset key -> (event, id): the asset row keeps the latest event only
            for e, event_id in zip(events, ids):
                last[e.dagster_event.asset_key] = (e, event_id)
            for e, event_id in last.values():
                self._store_asset_event(conn, e, event_id)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def free_slots_of_dead_steps(instance: dg.DagsterInstance, pool: str = DUCKDB_POOL) -> list[str]:
    """Free the slots (and queue places) of ``pool`` held by runs whose processes are gone; mark those runs failed.

    A run's hold is stale when the run has finished, or when neither its run process (the ``pid`` of its
    ``RUN_START`` event) nor the processes of its slot-holding steps (``STEP_START``) exist on this machine any
    more. Only valid for an instance whose runs execute on this machine (the local SQLite instance under the home).

    Returns:
        the ids of the runs whose slots were freed, sorted.
    """
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    info = storage.get_concurrency_info(pool)
    steps_by_run: dict[str, set[str]] = {}
    for hold in [*info.claimed_slots, *info.pending_steps]:
        steps_by_run.setdefault(hold.run_id, set()).add(hold.step_key)
    freed = []
    for run_id, steps in sorted(steps_by_run.items()):
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            events = instance.all_logs(run_id, of_type={dg.DagsterEventType.RUN_START, dg.DagsterEventType.STEP_START})
            pids = {
                e.dagster_event.pid
                for e in events
                if e.dagster_event is not None and e.dagster_event.pid and (e.step_key is None or e.step_key in steps)
            }
            if not pids or any(_alive(pid) for pid in pids):
                continue
            instance.report_run_failed(
                run,
                f"the processes of this run (pids {sorted(pids)}) are gone; its {pool!r} concurrency slots were freed",
            )
        storage.free_concurrency_slots_for_run(run_id)
        freed.append(run_id)
    return freed


class _StepLineHandler(logging.Handler):
    """Prints one line when a step starts and one when it ends (the run's own events, nothing else)."""

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        if event is None:
            return
        kind = event.event_type_value
        if kind == "STEP_START":
            print(f"==> {event.step_key}", file=sys.stdout, flush=True)
        elif kind == "STEP_SUCCESS":
            seconds = (event.event_specific_data.duration_ms or 0.0) / 1000
            print(f"    done in {seconds:.1f} s", file=sys.stdout, flush=True)
        elif kind == "STEP_FAILURE":
            print(f"    {event.step_key} failed", file=sys.stdout, flush=True)


@dg.logger(description="One line per step start and end (what `recsys demo` / `recsys backfill` print).")
def step_lines(_init_context) -> logging.Logger:
    logger = logging.Logger("recsys.steps", level=logging.DEBUG)
    logger.addHandler(_StepLineHandler())
    return logger
