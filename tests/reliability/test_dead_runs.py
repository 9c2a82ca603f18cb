"""Dead runs never block, with real processes and Dagster's own CLI (``dagster asset materialize``, no daemon):

- a run killed (SIGKILL) while holding the ``duckdb`` pool slot is marked failed and its slot freed when the next
  plain ``dagster`` run starts, and the MLflow run it left ``RUNNING`` is marked ``KILLED``;
- a run waiting for a live run's slot gives up after ``RECSYS_POOL_WAIT_TIMEOUT`` naming the holding run, and
  ends at once on SIGTERM.

The holding run is made to hold the slot by keeping its step waiting for DuckDB's file lock (another process holds
it), which is where a slow or stuck write holds it in real life.
"""

import signal
import subprocess
import sys
import textwrap
import time

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from recsys_pipeline.data import warehouse
from recsys_pipeline.instance import DUCKDB_POOL
from tests.reliability.support import PROJECT_ROOT, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from recsys_pipeline.data import warehouse
    con = warehouse.connect(sys.argv[1])  # read-write: holds DuckDB's file lock until closed
    Path(sys.argv[2]).touch()
    time.sleep(600)
    """
)


def hold_lock(paths, tmp_path, children) -> subprocess.Popen:
    ready = tmp_path / f"lock-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(paths.warehouse), str(ready)], cwd=PROJECT_ROOT)
    children.processes.append(proc)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "lock holder never took the lock"
        time.sleep(0.05)
    return proc


def slot_holder(instance) -> str | None:
    claimed = instance.event_log_storage.get_concurrency_info(DUCKDB_POOL).claimed_slots
    return claimed[0].run_id if claimed else None


def pending_run(instance, other_than: str) -> str | None:
    pending = instance.event_log_storage.get_concurrency_info(DUCKDB_POOL).pending_steps
    return next((s.run_id for s in pending if s.run_id != other_than), None)


def test_a_killed_runs_slot_never_blocks_a_plain_dagster_run(cli_home, tmp_path):
    paths, children, _ = cli_home
    holder = hold_lock(paths, tmp_path, children)
    doomed = children.materialize("raw_events", "2018-09-16")
    with dg.DagsterInstance.from_config(str(paths.dagster_home)) as instance:
        run_id = wait_for(lambda: slot_holder(instance), doomed, "the first run never took the pool slot")
        time.sleep(1.0)  # its step is inside, waiting for the DuckDB lock
        # what its training would have left: an MLflow run of that Dagster run, RUNNING
        client = MlflowClient(paths.mlflow_tracking_uri)
        experiment = client.create_experiment("recsys_pipeline", artifact_location=str(paths.mlflow_artifacts))
        orphan = client.create_run(experiment, tags={"dagster.run_id": run_id}).info.run_id
        unrelated = client.create_run(experiment, tags={"dagster.run_id": "not-dead-yet"}).info.run_id
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)
        holder.kill()
        holder.wait()
        assert slot_holder(instance) == run_id  # the dead step keeps its slot

        started = time.monotonic()
        following = children.materialize("raw_events", "2018-09-17")
        out, _ = following.communicate(timeout=300)
        assert following.returncode == 0, out[-4000:]
        assert time.monotonic() - started < 200
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
        assert slot_holder(instance) is None
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(orphan).data.tags["recsys.killed_reason"] == f"its Dagster run {run_id} is dead"
    assert client.get_run(unrelated).info.status == "RUNNING"  # a run this instance does not know is not judged
    with warehouse.session(paths.warehouse, read_only=True) as con:
        days = con.execute("SELECT DISTINCT partition_date::VARCHAR FROM raw_events").fetchall()
    assert days == [("2018-09-17",)]


def test_a_waiting_run_gives_up_naming_the_holder_and_ends_on_sigterm(cli_home, tmp_path):
    paths, children, _ = cli_home
    hold_lock(paths, tmp_path, children)
    live = children.materialize("raw_events", "2018-09-16")
    with dg.DagsterInstance.from_config(str(paths.dagster_home)) as instance:
        holder_run = wait_for(lambda: slot_holder(instance), live, "the first run never took the pool slot")

        bounded = children.materialize("raw_events", "2018-09-17", RECSYS_POOL_WAIT_TIMEOUT="5")
        out, _ = bounded.communicate(timeout=240)
        assert bounded.returncode != 0
        assert "gave up after RECSYS_POOL_WAIT_TIMEOUT=5 s while waiting" in out
        assert f"'duckdb' pool slot held by run(s) {holder_run}" in out

        waiting = children.materialize("raw_events", "2018-09-18")
        wait_for(lambda: pending_run(instance, holder_run), waiting, "the second run never queued for the slot")
        time.sleep(3.0)  # the watchdog has seen it waiting
        sent = time.monotonic()
        waiting.send_signal(signal.SIGTERM)
        out, _ = waiting.communicate(timeout=60)
        assert time.monotonic() - sent < 30, "SIGTERM did not end the waiting run promptly"
        assert waiting.returncode != 0
        assert "terminated (SIGTERM or SIGINT) while waiting" in out and holder_run in out
        assert slot_holder(instance) == holder_run and live.poll() is None  # the live run is untouched
        assert pending_run(instance, holder_run) is None  # the waiting runs left no queue place behind
