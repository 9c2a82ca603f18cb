"""Re-materializing a partition replaces it: same row count and same contents after 1, 2, 3 runs and after
backfills overlapping earlier runs, through real Dagster runs."""

import hashlib

import dagster as dg
import pandas as pd
import pytest

from recsys_pipeline.assets import daily_partitions, ingestion_assets
from recsys_pipeline.data import warehouse
from recsys_pipeline.resources import SourceResource, WarehouseResource
from recsys_pipeline.settings import BUNDLED_MOVIELENS_DIR
from tests.reliability.support import growing_settings

raw_events, interactions, item_catalog = ingestion_assets(daily_partitions(growing_settings()))

pytestmark = pytest.mark.reliability

TABLES = ("raw_events", "interactions", "quarantine")


def fingerprint(path) -> dict[str, tuple[int, str]]:
    """``table -> (rows, sha256 of the sorted rows)``."""
    out = {}
    with warehouse.session(path, read_only=True) as con:
        for table in TABLES:
            rows = con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()  # table from the fixed tuple
            out[table] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
    return out


def run_partition(resources, key: str) -> None:
    result = dg.materialize(
        [raw_events, interactions, item_catalog],
        resources=resources,
        partition_key=key,
        selection=[raw_events, interactions],
    )
    assert result.success


def run_backfill(resources, start: str, end: str) -> None:
    """A range of partitions as one run (``BackfillPolicy.single_run()``), as the UI's backfill launches it."""
    job = dg.define_asset_job("ingest", selection=[raw_events, interactions]).resolve(
        asset_graph=dg.Definitions(
            assets=[raw_events, interactions, item_catalog], resources=resources
        ).resolve_asset_graph()
    )
    result = job.execute_in_process(
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end},
    )
    assert result.success


def movielens(tmp_path, name: str) -> dict:
    resources = {"warehouse_db": WarehouseResource(path=str(tmp_path / f"{name}.duckdb")), "source": SourceResource()}
    assert dg.materialize([item_catalog], resources=resources).success
    return resources


def test_one_two_three_runs_of_a_partition_give_identical_rows(tmp_path):
    resources = movielens(tmp_path, "w")
    prints = []
    for _ in range(3):
        run_partition(resources, "2018-09-10")
        prints.append(fingerprint(tmp_path / "w.duckdb"))
    assert prints[0] == prints[1] == prints[2]
    ratings = pd.read_csv(BUNDLED_MOVIELENS_DIR / "ratings.csv")
    on_day = pd.to_datetime(ratings["timestamp"], unit="s").dt.strftime("%Y-%m-%d") == "2018-09-10"
    assert prints[0]["raw_events"][0] == prints[0]["interactions"][0] == int(on_day.sum()) > 0


def test_backfill_overlapping_single_runs_equals_a_clean_backfill(tmp_path):
    history = movielens(tmp_path, "history")
    for key in ("2018-09-03", "2018-09-10", "2018-09-16"):  # 09-16 lies outside the backfill below
        run_partition(history, key)
    run_backfill(history, "2018-09-01", "2018-09-12")
    after_backfill = fingerprint(tmp_path / "history.duckdb")
    run_backfill(history, "2018-09-01", "2018-09-12")
    run_partition(history, "2018-09-10")
    assert fingerprint(tmp_path / "history.duckdb") == after_backfill

    clean = movielens(tmp_path, "clean")  # a fresh warehouse given the same partitions in one go
    run_backfill(clean, "2018-09-01", "2018-09-12")
    run_partition(clean, "2018-09-16")
    assert fingerprint(tmp_path / "clean.duckdb") == after_backfill
    with warehouse.session(tmp_path / "clean.duckdb", read_only=True) as con:
        days = con.execute(
            "SELECT count(DISTINCT CAST(timestamp AS DATE)), min(timestamp), max(timestamp) FROM interactions"
        ).fetchall()[0]
    assert days[1].date().isoformat() >= "2018-09-01" and days[2].date().isoformat() == "2018-09-16"


def test_dirty_daily_files_rerun_gives_identical_rows_and_quarantine(tmp_path):
    events = tmp_path / "events"
    events.mkdir()
    (events / "2024-01-05.csv").write_text(
        "user_id,item_id,timestamp,value\n"
        "u1,a,2024-01-05T10:00:00Z,1\n"
        "u1,a,2024-01-05T10:00:00Z,1\n"  # duplicate
        "u2,zzz,2024-01-05T11:00:00Z,1\n"  # unknown item
        "u3,a,2024-01-06T00:00:00Z,1\n"  # next day
        "u4,a,not-a-time,1\n"  # unparseable
    )
    (events / "2024-01-06.jsonl").write_text('{"user_id": "u5", "item_id": "a", "timestamp": "2024-01-06T08:00:00Z"}\n')
    (tmp_path / "items.csv").write_text("item_id,title\na,Alpha\n")
    resources = {
        "warehouse_db": WarehouseResource(path=str(tmp_path / "w.duckdb")),
        "source": SourceResource(kind="daily_files", events_dir=str(events), catalog_path=str(tmp_path / "items.csv")),
    }
    assert dg.materialize([item_catalog], resources=resources).success
    run_backfill(resources, "2024-01-05", "2024-01-06")
    first = fingerprint(tmp_path / "w.duckdb")
    assert (first["interactions"][0], first["quarantine"][0], first["raw_events"][0]) == (2, 4, 6)
    for _ in range(2):
        run_partition(resources, "2024-01-05")
        run_partition(resources, "2024-01-06")
        assert fingerprint(tmp_path / "w.duckdb") == first
    run_backfill(resources, "2024-01-05", "2024-01-06")
    assert fingerprint(tmp_path / "w.duckdb") == first
