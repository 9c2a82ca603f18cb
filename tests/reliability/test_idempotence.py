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
    assert dg.materialize(
        [item_catalog], resources=resources, partition_key=item_catalog.partitions_def.get_last_partition_key()
    ).success
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
    assert dg.materialize(
        [item_catalog], resources=resources, partition_key=item_catalog.partitions_def.get_last_partition_key()
    ).success
    run_backfill(resources, "2024-01-05", "2024-01-06")
    first = fingerprint(tmp_path / "w.duckdb")
    assert (first["interactions"][0], first["quarantine"][0], first["raw_events"][0]) == (2, 4, 6)
    for _ in range(2):
        run_partition(resources, "2024-01-05")
        run_partition(resources, "2024-01-06")
        assert fingerprint(tmp_path / "w.duckdb") == first
    run_backfill(resources, "2024-01-05", "2024-01-06")
    assert fingerprint(tmp_path / "w.duckdb") == first


def test_rematerializing_a_day_of_the_catalog_gives_identical_rows(tmp_path):
    resources = {"warehouse_db": WarehouseResource(path=str(tmp_path / "w.duckdb")), "source": SourceResource()}
    prints = []
    for day in ("2018-09-10", "2018-09-10", "2018-09-24", "2018-09-10"):
        assert dg.materialize([item_catalog], resources=resources, partition_key=day).success
        with warehouse.session(tmp_path / "w.duckdb", read_only=True) as con:
            rows = con.execute("SELECT * FROM item_catalog WHERE added_at <= '2018-09-10' ORDER BY ALL").fetchall()
            total = warehouse.row_count(con, "item_catalog")
        prints.append((len(rows), hashlib.sha256(repr(rows).encode()).hexdigest(), total))
    assert prints[0] == prints[1] and prints[3][:2] == prints[0][:2]  # the items added by 09-10 never move
    movies = pd.read_csv(BUNDLED_MOVIELENS_DIR / "movies.csv")
    assert prints[3][2] == prints[2][2] == len(movies) > prints[0][2]  # 09-24 adds the later ones; 09-10 keeps them


@pytest.mark.slow
def test_rematerializing_a_day_of_the_model_group_replaces_that_day_only(champion_home):
    """``recommendations`` and the evaluation tables keep a set of rows per day: re-running a day gives the same
    rows (no duplicates), another day's rows stay as they are."""
    from recsys_pipeline.serving.snapshot import current_day
    from tests.reliability.support import TOY_DAY, TOY_NEXT_DAY, definitions_training, materialize

    paths, _ = champion_home
    defs = definitions_training(paths.root, max_epochs=1)  # recommendations trains nothing: any config

    def by_day(table: str) -> dict[str, tuple[int, str]]:
        out = {}
        with warehouse.session(paths.warehouse, read_only=True) as con:
            for (day,) in con.execute(f"SELECT DISTINCT partition_date FROM {table}").fetchall():
                rows = con.execute(  # produced_on: the wall-clock day of the run, not the lists'
                    f"SELECT * EXCLUDE (produced_on) FROM {table} WHERE partition_date = ? ORDER BY ALL"
                    if table == "recommendations"
                    else f"SELECT * FROM {table} WHERE partition_date = ? ORDER BY ALL",
                    [day],
                ).fetchall()
                out[day.isoformat()] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
        return out

    first = by_day("recommendations")
    assert list(first) == [TOY_DAY] and first[TOY_DAY][0] == 60 * 20
    metrics = by_day("evaluation_metrics")
    for _ in range(2):
        assert materialize(defs, ["recommendations"], with_check=False, day=TOY_DAY).success
        assert by_day("recommendations") == first
    assert materialize(defs, ["recommendations"], with_check=False, day=TOY_NEXT_DAY).success
    both = by_day("recommendations")
    assert both[TOY_DAY] == first[TOY_DAY] and both[TOY_NEXT_DAY][0] == 60 * 20
    assert current_day(paths).isoformat() == TOY_NEXT_DAY
    assert materialize(defs, ["recommendations"], with_check=False, day=TOY_DAY).success  # an old day again
    assert by_day("recommendations") == both and current_day(paths).isoformat() == TOY_NEXT_DAY  # never back
    assert by_day("evaluation_metrics") == metrics  # publishing leaves the evaluation of the day alone
