"""Ingestion assets through Dagster on a temporary home: partitions, re-materialization, quarantine."""

import collections

import dagster as dg
import pytest

from recsys_pipeline.assets.metadata import MAX_HEADLINE
from recsys_pipeline.data import warehouse
from recsys_pipeline.data.schema import TABLES
from recsys_pipeline.resources import SourceResource, WarehouseResource

NOT_HEADLINE = (dg.TableMetadataValue, dg.TableSchemaMetadataValue, dg.MarkdownMetadataValue)


@pytest.fixture
def resources(tmp_path):
    return {"warehouse_db": WarehouseResource(path=str(tmp_path / "w.duckdb")), "source": SourceResource()}


@pytest.fixture
def ingestion(asset):
    return asset("raw_events"), asset("interactions"), asset("item_catalog")


def materialize_days(ingestion, resources, start, end):
    raw_events, interactions, item_catalog = ingestion
    job = dg.define_asset_job("ingest", selection=[raw_events, interactions]).resolve(
        asset_graph=dg.Definitions(
            assets=[raw_events, interactions, item_catalog], resources=resources
        ).resolve_asset_graph()
    )
    result = job.execute_in_process(
        resources=resources,
        tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end},
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    return result


def snapshot(path):
    with warehouse.session(path, read_only=True) as con:
        return con.execute("SELECT * FROM interactions ORDER BY ALL").fetchall()


def test_partitions_rematerialize_to_identical_rows(ingestion, resources, tmp_path):
    raw_events, interactions, item_catalog = ingestion
    assert dg.materialize(
        [item_catalog], resources=resources, partition_key=item_catalog.partitions_def.get_last_partition_key()
    ).success
    materialize_days(ingestion, resources, "2018-09-01", "2018-09-24")
    first = snapshot(tmp_path / "w.duckdb")
    assert len(first) == 604  # bundled ratings stamped 2018-09-01 .. 2018-09-24 UTC
    for _ in range(2):
        materialize_days(ingestion, resources, "2018-09-10", "2018-09-12")  # overlapping backfill
        assert snapshot(tmp_path / "w.duckdb") == first
    single = dg.materialize(
        [raw_events, interactions, item_catalog],
        resources=resources,
        partition_key="2018-09-24",
        selection=[raw_events, interactions],
    )
    assert single.success
    assert snapshot(tmp_path / "w.duckdb") == first
    mats = single.asset_materializations_for_node("interactions")
    day = sum(1 for r in first if r[2].date().isoformat() == "2018-09-24")
    assert mats[0].metadata["dagster/partition_row_count"].value == day  # the run's day
    assert mats[0].metadata["dagster/row_count"].value == len(first)  # the whole table


def test_a_range_run_shows_each_days_own_row_count_and_window(ingestion, resources, tmp_path):
    raw_events, interactions, item_catalog = ingestion
    assert dg.materialize(
        [item_catalog], resources=resources, partition_key=item_catalog.partitions_def.get_last_partition_key()
    ).success
    result = materialize_days(ingestion, resources, "2018-09-18", "2018-09-24")  # 11, 1, 4, 0, 7, 2, 3 ratings
    rows = snapshot(tmp_path / "w.duckdb")
    with warehouse.session(tmp_path / "w.duckdb", read_only=True) as con:
        raw_days = dict(
            con.execute("SELECT strftime(partition_date, '%Y-%m-%d'), count(*) FROM raw_events GROUP BY 1").fetchall()
        )
    for node, per_day in (
        ("interactions", collections.Counter(r[2].date().isoformat() for r in rows)),
        ("raw_events", raw_days),
    ):
        mats = {m.partition: m.metadata for m in result.asset_materializations_for_node(node)}
        assert sorted(mats) == [f"2018-09-{d}" for d in range(18, 25)]
        shown = {day: meta["dagster/partition_row_count"].value for day, meta in mats.items()}
        assert shown == {day: per_day.get(day, 0) for day in mats}
        assert shown["2018-09-18"] == 11 and shown["2018-09-21"] == 0  # not the range's 28
        assert {meta["dagster/row_count"].value for meta in mats.values()} == {sum(per_day.values())}  # the table
    raw = {m.partition: m.metadata for m in result.asset_materializations_for_node("raw_events")}
    assert (raw["2018-09-21"]["window_start_utc"].value, raw["2018-09-21"]["window_end_utc"].value) == (
        "2018-09-21T00:00:00",
        "2018-09-22T00:00:00",
    )


def test_bad_rows_are_quarantined_through_the_asset(ingestion, tmp_path):
    raw_events, interactions, item_catalog = ingestion
    events_dir = tmp_path / "events"
    events_dir.mkdir()
    (events_dir / "2018-09-05.csv").write_text(
        "user_id,item_id,timestamp,value\n"
        "u1,a,2018-09-05T10:00:00Z,1\n"
        "u1,a,2018-09-05T10:00:00Z,1\n"  # duplicate
        "u2,zzz,2018-09-05T11:00:00Z,1\n"  # unknown item
        "u3,a,2018-09-06T00:00:00Z,1\n"  # next day
        ",a,2018-09-05T12:00:00Z,1\n"  # no user
    )
    (tmp_path / "items.csv").write_text("item_id,title\na,Alpha\n")
    resources = {
        "warehouse_db": WarehouseResource(path=str(tmp_path / "w.duckdb")),
        "source": SourceResource(
            kind="daily_files", events_dir=str(events_dir), catalog_path=str(tmp_path / "items.csv")
        ),
    }
    assert dg.materialize(
        [item_catalog], resources=resources, partition_key=item_catalog.partitions_def.get_last_partition_key()
    ).success
    for _ in range(2):  # re-running the partition replaces its quarantine rows too
        result = dg.materialize(
            [raw_events, interactions, item_catalog],
            resources=resources,
            partition_key="2018-09-05",
            selection=[raw_events, interactions],
        )
        meta = result.asset_materializations_for_node("interactions")[0].metadata
        assert meta["dagster/partition_row_count"].value == 1 and meta["quarantined"].value == 4
        for event in result.get_asset_materialization_events():  # few headline entries, the declared columns
            entries = event.materialization.metadata
            headline = [v for v in entries.values() if not isinstance(v, (dg.JsonMetadataValue, *NOT_HEADLINE))]
            assert len(headline) <= MAX_HEADLINE, event.asset_key
            table = TABLES[event.asset_key.to_user_string()]
            assert [c.name for c in entries["dagster/column_schema"].schema.columns] == table.column_names
    with warehouse.session(tmp_path / "w.duckdb", read_only=True) as con:
        reasons = sorted(r[0] for r in con.execute("SELECT reason FROM quarantine").fetchall())
    assert reasons == ["duplicate event", "missing user_id", "timestamp outside partition", "unknown item"]


def test_definitions_list_every_asset_and_the_schedule(definitions, asset):
    keys = {k.to_user_string() for k in definitions.resolve_all_asset_keys()}
    assert keys == {
        "raw_events",
        "interactions",
        "item_catalog",
        "text_embeddings",
        "image_embeddings",
        "audio_embeddings",
        "item_features",
        "recommender_model",
        "model_evaluation",
        "recommendations",
        "model_tuning",
        "text_encoder_adaptation",
    }
    schedule = definitions.resolve_schedule_def("nightly_retrain")
    assert schedule.cron_schedule == "0 2 * * *"
    assert asset("raw_events").partitions_def.get_first_partition_key() == "1996-03-29"
