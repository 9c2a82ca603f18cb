"""Crash safety with real processes: a writer SIGKILLed before its commit leaves the previous good state, one
killed after its commit (before the checkpoint) leaves the new state (DuckDB replays its WAL); readers of the
published recommendations (DuckDB table and Parquet snapshot) only ever see one complete version; model artifacts
load without unpickling anything."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_pipeline.data import warehouse
from recsys_pipeline.data.schema import RECOMMENDATIONS as RECOMMENDATIONS_TABLE
from recsys_pipeline.serving.snapshot import RECOMMENDATIONS, publish_snapshot, read_snapshot
from recsys_pipeline.settings import HomePaths

pytestmark = pytest.mark.reliability

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAY = (datetime(2020, 1, 1), datetime(2020, 1, 2))
BIG = 300_000  # rows the killed writer inserts: large enough that the insert is real work

# The child writes in one transaction, signals, and waits to be killed; ``commit`` decides whether it commits
# first (with automatic checkpoints off, so the committed data lives only in the WAL when it dies).
WRITER = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime
    from pathlib import Path
    import pandas as pd
    from recsys_pipeline.data import warehouse
    path, mode, commit, ready = sys.argv[1], sys.argv[2], sys.argv[3] == "commit", Path(sys.argv[4])
    n = int(sys.argv[5])
    con = warehouse.connect(path)
    con.execute("SET checkpoint_threshold = '100GB'")  # no automatic checkpoint: the WAL holds the commit
    frame = pd.DataFrame({"user_id": [f"new{i}" for i in range(n)], "item_id": "x",
                          "timestamp": pd.Timestamp("2020-01-01 12:00"), "value": 2.0})
    con.execute("BEGIN TRANSACTION")
    if mode == "window":
        con.execute("DELETE FROM interactions WHERE timestamp >= ? AND timestamp < ?",
                    [datetime(2020, 1, 1), datetime(2020, 1, 2)])
        warehouse.insert_frame(con, "interactions", frame)
    else:
        con.register("big", frame)
        con.execute("CREATE OR REPLACE TABLE recommendations AS SELECT user_id, item_id, value AS score FROM big")
    if commit:
        con.execute("COMMIT")
    ready.touch()
    time.sleep(600)
    """
)


def old_rows(n: int = 5) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [f"old{i}" for i in range(n)],
            "item_id": "1",
            "timestamp": pd.Timestamp("2020-01-01") + pd.to_timedelta(range(n), unit="h"),
            "value": 1.0,
        }
    )


def seed_previous_state(path: Path) -> None:
    with warehouse.session(path) as con:
        warehouse.replace_window(con, "interactions", "timestamp", *DAY, old_rows())
        warehouse.replace_table(con, RECOMMENDATIONS_TABLE, version(1, 1, 0).assign(user_id="old0"))


def kill_writer_at(path: Path, tmp_path: Path, mode: str, commit: bool) -> None:
    """Run ``WRITER`` and SIGKILL it once it has written (and committed, if asked) without closing."""
    ready = tmp_path / f"ready-{mode}-{commit}"
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), mode, "commit" if commit else "open", str(ready), str(BIG)],
        cwd=PROJECT_ROOT,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert child.poll() is None, "writer exited before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL


@pytest.mark.parametrize("mode", ["window", "table"])
def test_killed_before_commit_leaves_previous_state_and_next_run_completes(tmp_path, mode):
    path = tmp_path / "w.duckdb"
    seed_previous_state(path)
    kill_writer_at(path, tmp_path, mode, commit=False)
    with warehouse.session(path) as con:  # the lock died with the process: a new writer gets in at once
        assert sorted(r[0] for r in con.execute("SELECT user_id FROM interactions").fetchall()) == [
            f"old{i}" for i in range(5)
        ]
        assert con.execute("SELECT user_id FROM recommendations").fetchall() == [("old0",)]
        # the next normal run completes and replaces the partition exactly
        assert warehouse.replace_window(con, "interactions", "timestamp", *DAY, old_rows(7)) == 7
        assert warehouse.row_count(con, "interactions") == 7


def test_killed_after_commit_before_checkpoint_keeps_the_new_state(tmp_path):
    path = tmp_path / "w.duckdb"
    seed_previous_state(path)
    kill_writer_at(path, tmp_path, "window", commit=True)
    wal = Path(f"{path}.wal")
    assert wal.exists() and wal.stat().st_size > 0  # the commit is only in the write-ahead log
    with warehouse.session(path, read_only=True) as con:  # replayed on open
        assert con.execute("SELECT count(*), min(user_id) FROM interactions").fetchall() == [(BIG, "new0")]


def version(n_users: int, k: int, v: int) -> pd.DataFrame:
    """Recommendation list number ``v``: ``n_users * k`` rows, every row with ``model_run_id == f"run-{v}"``."""
    return pd.DataFrame(
        {
            "user_id": np.repeat([f"u{i}" for i in range(n_users)], k),
            "rank": np.tile(np.arange(1, k + 1), n_users),
            "item_id": [f"i{(v + r) % 97}" for r in range(n_users * k)],
            "score": np.linspace(1, 0, n_users * k),
            "strategy": "personalized",
            "model_run_id": f"run-{v}",
            "model_version": str(v),
            "produced_on": pd.Timestamp("2024-01-01").date(),
            "partition_date": pd.Timestamp("2024-01-01").date(),
            "model_partition_date": None,
            "explanation": None,
        }
    )


def versions(n_users: int, k: int, n_versions: int) -> list[pd.DataFrame]:
    return [version(n_users, k, v) for v in range(n_versions)]


def poll_while(read, stop: threading.Event) -> list[tuple[int, int]]:
    seen = []
    while not stop.is_set():
        seen.append(read())
    return seen


def test_published_table_is_replaced_atomically(tmp_path):
    n_users, k = 400, 20
    lists = versions(n_users, k, 6)
    with warehouse.session(tmp_path / "w.duckdb") as con:
        warehouse.replace_table(con, RECOMMENDATIONS_TABLE, lists[0])
        reader = con.cursor()  # its own connection to the same database: sees committed states only
        stop = threading.Event()
        reads: list = []

        def read():
            return tuple(
                reader.execute("SELECT count(*), count(DISTINCT model_run_id) FROM recommendations").fetchall()[0]
            )

        thread = threading.Thread(target=lambda: reads.extend(poll_while(read, stop)))
        thread.start()
        for frame in lists[1:]:
            warehouse.replace_table(con, RECOMMENDATIONS_TABLE, frame)
        stop.set()
        thread.join(30)
        final = con.execute("SELECT DISTINCT model_run_id FROM recommendations").fetchall()
    assert len(reads) > 5
    assert set(reads) == {(n_users * k, 1)}  # every read: one whole version, never empty or mixed
    assert final == [("run-5",)]


def test_published_snapshot_is_replaced_atomically(tmp_path):
    paths = HomePaths.at(tmp_path / "home")
    k = 20
    # versions of different sizes (users 300, 337, ...) so that a torn read cannot pass for a whole one
    lists = [version(300 + 37 * (v % 3), k, v) for v in range(60)]
    expected = {frame["model_run_id"].iloc[0]: len(frame) for frame in lists}
    publish_snapshot(paths, lists[0], RECOMMENDATIONS)
    stop = threading.Event()
    reads: list = []

    def read():
        try:
            frame = read_snapshot(paths)
        except Exception as exc:  # noqa: BLE001  (a torn file is what this test looks for)
            return ("error", repr(exc)[:200], None)
        return frame["model_run_id"].iloc[0], len(frame), frame["model_run_id"].nunique()

    thread = threading.Thread(target=lambda: reads.extend(poll_while(read, stop)))
    thread.start()
    for frame in lists[1:]:
        publish_snapshot(paths, frame, RECOMMENDATIONS)
    stop.set()
    thread.join(30)
    assert len(reads) > 5
    assert [r for r in reads if r[0] == "error" or (r[1], r[2]) != (expected[r[0]], 1)] == []
    runs = [int(r[0].split("-")[1]) for r in reads]
    assert runs == sorted(runs)  # never an older version after a newer one
    assert read_snapshot(paths)["model_run_id"].unique().tolist() == ["run-59"]
    assert [p.name for p in paths.published.iterdir()] == ["recommendations.parquet"]  # no temp files left


def test_a_days_rows_are_replaced_atomically_and_the_other_days_never_move(tmp_path):
    n_users, k = 300, 20
    days = [date(2024, 1, 1), date(2024, 1, 2)]
    lists = versions(n_users, k, 6)
    with warehouse.session(tmp_path / "w.duckdb") as con:
        for day in days:
            warehouse.replace_partition(con, RECOMMENDATIONS_TABLE, day, lists[0].assign(partition_date=day))
        reader = con.cursor()
        stop = threading.Event()
        reads: list = []

        def read():
            return tuple(
                reader.execute(
                    "SELECT count(*) FILTER (WHERE partition_date = '2024-01-02'), count(DISTINCT model_run_id) "
                    "FILTER (WHERE partition_date = '2024-01-02'), count(*) FILTER (WHERE partition_date = "
                    "'2024-01-01' AND model_run_id = 'run-0') FROM recommendations"
                ).fetchall()[0]
            )

        thread = threading.Thread(target=lambda: reads.extend(poll_while(read, stop)))
        thread.start()
        for frame in lists[1:]:  # re-materialize 2024-01-02 five times
            warehouse.replace_partition(con, RECOMMENDATIONS_TABLE, days[1], frame.assign(partition_date=days[1]))
        stop.set()
        thread.join(30)
        final = con.execute(
            "SELECT partition_date, model_run_id, count(*) FROM recommendations GROUP BY ALL"
        ).fetchall()
    assert len(reads) > 5
    assert set(reads) == {(n_users * k, 1, n_users * k)}  # that day whole every time, the other day untouched
    assert sorted(final) == [(days[0], "run-0", n_users * k), (days[1], "run-5", n_users * k)]


def test_the_current_published_day_moves_atomically_and_never_back(tmp_path):
    from recsys_pipeline.serving.publish import publish_day
    from recsys_pipeline.serving.snapshot import current_day

    paths = HomePaths.at(tmp_path / "home")
    k = 20
    items = pd.DataFrame({"item_id": [f"i{n}" for n in range(97)], "title": "t", "users": 1, "rank": range(1, 98)})
    days = [date(2024, 1, 1) + timedelta(days=n) for n in range(40)]
    lists = {day: version(300 + 37 * (n % 3), k, n) for n, day in enumerate(days)}
    expected = {frame["model_run_id"].iloc[0]: len(frame) for frame in lists.values()}
    publish_day(paths, days[0], lists[days[0]], items)
    stop = threading.Event()
    reads: list = []

    def read():
        try:
            frame = read_snapshot(paths)  # the current day's lists, as `recsys recommend` reads them
        except Exception as exc:  # noqa: BLE001  (a torn read is what this test looks for)
            return ("error", repr(exc)[:200], None)
        return frame["model_run_id"].iloc[0], len(frame), frame["model_run_id"].nunique()

    thread = threading.Thread(target=lambda: reads.extend(poll_while(read, stop)))
    thread.start()
    for n, day in enumerate(days[1:], 1):
        publish_day(paths, day, lists[day], items, keep_days=7)
        if n % 5 == 0:  # an old day published again (a backfill): the current day stays the newest
            publish_day(paths, days[n - 3], lists[days[n - 3]], items, keep_days=7)
    stop.set()
    thread.join(30)
    assert len(reads) > 5
    assert [r for r in reads if r[0] == "error" or (r[1], r[2]) != (expected[r[0]], 1)] == []
    runs = [int(r[0].split("-")[1]) for r in reads]
    assert runs == sorted(runs)  # never an older day after a newer one
    assert current_day(paths) == days[-1]
    kept = sorted(p.name for p in (paths.published / "days").iterdir())
    assert kept == [d.isoformat() for d in days[-7:]]  # retention: the 7 days ending with the newest
    assert [p.name for p in paths.published.iterdir() if p.name.endswith(".tmp")] == []


PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".joblib", ".ckpt"}


def is_pickle(path: Path) -> bool:
    """Pickle protocol 2+ starts with PROTO (0x80) and the protocol number; torch.save writes a zip of pickles."""
    head = path.read_bytes()[:4]
    return (head[:1] == b"\x80" and head[1:2] in {b"\x02", b"\x03", b"\x04", b"\x05"}) or (
        head == b"PK\x03\x04" and b"data.pkl" in path.read_bytes()
    )


def test_model_artifacts_hold_no_pickle_and_load_without_unpickling(tmp_path, monkeypatch):
    import pickle

    import mlflow
    import torch

    from recsys_pipeline.content.features import ItemFeatures
    from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
    from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender
    from recsys_pipeline.registry import tracking

    rng = np.random.default_rng(0)
    n_items = 30
    content = ItemFeatures(
        item_ids=[f"i{i}" for i in range(n_items)],
        modalities={"text": rng.normal(size=(n_items, 8)).astype(np.float32)},
        present=np.ones((n_items, 1), bool),
        genres=np.eye(3, dtype=np.float32)[np.arange(n_items) % 3],
        genre_names=["a", "b", "c"],
        year=np.full(n_items, 2000),
    )
    inter = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(10) for _ in range(5)],
            "item_id": [f"i{(u * 3 + j) % n_items}" for u in range(10) for j in range(5)],
            "timestamp": pd.Timestamp("2020-01-01"),
            "value": 1.0,
        }
    )
    config = ModelConfig(max_epochs=1, embedding_dim=8, mlp_hidden=16, batch_size=64, num_negatives=8)
    model = TwoTowerRecommender(config, TrainerConfig(accelerator="cpu", devices=1)).fit(inter, content)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = tracking.experiment_id(uri, "pickle-free", str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=experiment):
        model_uri, _ = tracking.log_recommender(model, None)
    logged = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(tmp_path / "dl")))
    files = [p for p in logged.rglob("*") if p.is_file()]
    assert any(p.name == "model.safetensors" for p in files)
    assert not [p for p in files if p.suffix in PICKLE_SUFFIXES or is_pickle(p)]

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted while loading the model")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = mlflow.pyfunc.load_model(model_uri)
    out = loaded.predict(pd.DataFrame({"user_id": ["u1"]}), params={"k": 3})
    assert len(out) == 3 and set(out["item_id"]).isdisjoint(inter.loc[inter["user_id"] == "u1", "item_id"])


def test_no_torch_load_without_weights_only():
    import ast

    offenders = []
    for source in (PROJECT_ROOT / "recsys_pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and ast.unparse(node.func) == "torch.load"
                and not any(
                    kw.arg == "weights_only" and getattr(kw.value, "value", None) is True for kw in node.keywords
                )
            ):
                offenders.append(f"{source.name}:{node.lineno}")
            if isinstance(node, ast.Call) and ast.unparse(node.func) in (
                "pickle.load",
                "pickle.loads",
                "joblib.load",
                "cloudpickle.load",
            ):
                offenders.append(f"{source.name}:{node.lineno}")
    assert offenders == []


def test_publish_removes_temporaries_of_dead_writers_only(tmp_path):
    paths = HomePaths.at(tmp_path / "home")
    paths.published.mkdir(parents=True)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, live_pid = int(finished.stdout), os.getpid()
    dead = paths.published / f".recommendations-{dead_pid}-abc.parquet.tmp"
    live = paths.published / f".recommendations-{live_pid}-def.parquet.tmp"
    other = paths.published / f".items-{dead_pid}-ghi.parquet.tmp"  # another snapshot's: its own publish cleans it
    for path in (dead, live, other):
        path.write_bytes(b"partial")
    publish_snapshot(paths, version(2, 3, 1), RECOMMENDATIONS)
    assert sorted(p.name for p in paths.published.iterdir()) == sorted(
        [live.name, other.name, "recommendations.parquet"]
    )
    assert read_snapshot(paths)["model_run_id"].unique().tolist() == ["run-1"]
