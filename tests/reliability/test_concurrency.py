"""Concurrent access to the one DuckDB file, with real processes: DuckDB lets one process write a file at a time.

- a writer that finds the file locked waits (bounded backoff) and succeeds, or fails naming the file;
- two Dagster runs started together on one instance both succeed: the ``duckdb`` concurrency pool (dagster.yaml)
  serializes their DuckDB-writing steps;
- ``recsys recommend`` answers from the published snapshot while another process holds the write lock.
"""

import os
import subprocess
import sys
import textwrap
import time
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from recsys_pipeline.data import warehouse
from recsys_pipeline.data.schema import ITEM_CATALOG
from recsys_pipeline.data.schema import RECOMMENDATIONS as RECOMMENDATIONS_TABLE
from recsys_pipeline.serving.publish import publish_day
from recsys_pipeline.settings import DAGSTER_YAML_TEMPLATE, HomePaths, ensure_home

pytestmark = pytest.mark.reliability

PROJECT_ROOT = Path(__file__).resolve().parents[2]

HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from recsys_pipeline.data import warehouse
    path, seconds, ready = sys.argv[1], float(sys.argv[2]), Path(sys.argv[3])
    con = warehouse.connect(path)          # read-write: holds DuckDB's file lock until closed
    con.execute("CREATE TABLE IF NOT EXISTS holder (n INTEGER)")
    ready.touch()
    time.sleep(seconds)
    con.close()
    """
)


def hold_write_lock(path: Path, seconds: float, tmp_path: Path) -> subprocess.Popen:
    """Start a process that holds the write lock on ``path`` for ``seconds`` once it has it; returns when held."""
    ready = tmp_path / f"lock-held-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), str(seconds), str(ready)], cwd=PROJECT_ROOT)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, "lock holder exited early"
        assert time.monotonic() < deadline, "lock holder never took the lock"
        time.sleep(0.05)
    return proc


def test_writer_waits_for_the_lock_then_succeeds(tmp_path, monkeypatch):
    path = tmp_path / "w.duckdb"
    monkeypatch.setenv("RECSYS_DUCKDB_LOCK_TIMEOUT", "60")
    holder = hold_write_lock(path, 2.0, tmp_path)
    started = time.monotonic()
    with warehouse.session(path) as con:
        waited = time.monotonic() - started
        con.execute("INSERT INTO holder VALUES (7)")
        assert con.execute("SELECT list(n) FROM holder").fetchall()[0][0] == [7]
    assert holder.wait(30) == 0
    assert 1.0 < waited < 30  # it waited for the holder (2 s after it took the lock), not for the whole timeout
    holder = hold_write_lock(path, 1.0, tmp_path)  # readers wait as well: DuckDB refuses them beside a writer
    with warehouse.session(path, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM holder").fetchall()[0][0] == 1
    assert holder.wait(30) == 0


def test_lock_timeout_is_a_clear_error_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "w.duckdb"
    monkeypatch.setenv("RECSYS_DUCKDB_LOCK_TIMEOUT", "0.5")
    holder = hold_write_lock(path, 20.0, tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(warehouse.WarehouseLockedError) as caught:
            warehouse.connect(path)
        assert 0.5 <= time.monotonic() - started < 10
        message = str(caught.value)
        assert str(path) in message and "0.5 s" in message and "RECSYS_DUCKDB_LOCK_TIMEOUT" in message
        with pytest.raises(ValueError, match="RECSYS_DUCKDB_LOCK_TIMEOUT"):
            monkeypatch.setenv("RECSYS_DUCKDB_LOCK_TIMEOUT", "soon")
            warehouse.connect(path)
    finally:
        holder.kill()
        holder.wait()


MATERIALIZE_DAY = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import dagster as dg
    from recsys_pipeline import instance
    from recsys_pipeline.definitions import build_definitions
    from recsys_pipeline.resources import resources_for_home
    day, go = sys.argv[1], Path(sys.argv[2])
    paths = instance.prepare()
    resources = resources_for_home(str(paths.root))
    defs = build_definitions()
    raw_events, interactions, item_catalog = (defs.get_assets_def(n) for n in ("raw_events", "interactions",
                                                                               "item_catalog"))
    Path(str(go) + "." + day).touch()  # imported: ready to start
    while not go.exists():
        time.sleep(0.02)
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize([raw_events, interactions, item_catalog], selection=[raw_events, interactions],
                                partition_key=day, resources=resources, instance=instance, raise_on_error=False)
    print("RUN_ID", result.run_id, flush=True)
    sys.exit(0 if result.success else 1)
    """
)


@pytest.fixture
def dagster_home(tmp_path, movielens_slice):
    """A home with a small MovieLens slice and item_catalog materialized; ``env`` for child processes."""
    data = movielens_slice(tmp_path / "ml", "2018-09-01", "2018-09-25")
    home = tmp_path / "home"
    env = {
        **os.environ,
        "RECSYS_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "RECSYS_MOVIELENS_PATH": str(data),
        "RECSYS_PARTITIONS_START": "2018-09-01",
        "RECSYS_DUCKDB_LOCK_TIMEOUT": "120",
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    paths = ensure_home(HomePaths.at(home))
    from recsys_pipeline.data.catalog import build_item_catalog
    from recsys_pipeline.data.sources import MovieLensSource

    with warehouse.session(paths.warehouse) as con:
        warehouse.replace_table(con, ITEM_CATALOG, build_item_catalog(*MovieLensSource(str(data)).read_catalog()))
    import dagster as dg

    with dg.DagsterInstance.from_config(str(paths.dagster_home)):  # create its SQLite storage before the children
        pass
    return paths, env, data


@pytest.mark.slow
def test_overlapping_dagster_runs_both_succeed_serialized_by_the_pool(dagster_home, tmp_path):
    paths, env, data = dagster_home
    go = tmp_path / "go"
    days = ["2018-09-16", "2018-09-17"]  # 137 and 160 ratings
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", MATERIALIZE_DAY, day, str(go)],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for day in days
    ]
    deadline = time.monotonic() + 240
    while not all(Path(f"{go}.{day}").exists() for day in days):
        assert all(r.poll() is None for r in runs), [r.communicate() for r in runs]
        assert time.monotonic() < deadline, "children did not start"
        time.sleep(0.1)
    # A third process holds the write lock as both runs start: without waiting, both runs' first steps would fail
    # with "Could not set lock on file"; without the pool, both steps would be in progress at once.
    holder = hold_write_lock(paths.warehouse, 8.0, tmp_path)
    go.touch()
    outputs = [r.communicate(timeout=300) for r in runs]
    assert holder.wait(30) == 0
    for r, (out, err) in zip(runs, outputs):
        assert r.returncode == 0, out[-2000:] + err[-4000:]

    ratings = pd.read_csv(data / "ratings.csv")
    day_of = pd.to_datetime(ratings["timestamp"], unit="s").dt.strftime("%Y-%m-%d")
    expected = {d: int((day_of == d).sum()) for d in days}
    assert all(expected.values())
    with warehouse.session(paths.warehouse, read_only=True) as con:
        got = dict(
            con.execute("SELECT strftime(timestamp, '%Y-%m-%d'), count(*) FROM interactions GROUP BY 1").fetchall()
        )
        raw = dict(
            con.execute("SELECT strftime(partition_date, '%Y-%m-%d'), count(*) FROM raw_events GROUP BY 1").fetchall()
        )
    assert got == expected and raw == expected

    import dagster as dg

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    try:
        with dg.DagsterInstance.get() as instance:
            assert instance.event_log_storage.get_pool_config().default_pool_limit == 1
            intervals = []
            for out, _ in outputs:
                run_id = out.split("RUN_ID ")[1].split()[0]
                starts = {
                    e.step_key: e.timestamp for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
                }
                ends = {
                    e.step_key: e.timestamp for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
                }
                intervals += [(starts[k], ends[k], run_id, k) for k in starts if k in ("raw_events", "interactions")]
            assert instance.event_log_storage.get_concurrency_info("duckdb").slot_count == 1
    finally:
        os.environ.pop("DAGSTER_HOME", None)
    assert len(intervals) == 4
    intervals.sort()
    for (s1, e1, *a), (s2, e2, *b) in zip(intervals, intervals[1:]):
        assert e1 <= s2, f"steps overlapped: {a} [{s1}, {e1}] and {b} [{s2}, {e2}]"


def test_every_asset_opening_the_warehouse_is_in_the_pool_of_one_slot(definitions):
    import yaml

    from recsys_pipeline.instance import DUCKDB_POOL

    template = yaml.safe_load(DAGSTER_YAML_TEMPLATE.read_text())
    assert template["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}
    # every asset opens the warehouse (a reader is refused beside another process's writer): one pool for all
    pools = {
        key.to_user_string(): definitions.get_assets_def(key).op.pool for key in definitions.resolve_all_asset_keys()
    }
    assert len(pools) == 12 and pools == dict.fromkeys(pools, DUCKDB_POOL)


DAY = date(2026, 11, 29)


def publish_small(paths, model_run_id: str = "run-1", k: int = 3) -> pd.DataFrame:
    """Tables and snapshots as the ``recommendations`` asset leaves them, for users u1, u2 and items i1..i5."""
    items = pd.DataFrame(
        {
            "item_id": [f"i{n}" for n in range(1, 6)],
            "title": [f"Title {n}" for n in range(1, 6)],
            "users": [5, 4, 3, 2, 1],
            "rank": [1, 2, 3, 4, 5],
        }
    )
    recs = pd.DataFrame(
        {
            "user_id": ["u1"] * k + ["u2"] * k,
            "rank": list(range(1, k + 1)) * 2,
            "item_id": [f"i{n}" for n in range(1, k + 1)] + [f"i{n}" for n in range(5, 5 - k, -1)],
            "score": [0.9 - 0.1 * n for n in range(k)] * 2,
            "strategy": "personalized",
            "model_run_id": model_run_id,
            "model_version": "1",
            "produced_on": pd.Timestamp("2026-11-29").date(),
            "partition_date": DAY,
            "model_partition_date": DAY,
            "explanation": None,
        }
    )
    with warehouse.session(paths.warehouse) as con:
        warehouse.replace_partition(con, RECOMMENDATIONS_TABLE, DAY, recs)
    publish_day(paths, DAY, recs, items)
    return recs


def recsys(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recsys_pipeline.cli", "--home", str(home), *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RECSYS_DUCKDB_LOCK_TIMEOUT": "1"},
    )


def test_recommend_answers_while_a_writer_holds_the_lock(tmp_path):
    paths = HomePaths.at(tmp_path / "home")
    publish_small(paths)
    holder = hold_write_lock(paths.warehouse, 60.0, tmp_path)
    try:
        ok = recsys(paths.root, "recommend", "--user", "u2", "-k", "2")
        unknown = recsys(paths.root, "recommend", "--user", "nobody")
        of_day = recsys(paths.root, "recommend", "--user", "u2", "-k", "2", "--date", "2026-11-29")
        other_day = recsys(paths.root, "recommend", "--user", "u2", "--date", "2026-11-28")
        assert holder.poll() is None  # the lock was held throughout
    finally:
        holder.kill()
        holder.wait()
    assert ok.returncode == 0, ok.stderr
    assert "model run run-1" in ok.stdout.splitlines()[0]
    assert ok.stdout.index("Title 5") < ok.stdout.index("Title 4") and "Title 3" not in ok.stdout  # u2's top 2
    assert unknown.returncode == 1 and "unknown user 'nobody'" in unknown.stderr
    assert of_day.returncode == 0 and of_day.stdout == ok.stdout  # the current day is that day
    assert "Top 2 of 2026-11-29 for user u2" in ok.stdout.splitlines()[0]
    assert other_day.returncode == 1
    assert "no recommendations published for 2026-11-28; published days: 2026-11-29 .. 2026-11-29" in other_day.stderr
    assert "Could not set lock" not in ok.stderr + unknown.stderr


def test_recommend_says_nothing_published(tmp_path):
    paths = HomePaths.at(tmp_path / "home")
    with warehouse.session(paths.warehouse):  # a warehouse but no snapshot yet
        pass
    out = recsys(paths.root, "recommend", "--user", "u1")
    assert out.returncode == 2 and "nothing published" in out.stderr


def test_a_run_killed_mid_step_does_not_block_the_pool(dagster_home, tmp_path):
    import signal

    import dagster as dg

    from recsys_pipeline.instance import DUCKDB_POOL, free_slots_of_dead_steps

    paths, env, _ = dagster_home
    go_killed, go_next = tmp_path / "go-killed", tmp_path / "go-next"
    go_killed.touch()
    day = "2018-09-16"
    holder = hold_write_lock(paths.warehouse, 600.0, tmp_path)  # keeps the doomed run's step inside its write
    killed, following = (
        subprocess.Popen(
            [sys.executable, "-c", MATERIALIZE_DAY, day, str(go)],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for go in (go_killed, go_next)
    )
    with dg.DagsterInstance.from_config(str(paths.dagster_home)) as instance:
        storage = instance.event_log_storage
        deadline = time.monotonic() + 240
        while not storage.get_concurrency_info(DUCKDB_POOL).claimed_slots:
            assert killed.poll() is None and time.monotonic() < deadline, "the run never took the pool slot"
            time.sleep(0.2)
        time.sleep(1.0)  # its step has started and is waiting for the DuckDB lock
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=30)
        holder.kill()
        holder.wait()
        (slot,) = storage.get_concurrency_info(DUCKDB_POOL).claimed_slots  # a dead step keeps its slot ...
        assert instance.get_run_by_id(slot.run_id).status == dg.DagsterRunStatus.STARTED  # ... in a "started" run
        assert free_slots_of_dead_steps(instance) == [slot.run_id]
        assert instance.get_run_by_id(slot.run_id).status == dg.DagsterRunStatus.FAILURE
        assert storage.get_concurrency_info(DUCKDB_POOL).claimed_slots == []
        assert free_slots_of_dead_steps(instance) == []
    go_next.touch()
    out, err = following.communicate(timeout=300)
    assert following.returncode == 0, out[-2000:] + err[-4000:]
    with warehouse.session(paths.warehouse, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM interactions").fetchall()[0][0] == 137  # ratings of 2018-09-16
