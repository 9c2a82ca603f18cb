"""The scale-out profile (``RECSYS_PROFILE=postgres``): the Dagster instance and the MLflow store on one PostgreSQL
server, checked for real against a throwaway server this module starts (``initdb`` + ``pg_ctl`` on a unix socket in
a temporary folder; skipped, saying why, where the server binaries are missing: ``.ci/run`` installs Debian's
``postgresql``).

- settings: the profile, its URL and executor, and their errors (no server needed);
- the home's ``dagster.yaml`` from the postgres template: Dagster's PostgreSQL storage, the same ``duckdb`` pool, no
  SQLite tuning, loads as an instance config without a server;
- with the server: a multi-process single-run backfill of 7 daily partitions overlapping a second multi-process run
  of 4 partitions (2 of them the same days), and two trainings logging to MLflow at once on an empty store. Every
  run succeeds, each day's rows are in DuckDB once, the ``duckdb`` steps never overlap, no lock error anywhere, two
  MLflow runs and two registered versions, and the aliases agree with the gate's decisions.
"""

import glob
import os
import pickle
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pandas as pd
import pytest
import yaml

from recsys_pipeline.data import warehouse
from recsys_pipeline.data.catalog import build_item_catalog
from recsys_pipeline.data.schema import ITEM_CATALOG
from recsys_pipeline.data.sources import MovieLensSource
from recsys_pipeline.settings import (
    DAGSTER_YAML_TEMPLATES,
    POSTGRES_URL_SCHEME,
    HomePaths,
    SettingsError,
    ensure_home,
    get_settings,
)
from tests.reliability.support import DAGSTER, Children, child_env

# errors that must appear in no log of the runs: DuckDB's file lock, PostgreSQL's lock and uniqueness failures
LOCK_ERRORS = ("Could not set lock", "WarehouseLockedError", "deadlock detected", "UniqueViolation", "IntegrityError")


STORAGES = ("run_storage", "event_log_storage", "schedule_storage")


# ------------------------------------------------------------------------------------------------- settings
def test_postgres_profile_needs_a_url_and_names_the_variable(monkeypatch):
    monkeypatch.setenv("RECSYS_PROFILE", "postgres")
    with pytest.raises(SettingsError, match="RECSYS_POSTGRES_URL=None: RECSYS_PROFILE=postgres needs RECSYS_POSTGRES"):
        get_settings()
    monkeypatch.setenv("RECSYS_POSTGRES_URL", "postgresql://recsys:s3cret@db/recsys")  # SQLAlchemy 2.1: psycopg 3
    with pytest.raises(SettingsError, match=r"must start with postgresql\+psycopg2://") as caught:
        get_settings()
    assert "s3cret" not in str(caught.value) and "RECSYS_POSTGRES_URL='***'" in str(caught.value)
    url = f"{POSTGRES_URL_SCHEME}recsys:s3cret@db:5433/recsys"
    monkeypatch.setenv("RECSYS_POSTGRES_URL", url)
    settings = get_settings()
    assert settings.mlflow_tracking_uri() == url + "?options=-csearch_path%3Dmlflow"  # MLflow: schema mlflow
    assert settings.resolved_executor == "multiprocess"
    assert "s3cret" not in repr(settings)


def test_sqlite_profile_keeps_the_home_store_and_refuses_the_k8s_executor(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    settings = get_settings()
    assert settings.profile == "sqlite" and settings.resolved_executor == "in_process"
    assert settings.mlflow_tracking_uri() == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    monkeypatch.setenv("RECSYS_EXECUTOR", "k8s")
    with pytest.raises(SettingsError, match="RECSYS_EXECUTOR='k8s': k8s needs RECSYS_PROFILE=postgres"):
        get_settings()


def test_postgres_home_gets_the_postgres_instance_and_refuses_a_mixed_home(monkeypatch, tmp_path):
    from dagster._core.instance.config import dagster_instance_config

    from recsys_pipeline import instance

    monkeypatch.setenv("RECSYS_PROFILE", "postgres")
    monkeypatch.setenv("RECSYS_POSTGRES_URL", f"{POSTGRES_URL_SCHEME}recsys@/recsys?host=/nowhere")
    paths = ensure_home(HomePaths.at(tmp_path / "home"))
    written = yaml.safe_load((paths.dagster_home / "dagster.yaml").read_text())
    sqlite = yaml.safe_load(DAGSTER_YAML_TEMPLATES["sqlite"].read_text())
    url_from_env = {"postgres_url": {"env": "RECSYS_POSTGRES_URL"}}
    assert {k: (written[k]["class"], written[k]["config"]) for k in STORAGES} == {
        "run_storage": ("PostgresRunStorage", url_from_env),
        "event_log_storage": ("GuardedPostgresEventLogStorage", url_from_env),  # not BatchedSqliteEventLogStorage
        "schedule_storage": ("PostgresScheduleStorage", url_from_env),
    }
    assert written["concurrency"] == sqlite["concurrency"]  # the duckdb pool: one slot, op granularity
    assert written["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}
    config, custom_class = dagster_instance_config(str(paths.dagster_home))  # validates; connects to nothing
    assert custom_class is None and all(config[k]["config"] == url_from_env for k in STORAGES)
    monkeypatch.setattr(instance, "_installed", False)
    instance.relax_sqlite_sync()
    assert instance._installed is False  # no SQLite fsync hook on this profile

    monkeypatch.delenv("RECSYS_PROFILE")  # the same home, now on the sqlite profile
    with pytest.raises(SettingsError, match="RECSYS_PROFILE='sqlite' but .* is the Dagster instance of the 'postgres'"):
        ensure_home(paths)


def test_the_code_location_executor_follows_the_profile(monkeypatch):
    from recsys_pipeline.definitions import build_definitions

    def executor_name() -> str:
        return build_definitions().resolve_job_def("recsys_pipeline_job").executor_def.name

    assert executor_name() == "in_process"
    monkeypatch.setenv("RECSYS_PROFILE", "postgres")
    monkeypatch.setenv("RECSYS_POSTGRES_URL", f"{POSTGRES_URL_SCHEME}recsys@/recsys?host=/nowhere")
    assert executor_name() == "multi_or_in_process_executor"
    monkeypatch.setenv("RECSYS_EXECUTOR", "in_process")
    assert executor_name() == "in_process"


# ------------------------------------------------------------------------------------------------ the server
def _server_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: Debian's ``/usr/lib/postgresql/<version>/bin`` (newest first),
    else where ``pg_ctl`` is on ``PATH``."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    return next((Path(c) for c in candidates if (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists()), None)


@pytest.fixture
def postgres_server():
    """A throwaway PostgreSQL server on a unix socket (no TCP port) and its database ``recsys``:
    ``.url`` (``postgresql+psycopg2://recsys@/recsys?host=<socket folder>``), ``.log``. Stopped and removed after.

    As root (CI), the server runs as the ``postgres`` user (``initdb`` refuses root), in a folder of its own under
    the system temporary folder (pytest's ``tmp_path`` is closed to other users). ``fsync=off``: nothing here must
    survive a power cut.
    """
    import psycopg2

    binaries = _server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql (.ci/run does)")
    as_postgres: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="recsys-pg-"))
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as (initdb refuses root)")
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    data, log = root / "data", root / "server.log"
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    subprocess.run([*as_postgres, binaries / "initdb", "-D", data, "-U", "recsys", "--auth=trust", "--no-sync"], **run)
    options = f"-k {root} -c listen_addresses='' -c fsync=off -c max_connections=200"
    subprocess.run(
        [*as_postgres, binaries / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o", options, "start"], **run
    )
    try:
        con = psycopg2.connect(host=str(root), user="recsys", dbname="postgres")
        con.autocommit = True
        con.cursor().execute("CREATE DATABASE recsys")
        con.close()
        yield SimpleNamespace(url=f"{POSTGRES_URL_SCHEME}recsys@/recsys?host={root}", log=log)
    finally:
        subprocess.run([*as_postgres, binaries / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


TRAIN = textwrap.dedent(
    """
    import pickle, sys
    from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
    from recsys_pipeline.registry import tracking
    from recsys_pipeline.registry.runs import train_and_log
    from recsys_pipeline.settings import get_settings
    inputs, worker = sys.argv[1], sys.argv[2]
    features, interactions, models = pickle.load(open(inputs, "rb"))
    settings = get_settings()
    uri = settings.mlflow_tracking_uri()
    tracking.quiet()
    experiment = tracking.experiment_id(uri, "recsys_pipeline", str(settings.paths.mlflow_artifacts))
    result = train_and_log(interactions, features, ModelConfig(**models[worker]), TrainerConfig(accelerator="cpu",
                           devices=1, num_threads=1), uri, experiment, "recsys_ranker", run_name=f"train {worker}",
                           tags={"test.worker": worker})
    print("TRAINED", result.run_id, result.model_version, flush=True)
    """
)


def test_two_claims_of_the_last_free_slot_read_at_once_give_it_to_one_on_postgres(postgres_server):
    from recsys_pipeline.instance import GuardedPostgresEventLogStorage
    from tests.reliability.support import race_for_one_slot

    race_for_one_slot(*(GuardedPostgresEventLogStorage(postgres_server.url) for _ in range(2)))


@pytest.mark.slow
@pytest.mark.reliability
def test_backfill_second_run_and_two_trainings_at_once_on_postgres(postgres_server, tmp_path, movielens_slice, toy):
    from mlflow.tracking import MlflowClient

    from recsys_pipeline.instance import DUCKDB_POOL, HOST_TAG
    from recsys_pipeline.registry.gate import ChampionPolicy
    from recsys_pipeline.registry.model_registry import CHALLENGER, CHAMPION, gate_model_version

    started = time.monotonic()
    data = movielens_slice(tmp_path / "ml", "2018-09-01", "2018-09-25")
    profile = {"RECSYS_PROFILE": "postgres", "RECSYS_POSTGRES_URL": postgres_server.url}
    os.environ.update(profile)  # this process reads the same instance and store as its children (undone below)
    try:
        paths = ensure_home(HomePaths.at(tmp_path / "home"))
        # what any first `recsys` command does (instance.prepare): create the instance's tables once, so the
        # processes below do not race to create them on the empty database
        from recsys_pipeline.instance import ensure_postgres_storage

        ensure_postgres_storage(paths)
        with warehouse.session(paths.warehouse) as con:
            warehouse.replace_table(con, ITEM_CATALOG, build_item_catalog(*MovieLensSource(str(data)).read_catalog()))
        children = Children(
            child_env(paths, RECSYS_MOVIELENS_PATH=str(data), RECSYS_PARTITIONS_START="2018-09-01", **profile)
        )
        inputs = tmp_path / "toy.pkl"
        model = {**toy.FAST, "max_epochs": 2, "val_fraction": 0.0}
        models = {"a": model, "b": {**model, "seed": 1}}  # two configs: the gate compares recorded figures
        inputs.write_bytes(pickle.dumps((toy.features(), toy.interactions(), models)))
        try:
            backfill_days = ("2018-09-10", "2018-09-16")  # 7 days, one run (BackfillPolicy.single_run)
            second_days = ("2018-09-15", "2018-09-18")  # 4 days, 2 of them the backfill's too
            procs = [
                children.start(
                    [
                        DAGSTER,
                        "asset",
                        "materialize",
                        "-m",
                        "recsys_pipeline.definitions",
                        "--select",
                        "raw_events,interactions",
                        "--partition-range",
                        "...".join(days),
                    ]
                )
                for days in (backfill_days, second_days)
            ]
            procs += [children.start([sys.executable, "-c", TRAIN, str(inputs), w]) for w in ("a", "b")]
            outputs = [p.communicate(timeout=600)[0] for p in procs]
        finally:
            children.kill_all()
        wall = time.monotonic() - started
        for proc, out in zip(procs, outputs):
            assert proc.returncode == 0, out[-5000:]
        for out in outputs:
            assert not [e for e in LOCK_ERRORS if e in out], out[-5000:]
        server_log = postgres_server.log.read_text()
        assert not [e for e in ("deadlock detected", "could not obtain lock") if e in server_log], server_log[-3000:]

        # DuckDB: each day's ratings exactly once in raw_events and interactions
        ratings = pd.read_csv(data / "ratings.csv")
        day_of = pd.to_datetime(ratings["timestamp"], unit="s").dt.strftime("%Y-%m-%d")
        days = pd.date_range(backfill_days[0], second_days[1]).strftime("%Y-%m-%d")
        expected = {d: int((day_of == d).sum()) for d in days if (day_of == d).any()}
        with warehouse.session(paths.warehouse, read_only=True) as con:
            got = dict(
                con.execute("SELECT strftime(timestamp, '%Y-%m-%d'), count(*) FROM interactions GROUP BY 1").fetchall()
            )
            raw = dict(
                con.execute(
                    "SELECT strftime(partition_date, '%Y-%m-%d'), count(*) FROM raw_events GROUP BY 1"
                ).fetchall()
            )
            duplicates = con.execute(
                "SELECT count(*) - (SELECT count(*) FROM (SELECT DISTINCT user_id, item_id, timestamp "
                "FROM interactions)) FROM interactions"
            ).fetchall()[0][0]
        assert got == expected and raw == expected and duplicates == 0

        # Dagster, on PostgreSQL: two runs, both succeeded, multi-process, their duckdb steps one at a time
        with dg.DagsterInstance.from_config(str(paths.dagster_home)) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            runs = instance.get_runs()
            assert len(runs) == 2 and {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
            assert {r.tags["dagster/asset_partition_range_start"] for r in runs} == {backfill_days[0], second_days[0]}
            assert all(r.tags.get(HOST_TAG) for r in runs)
            stats = {r.run_id: instance.get_run_stats(r.run_id) for r in runs}
            first, second = sorted(stats.values(), key=lambda st: st.start_time)
            assert second.start_time < first.end_time  # the two runs overlapped in time
            intervals, step_pids = [], 0
            for run in runs:
                logs = instance.all_logs(run.run_id)
                run_pid = next(
                    e.dagster_event.pid for e in logs if e.dagster_event_type == dg.DagsterEventType.RUN_START
                )
                starts = {e.step_key: e for e in logs if e.dagster_event_type == dg.DagsterEventType.STEP_START}
                ends = {
                    e.step_key: e.timestamp for e in logs if e.dagster_event_type == dg.DagsterEventType.STEP_SUCCESS
                }
                assert {"raw_events", "interactions"} <= set(starts) <= set(ends)
                assert all(e.dagster_event.pid != run_pid for e in starts.values())  # a process per step
                step_pids += len({e.dagster_event.pid for e in starts.values()})
                intervals += [(starts[k].timestamp, ends[k], run.run_id[:8], k) for k in ("raw_events", "interactions")]
            info = instance.event_log_storage.get_concurrency_info(DUCKDB_POOL)
            assert info.slot_count == 1 and info.claimed_slots == [] and info.pending_steps == []
        intervals.sort()
        for (s1, e1, *a), (s2, e2, *b) in zip(intervals, intervals[1:]):
            assert e1 <= s2, f"duckdb steps overlapped: {a} [{s1}, {e1}] and {b} [{s2}, {e2}]"

        # MLflow, on PostgreSQL: two finished runs, two versions; gated one at a time, as model_evaluation does
        uri = get_settings().mlflow_tracking_uri()
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("recsys_pipeline")
        mlflow_runs = client.search_runs([experiment.experiment_id])
        assert sorted(r.data.tags["test.worker"] for r in mlflow_runs) == ["a", "b"]
        assert {r.info.status for r in mlflow_runs} == {"FINISHED"}
        versions = client.search_model_versions("name = 'recsys_ranker'")
        assert sorted(int(v.version) for v in versions) == [1, 2]
        assert {v.run_id for v in versions} == {r.info.run_id for r in mlflow_runs}
        for version, ndcg in (("1", 0.30), ("2", 0.25)):  # v2 below v1: v1 stays champion, v2 challenger
            figures = pd.DataFrame(
                {
                    "protocol": "user_last_fraction",
                    "model": ["ours", "popularity"],
                    "metric": "ndcg_at_10",
                    "value": [ndcg, 0.10],
                }
            )
            gate_model_version(uri, "recsys_ranker", version, figures, ChampionPolicy())
        champion = client.get_model_version_by_alias("recsys_ranker", CHAMPION)
        challenger = client.get_model_version_by_alias("recsys_ranker", CHALLENGER)
        assert (str(champion.version), str(challenger.version)) == ("1", "2")
        decisions = {
            str(v.version): v.tags["gate.decision"] for v in client.search_model_versions("name = 'recsys_ranker'")
        }
        assert decisions == {"1": "champion", "2": "challenger"}
    finally:
        for name in profile:
            os.environ.pop(name, None)
    rows = sum(expected.values())
    print(
        f"\npostgres profile: 2 Dagster runs (multi-process, {step_pids} step processes; backfill 7 days + second "
        f"run 4 days, 2 shared) + 2 MLflow trainings at once: {len(days)} days ({len(expected)} with ratings), {rows} "
        f"interactions, each once; "
        f"{len(intervals)} duckdb steps, none overlapping; 2 MLflow runs, 2 versions; {wall:.0f} s"
    )
