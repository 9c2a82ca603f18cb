"""The ``duckdb`` concurrency pool (orchestration; imports Dagster).

Every asset that writes the warehouse takes the one slot of the ``duckdb`` pool (``pool=DUCKDB_POOL`` on the asset,
``concurrency: pools: default_limit: 1`` in dagster.yaml), because DuckDB lets one process write a file at a time.
Dagster frees a slot when its step ends. A step whose process was killed (SIGKILL, OOM killer, power cut) never
ends: its run stays "started" and the slot stays claimed, so every later DuckDB step would wait for it forever.
The default run launcher cannot check run workers (Dagster's run monitoring does not cover it), so
:func:`free_slots_of_dead_steps` does it for this local, single-machine instance: `recsys demo` calls it before
running anything.
"""

from __future__ import annotations

import os

import dagster as dg

DUCKDB_POOL = "duckdb"


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
            pids = {e.dagster_event.pid for e in events if e.dagster_event is not None and e.dagster_event.pid
                    and (e.step_key is None or e.step_key in steps)}
            if not pids or any(_alive(pid) for pid in pids):
                continue
            instance.report_run_failed(run, f"the processes of this run (pids {sorted(pids)}) are gone; its "
                                            f"{pool!r} concurrency slots were freed")
        storage.free_concurrency_slots_for_run(run_id)
        freed.append(run_id)
    return freed
