"""The local Dagster instance under the home (orchestration layer; imports Dagster).

- :func:`prepare` points ``DAGSTER_HOME`` at ``<home>/dagster`` (its ``dagster.yaml`` written from the profile's
  template by ``settings.ensure_home``: SQLite files under the home, or the ``postgres`` profile's PostgreSQL
  storage) and, on SQLite, relaxes its fsync there (:func:`relax_sqlite_sync`). The ``recsys`` commands and the
  code-location loader call it; importing a module never does.
- :func:`free_slots_of_dead_steps`: the ``duckdb`` concurrency pool. Every asset that writes the warehouse takes
  the one slot of the ``duckdb`` pool (``pool=DUCKDB_POOL``; ``concurrency: pools: default_limit: 1`` in
  dagster.yaml), because DuckDB lets one process write a file at a time. Dagster frees a slot when its step ends. A
  step whose process was killed (SIGKILL, OOM killer, power cut) never ends: its run stays "started" and the slot
  stays claimed, so every later DuckDB step would wait for it forever. The default run launcher cannot check run
  workers (Dagster's run monitoring does not cover it), so this does it for the runs that execute on this machine:
  a run's host is its tag :data:`HOST_TAG`; a run without one is judged only on a SQLite (or in-memory) instance,
  which no other machine shares. On Kubernetes the daemon's run monitoring (``K8sRunLauncher`` checks its pods)
  does it instead.
- :func:`pool_aware_executor`: the code location's executor (``RECSYS_EXECUTOR``: Dagster's in-process executor,
  its ``multi_or_in_process`` executor, or dagster-k8s's ``k8s_job_executor``, wrapped), so every run that Dagster
  starts with it (``dagster asset materialize``, a UI launch with or without the daemon, a schedule or sensor run)
  frees dead runs' slots when it starts and, while one of its steps waits for the pool, every few seconds; a step
  that waits longer than ``RECSYS_POOL_WAIT_TIMEOUT`` for a live run fails its run with a message naming the holding
  run; SIGTERM ends a waiting run at once. ``recsys`` (``execute_in_process``, which always uses Dagster's own
  in-process executor) frees dead slots itself before each run. Either way, MLflow runs left ``RUNNING`` by a dead
  Dagster run are marked ``KILLED`` (:func:`kill_orphaned_mlflow_runs`).

SQLite sync: Dagster's SQLite storage opens a connection per event and commits each one; with the default
``synchronous=FULL`` every event costs two fsyncs. A single-run backfill of the bundled data logs about 33,000
events (8,215 daily partitions x 2 assets x planned + materialized), which took over 10 minutes; with
``synchronous=OFF`` the same events cost ~5 times less (measured: 200 partitions, 70 s -> 13 s). The trade-off: an
OS crash or power loss (not a process crash) can lose or corrupt the latest run history; the warehouse (DuckDB)
and MLflow store are not affected. ``RECSYS_DAGSTER_SQLITE_SYNC=full`` keeps SQLite's default; the ``postgres``
profile (``RECSYS_PROFILE=postgres``, the template ``dagster-postgres.yaml``) uses Dagster's PostgreSQL storage,
which none of this SQLite tuning touches.

Batched event writes: even with ``synchronous=OFF``, Dagster's SQLite event log opens a new engine and compiles a
new INSERT for every event (about 16 ms per partition materialization, 8,215 x 2 of them for the bundled data).
Dagster hands the materializations of a partition range to ``store_event_batch`` when ``DAGSTER_EVENT_BATCH_SIZE``
is set (:func:`prepare` sets it), but its SQLite storage stores them one by one;
:class:`BatchedSqliteEventLogStorage` (the template's ``event_log_storage``) writes a batch in two transactions.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import sys
import threading
import time

import dagster as dg
import sqlalchemy as db
from dagster._config import Field, StringSource
from dagster._core.events import DagsterEventType
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.schema import ConcurrencySlotsTable, SqlEventLogStorageTable
from dagster._utils.concurrency import ConcurrencySlotStatus
from sqlalchemy import event
from sqlalchemy.engine import Engine

from recsys_pipeline.settings import HomePaths, ensure_home, get_settings, library_environment

__all__ = [
    "DUCKDB_POOL",
    "EVENT_BATCH_SIZE",
    "HOST_TAG",
    "BatchedSqliteEventLogStorage",
    "GuardedPostgresEventLogStorage",
    "SlotClaimByCompareAndSet",
    "PoolWaitError",
    "prepare",
    "ensure_postgres_storage",
    "relax_sqlite_sync",
    "free_slots_of_dead_steps",
    "kill_orphaned_mlflow_runs",
    "pool_aware_executor",
    "pool_aware_in_process_executor",
    "step_lines",
]

DUCKDB_POOL = "duckdb"
# The run tag naming the machine (host name) whose processes execute the run: only those are judged dead by pid.
HOST_TAG = "recsys/host"
# Events per store_event_batch call (Dagster buffers a step's partition materializations up to this many).
EVENT_BATCH_SIZE = 1000


def prepare(paths: HomePaths | None = None) -> HomePaths:
    """Make ``paths`` (default: the settings' home) the home of this process: folders and ``dagster.yaml``,
    ``RECSYS_HOME`` and ``DAGSTER_HOME``, the SQLite sync hook (sqlite profile). Idempotent. Returns the paths.

    Raises:
        SettingsError: a setting is invalid, or the home's ``dagster.yaml`` serves the other profile.
    """
    paths = ensure_home(paths or get_settings().paths)
    os.environ["RECSYS_HOME"] = str(paths.root)
    os.environ["DAGSTER_HOME"] = str(paths.dagster_home)
    # One planned event per asset for a single-run backfill instead of one per partition (Dagster's switch);
    # the cost: partitions of a failed run are not marked failed, the run is.
    os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "1")
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", str(EVENT_BATCH_SIZE))
    library_environment(paths)
    relax_sqlite_sync()
    ensure_postgres_storage(paths)
    return paths


# PostgreSQL advisory lock held while one process creates the Dagster instance's tables (MLflow's store has its own)
DAGSTER_STORE_LOCK_KEY = 7_305_142_093_611_870_002
_ready_homes: set[str] = set()


def ensure_postgres_storage(paths: HomePaths) -> None:
    """On the postgres profile, make sure the Dagster instance's tables exist: one process at a time opens the
    instance of ``paths`` (which creates them when missing) under a PostgreSQL advisory lock
    (:data:`DAGSTER_STORE_LOCK_KEY`); once per home and process. Other profiles: nothing.

    Why: ``dagster-postgres`` creates its tables when an instance is first opened, and two processes doing it at
    once on an empty database fail (measured in ``tests/orchestration/test_postgres_profile.py``: ``type
    "secondary_indexes" already exists``). Every ``recsys`` command and the code location go through
    :func:`prepare`; a bare ``dagster`` command started on an empty database before any of them can still race.

    Raises:
        sqlalchemy.exc.OperationalError: the server cannot be reached.
    """
    settings = get_settings()
    if settings.profile != "postgres" or str(paths.dagster_home) in _ready_homes:
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(str(settings.postgres_url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": DAGSTER_STORE_LOCK_KEY})
            try:
                dg.DagsterInstance.from_config(str(paths.dagster_home)).dispose()
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": DAGSTER_STORE_LOCK_KEY})
    finally:
        engine.dispose()
    _ready_homes.add(str(paths.dagster_home))


_installed = False


def relax_sqlite_sync() -> None:
    """Register the connect hook once per process (no effect when ``RECSYS_DAGSTER_SQLITE_SYNC=full``, nor on the
    ``postgres`` profile, whose instance has no SQLite file)."""
    global _installed
    settings = get_settings()
    if _installed or settings.dagster_sqlite_sync == "full" or settings.profile != "sqlite":
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


class SlotClaimByCompareAndSet:
    """A Dagster SQL event log storage mixin: a pool slot is claimed by compare-and-set.

    Dagster (1.13.27) claims a slot by reading a free slot row with ``SELECT ... FOR UPDATE SKIP LOCKED`` and then
    updating that row by its id. SQLite ignores ``FOR UPDATE``, and Dagster's PostgreSQL event log runs each
    statement in autocommit, which releases the row lock as soon as the read ends. So two processes that read the
    same free row both "claim" it, and a pool of one slot (the ``duckdb`` pool) runs two steps at once: two
    processes claiming together on SQLite both succeeded in 4 of 14 tries. Here the update also requires the row to
    be still free, one statement that the database executes atomically; the loser is told ``BLOCKED`` and retries
    like any blocked step (``tests/orchestration/test_instance.py`` forces that interleaving).
    """

    def _claim_concurrency_slot(self, concurrency_key: str, run_id: str, step_key: str) -> ConcurrencySlotStatus:
        """Claim a free slot of ``concurrency_key`` for the step: ``CLAIMED``, or ``BLOCKED`` when no slot is free
        or another process took the one read here first (compare-and-set on ``step_key IS NULL``)."""
        slots = ConcurrencySlotsTable.c
        free = db.and_(slots.concurrency_key == concurrency_key, slots.step_key.is_(None), slots.deleted.is_(False))
        with self.index_connection() as conn:
            row = conn.execute(db.select(slots.id).where(free).limit(1)).fetchone()
            if row is None:
                return ConcurrencySlotStatus.BLOCKED
            taken = conn.execute(
                ConcurrencySlotsTable.update().values(run_id=run_id, step_key=step_key).where(slots.id == row[0], free)
            ).rowcount
        return ConcurrencySlotStatus.CLAIMED if taken else ConcurrencySlotStatus.BLOCKED


class BatchedSqliteEventLogStorage(SlotClaimByCompareAndSet, SqliteEventLogStorage):
    """Dagster's SQLite event log storage with a real ``store_event_batch``: a batch of asset materializations or
    observations, planned or done, of one run (what Dagster batches: one step's partition events) is written in one
    transaction on the run's shard and one on the index shard, with the same rows as one ``store_event`` per event.
    Anything else goes through ``store_event``. Measured (``benchmarks/pipeline.py --section events --partitions
    2000``, 2 cores, load 3.4): 2,000 daily partitions x 2 assets in one run, 85.6 s -> 1.2 s.

    Pool slots are claimed by compare-and-set (:class:`SlotClaimByCompareAndSet`).

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


try:  # the `postgres` extra
    from dagster_postgres.event_log import PostgresEventLogStorage
except ImportError:  # pragma: no cover - the extra is not installed
    PostgresEventLogStorage = None

if PostgresEventLogStorage is not None:

    class GuardedPostgresEventLogStorage(SlotClaimByCompareAndSet, PostgresEventLogStorage):
        """Dagster's PostgreSQL event log storage (``dagster_postgres``), whose pool slots are claimed by
        compare-and-set (:class:`SlotClaimByCompareAndSet`): the ``event_log_storage`` of the ``postgres`` profile's
        template. Config: Dagster's ``pg_config`` (``postgres_url``, or ``postgres_db``)."""

        @classmethod
        def from_config_value(cls, inst_data, config_value) -> GuardedPostgresEventLogStorage:
            from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

            return cls(
                inst_data=inst_data,
                postgres_url=pg_url_from_config(config_value),
                should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                token_provider=get_token_provider_from_config(config_value),
            )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _local_instance(instance: dg.DagsterInstance) -> bool:
    """The instance's runs can only execute on this machine: its run storage is a SQLite file or in memory."""
    from dagster._core.storage.runs import InMemoryRunStorage, SqliteRunStorage

    return isinstance(instance.run_storage, SqliteRunStorage | InMemoryRunStorage)


def _executes_here(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """The run's processes are on this machine: its :data:`HOST_TAG` is this host name; without the tag, only on an
    instance no other machine shares (:func:`_local_instance`). A pid says nothing about another machine's process."""
    host = run.tags.get(HOST_TAG)
    return host == socket.gethostname() if host is not None else _local_instance(instance)


def free_slots_of_dead_steps(instance: dg.DagsterInstance, pool: str = DUCKDB_POOL) -> list[str]:
    """Free the slots (and queue places) of ``pool`` held by runs whose processes are gone; mark those runs failed.

    A run's hold is stale when the run has finished, or when it executes on this machine (:func:`_executes_here`)
    and neither its run process (the ``pid`` of its ``RUN_START`` event) nor the processes of its slot-holding steps
    (``STEP_START``) exist any more. A started run of another machine is never judged here (on Kubernetes the
    daemon's run monitoring checks its pods).

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
            if not _executes_here(instance, run):
                continue
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


def _run_is_dead(instance: dg.DagsterInstance, run_id: str) -> bool:
    """The Dagster run is finished, or started on this machine (:func:`_executes_here`) but none of its processes
    exist any more. A run this instance does not know (another instance's, e.g. a test's) is not judged: ``False``."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return False
    if run.is_finished:
        return True
    if run.status != dg.DagsterRunStatus.STARTED or not _executes_here(instance, run):
        return False  # queued or starting, or another machine's: not ours to judge
    events = instance.all_logs(run_id, of_type={dg.DagsterEventType.RUN_START, dg.DagsterEventType.STEP_START})
    pids = {e.dagster_event.pid for e in events if e.dagster_event is not None and e.dagster_event.pid}
    return bool(pids) and not any(_alive(pid) for pid in pids)


def kill_orphaned_mlflow_runs(instance: dg.DagsterInstance, tracking_uri: str | None = None) -> list[str]:
    """Mark ``KILLED`` the MLflow runs (tag ``dagster.run_id``) still ``RUNNING`` whose Dagster run is dead
    (:func:`~recsys_pipeline.registry.tracking.kill_orphaned_runs`); ``tracking_uri`` defaults to the profile's
    store (``Settings.mlflow_tracking_uri``), and a SQLite home without an MLflow store is left alone. Returns the
    MLflow run ids marked."""
    from recsys_pipeline.registry import tracking

    if tracking_uri is None:
        settings = get_settings()
        if settings.profile == "sqlite" and not settings.paths.mlflow_db.exists():
            return []
        tracking_uri = settings.mlflow_tracking_uri()
    tracking.quiet()
    return tracking.kill_orphaned_runs(tracking_uri, lambda run_id: _run_is_dead(instance, run_id))


class PoolWaitError(RuntimeError):
    """A step of this run waited too long for a pool slot held by a live run, or the run was terminated (SIGTERM)
    while waiting; the message names the holding runs."""


class _PoolWatchdog:
    """While the run executes, every ``interval`` s: when one of its steps waits for ``pool``, free the slots of
    dead runs; when it has waited ``timeout`` s for a live run, or a SIGTERM / SIGINT arrived while it waits, end the
    run with :class:`PoolWaitError` naming the holders.

    Why a thread: Dagster's in-process wait loop sleeps on the main thread and only records a signal (its
    interrupt capture, which SIGTERM is mapped to) without looking at it, so a waiting run ignored SIGTERM. The
    thread reads that record and raises the error in the main thread (``PyThreadState_SetAsyncExc``): it surfaces
    when the main thread wakes from its current sleep (at most 15 s, Dagster's longest claim interval).
    """

    def __init__(self, instance: dg.DagsterInstance, run_id: str, pool: str, timeout: float, interval: float = 1.0):
        self.instance, self.run_id, self.pool, self.timeout, self.interval = instance, run_id, pool, timeout, interval
        self.waiting_since: float | None = None
        self.holders: list[str] = []
        self.error: str | None = None
        self._main = threading.main_thread().ident if threading.current_thread() is threading.main_thread() else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="recsys-pool-watchdog", daemon=True)

    def __enter__(self) -> _PoolWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def message(self) -> str:
        holders = ", ".join(self.holders) or "none recorded"
        waited = 0.0 if self.waiting_since is None else time.monotonic() - self.waiting_since
        return (
            f"{self.error or 'stopped'} while waiting {waited:.0f} s for the {self.pool!r} pool slot held by run(s) "
            f"{holders}; nothing of the waiting step was written (cancel the holding run, or raise "
            "RECSYS_POOL_WAIT_TIMEOUT)"
        )

    def _raise_in_main(self) -> None:
        import ctypes

        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._main), ctypes.py_object(PoolWaitError))

    def _watch(self) -> None:
        from dagster._utils.interrupts import check_captured_interrupt  # Dagster's record of SIGINT / SIGTERM

        storage = self.instance.event_log_storage
        while not self._stop.wait(self.interval):
            try:
                info = storage.get_concurrency_info(self.pool)
            except Exception:  # the instance is closing: nothing to watch
                return
            mine_claimed = any(s.run_id == self.run_id for s in info.claimed_slots)
            mine_pending = any(s.run_id == self.run_id for s in info.pending_steps)
            if not mine_pending or mine_claimed:
                self.waiting_since = None
                continue
            self.waiting_since = self.waiting_since or time.monotonic()
            self.holders = sorted({s.run_id for s in info.claimed_slots if s.run_id != self.run_id})
            if free_slots_of_dead_steps(self.instance, self.pool):
                kill_orphaned_mlflow_runs(self.instance)
                self.waiting_since = None
                continue
            if check_captured_interrupt():
                self.error = "terminated (SIGTERM or SIGINT)"
            elif time.monotonic() - self.waiting_since > self.timeout:
                self.error = f"gave up after RECSYS_POOL_WAIT_TIMEOUT={self.timeout:g} s"
            if self.error and self._main is not None:
                self._raise_in_main()
                return


class _PoolAwareExecutor(dg.Executor):
    """A Dagster executor with dead slots freed at run start and a :class:`_PoolWatchdog` around it; the run is
    tagged with this machine's name (:data:`HOST_TAG`)."""

    def __init__(self, inner: dg.Executor, timeout: float) -> None:
        self._inner, self._timeout = inner, timeout

    @property
    def retries(self):
        return self._inner.retries

    @property
    def step_dependency_config(self):
        return self._inner.step_dependency_config

    def execute(self, plan_context, execution_plan):
        instance = plan_context.instance
        instance.add_run_tags(plan_context.run_id, {HOST_TAG: socket.gethostname()})
        freed = free_slots_of_dead_steps(instance)
        if freed:
            plan_context.log.warning(
                f"runs {', '.join(freed)} were killed mid-step: marked failed, their {DUCKDB_POOL!r} slots freed"
            )
        killed = kill_orphaned_mlflow_runs(instance)
        if killed:
            plan_context.log.warning(f"MLflow runs {', '.join(killed)} of dead Dagster runs marked KILLED")
        with _PoolWatchdog(instance, plan_context.run_id, DUCKDB_POOL, self._timeout) as watchdog:
            try:
                yield from self._inner.execute(plan_context, execution_plan)
            except (PoolWaitError, dg.DagsterExecutionInterruptedError):
                # Dagster may turn the recorded SIGTERM into its own interruption while ours unwinds
                if watchdog.error is None:
                    raise
                raise PoolWaitError(watchdog.message()) from None


def _pool_aware(inner: dg.ExecutorDefinition) -> dg.ExecutorDefinition:
    """``inner`` (same name, config and requirements) that never lets a dead run's ``duckdb`` slot block a run, and
    never waits for a live run's slot longer than ``RECSYS_POOL_WAIT_TIMEOUT`` (see the module docstring)."""

    @dg.executor(name=inner.name, config_schema=inner.config_schema, requirements=inner.get_requirements)
    def _executor(init_context) -> dg.Executor:
        return _PoolAwareExecutor(inner.executor_creation_fn(init_context), get_settings().pool_wait_timeout)

    return _executor


pool_aware_in_process_executor = _pool_aware(dg.in_process_executor)


def pool_aware_executor(kind: str) -> dg.ExecutorDefinition:
    """The code location's executor for ``RECSYS_EXECUTOR`` (``Settings.resolved_executor``), each with its
    Dagster config (run config ``execution: config: ...``) and the ``duckdb`` pool's dead-slot handling:

    - ``in_process``: Dagster's ``in_process`` executor, every step in the run's process (the sqlite default: one
      DuckDB file, and a process per step would re-import torch and transformers for every asset and check);
    - ``multiprocess``: Dagster's ``multi_or_in_process`` executor (its default, ``multiprocess``: a process per
      step, ``max_concurrent`` at once; ``in_process: {}`` selects one process), the postgres default;
    - ``k8s``: dagster-k8s's ``k8s_job_executor``, a Kubernetes job per step (``deploy/``).

    Either way the DuckDB-writing steps stay one at a time: each claims the one slot of the ``duckdb`` pool.

    Raises:
        ValueError: an unknown kind.
        ImportError: ``k8s`` without dagster-k8s (``pip install "recsys_pipeline[k8s]"``).
    """
    if kind == "in_process":
        return pool_aware_in_process_executor
    if kind == "multiprocess":
        return _pool_aware(dg.multi_or_in_process_executor)
    if kind == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as exc:
            raise ImportError('RECSYS_EXECUTOR=k8s needs dagster-k8s: pip install "recsys_pipeline[k8s]"') from exc
        return _pool_aware(k8s_job_executor)
    raise ValueError(f"unknown executor {kind!r}: in_process, multiprocess or k8s")


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
