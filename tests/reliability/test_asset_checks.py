"""Asset checks: interactions schema, keys, duplicates and partition windows; the generic embedding check; the
blocking gate that keeps a model worse than popularity from publishing recommendations."""

from datetime import date

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from recsys_pipeline.assets import embedding_check
from recsys_pipeline.data import warehouse
from recsys_pipeline.data.schema import EVALUATION_METRICS
from recsys_pipeline.definitions import build_definitions
from recsys_pipeline.registry.gate import ndcg_against_popularity
from recsys_pipeline.resources import SourceResource, WarehouseResource, resources_for_home
from recsys_pipeline.settings import HomePaths
from tests.reliability.support import growing_settings

pytestmark = pytest.mark.reliability

DEFS = build_definitions(growing_settings())
raw_events, interactions, item_catalog, recommendations = (
    DEFS.get_assets_def(name) for name in ("raw_events", "interactions", "item_catalog", "recommendations")
)
CHECKS = {key.name: c for c in DEFS.asset_checks for key in c.check_keys}
interactions_schema, interactions_keys_and_duplicates, interactions_inside_partition_window, model_beats_popularity = (
    CHECKS[name]
    for name in (
        "interactions_schema",
        "interactions_keys_and_duplicates",
        "interactions_inside_partition_window",
        "model_beats_popularity",
    )
)
INTERACTION_CHECKS = [interactions_schema, interactions_keys_and_duplicates, interactions_inside_partition_window]


def evaluations(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}


def insert_interactions(path, rows: list[tuple]) -> None:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "value"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    with warehouse.session(path) as con, warehouse.transaction(con, "interactions"):
        warehouse.insert_frame(con, "interactions", frame)


def test_interaction_checks_run_with_the_asset_and_catch_violations(tmp_path):
    events = tmp_path / "events"
    events.mkdir()
    (events / "2024-01-05.csv").write_text("user_id,item_id,timestamp\n u1 ,a,2024-01-05T10:00:00Z\nu2,a,1704456000\n")
    (tmp_path / "items.csv").write_text("item_id,title\na,Alpha\n")
    path = tmp_path / "w.duckdb"
    resources = {
        "warehouse_db": WarehouseResource(path=str(path)),
        "source": SourceResource(kind="daily_files", events_dir=str(events), catalog_path=str(tmp_path / "items.csv")),
    }
    assert dg.materialize(
        [item_catalog], resources=resources, partition_key=item_catalog.partitions_def.get_last_partition_key()
    ).success
    result = dg.materialize(
        [raw_events, interactions, item_catalog, *INTERACTION_CHECKS],
        resources=resources,
        partition_key="2024-01-05",
        selection=[raw_events, interactions],
    )
    got = evaluations(result)
    assert set(got) == {c.check_key.name for c in INTERACTION_CHECKS}  # the checks run in the asset's own run
    assert all(e.passed for e in got.values())

    resource = WarehouseResource(path=str(path))
    # an event with no raw row in its day, one before the first partition, one duplicate, one blank key
    insert_interactions(
        path,
        [
            ("u9", "a", "2024-01-06 09:00", 1.0),
            ("u1", "a", "1990-01-01 00:00", 1.0),
            ("u1", "a", "2024-01-05 10:00", 1.0),
            (" ", "a", "2024-01-05 11:00", 1.0),
        ],
    )
    window = interactions_inside_partition_window(warehouse_db=resource)
    assert not window.passed
    assert window.metadata["without_raw_row_in_their_day"].value == 3  # u9, the 1990 row and the blank key
    assert window.metadata["before_first_partition"].value == 1
    keys = interactions_keys_and_duplicates(warehouse_db=resource)
    assert not keys.passed
    assert (keys.metadata["empty_keys"].value, keys.metadata["duplicate_events"].value) == (1, 1)
    assert interactions_schema(warehouse_db=resource).passed

    with warehouse.session(path) as con:  # schema drift: a text timestamp and a nullable key
        con.execute(
            "CREATE OR REPLACE TABLE interactions AS "
            "SELECT user_id, item_id, CAST(timestamp AS VARCHAR) AS timestamp, value FROM interactions"
        )
    drift = interactions_schema(warehouse_db=resource)
    assert not drift.passed
    assert drift.metadata["columns"].value[2] == ["timestamp", "VARCHAR", "YES"]


@pytest.mark.parametrize(
    ("vectors", "expected_width", "passed", "reason"),
    [
        (np.eye(3, 4, dtype=np.float32), None, True, "unit rows, declared width"),
        (np.eye(3, 4, dtype=np.float32), 4, True, "unit rows, expected width"),
        (np.eye(3, 4, dtype=np.float32), 8, False, "another width than the encoder's"),
        (np.eye(3, 4, dtype=np.float32) * 2, None, False, "norm 2"),
        (np.where(np.eye(3, 4) == 1, np.nan, 0).astype(np.float32), None, False, "NaN"),
        (np.full((3, 4), np.inf, dtype=np.float32), None, False, "inf"),
    ],
)
def test_embedding_check_factory(tmp_path, vectors, expected_width, passed, reason):
    path = tmp_path / "w.duckdb"
    with warehouse.session(path) as con:
        warehouse.sync_embeddings(con, "image_embeddings", "m", ["a", "b", "c"], ["1", "2", "3"], lambda p: vectors[p])
    check = embedding_check("image_embeddings", "image_embeddings", expected_width=expected_width)
    assert check.check_key.name == "image_embeddings_finite_unit_norm"
    result = check(warehouse_db=WarehouseResource(path=str(path)))
    assert result.passed is passed, reason
    assert result.metadata["rows"].value == 3 and result.metadata["width"].value == 4


def test_embedding_check_fails_without_rows(tmp_path):
    warehouse.connect(tmp_path / "w.duckdb").close()  # a warehouse without the table
    result = embedding_check("audio_embeddings", "audio_embeddings")(
        warehouse_db=WarehouseResource(path=str(tmp_path / "w.duckdb"))
    )
    assert not result.passed and result.metadata["rows"].value == 0


DAY, NEXT_DAY = date(2018, 9, 23), date(2018, 9, 24)  # two daily partitions of the model group


def metrics_frame(ours: float, popularity: float, cold_ours: float = 0.3, day: date = DAY) -> pd.DataFrame:
    """``evaluation_metrics`` rows of one day as ``model_evaluation`` writes them."""
    rows = [
        ("user_last_fraction", "ours", "ndcg_at_10", ours),
        ("user_last_fraction", "popularity", "ndcg_at_10", popularity),
        ("user_last_fraction", "ours", "recall_at_20", 0.5),
        ("item_cold_start", "ours", "ndcg_at_10", cold_ours),
        ("item_cold_start", "popularity", "ndcg_at_10", 0.0),
    ]
    frame = pd.DataFrame(rows, columns=["protocol", "model", "metric", "value"])
    return frame.assign(mlflow_run_id="r1", partition_date=day)


def test_ndcg_gate_compares_every_protocol():
    assert ndcg_against_popularity(metrics_frame(0.10, 0.08))["passed"]
    assert ndcg_against_popularity(metrics_frame(0.08, 0.08))["passed"]  # a tie is not worse
    worse = ndcg_against_popularity(metrics_frame(0.05, 0.08))
    assert not worse["passed"]
    assert worse["reason"] == "user_last_fraction: ours NDCG@10 0.0500 < popularity 0.0800"
    assert worse["protocols"]["item_cold_start"] == {"ours": 0.3, "popularity": 0.0}
    assert not ndcg_against_popularity(
        metrics_frame(0.10, 0.08, cold_ours=float("nan")).query("protocol == 'item_cold_start' or model == 'ours'")
    )["passed"]  # no protocol with both: no evidence


def test_blocking_gate_stops_recommendations_in_the_same_run(tmp_path):
    paths = HomePaths.at(tmp_path / "home")
    resources = resources_for_home(str(paths.root))
    with warehouse.session(paths.warehouse) as con:
        warehouse.replace_partition(con, EVALUATION_METRICS, DAY, metrics_frame(0.02, 0.09))
    result = gate_run(resources, DAY)
    gate = evaluations(result)["model_beats_popularity"]
    assert not gate.passed and gate.blocking and gate.partition == DAY.isoformat()
    assert gate.description == "user_last_fraction: ours NDCG@10 0.0200 < popularity 0.0900"
    assert not result.success
    assert result.get_asset_materialization_events() == []  # recommendations not materialized
    assert not any(e.is_step_start and e.step_key == "recommendations" for e in result.all_events)
    with warehouse.session(paths.warehouse, read_only=True) as con:
        assert not warehouse.table_exists(con, "recommendations")

    with warehouse.session(paths.warehouse) as con:
        warehouse.replace_partition(con, EVALUATION_METRICS, DAY, metrics_frame(0.11, 0.09))
    passing = evaluations(gate_run(resources, DAY))["model_beats_popularity"]
    assert passing.passed
    assert passing.metadata["ndcg_at_10"].value["user_last_fraction"] == {"ours": 0.11, "popularity": 0.09}


def test_the_gate_judges_each_day_on_its_own_evaluation(tmp_path):
    """Two days evaluated: the check of each day reads that day's figures only, so a gated-out day shows as that
    partition's failed check while the other day passes."""
    paths = HomePaths.at(tmp_path / "home")
    resources = resources_for_home(str(paths.root))
    with warehouse.session(paths.warehouse) as con:
        warehouse.replace_partition(con, EVALUATION_METRICS, DAY, metrics_frame(0.11, 0.09))
        warehouse.replace_partition(con, EVALUATION_METRICS, NEXT_DAY, metrics_frame(0.05, 0.09, day=NEXT_DAY))
    verdicts = {day: evaluations(gate_run(resources, day))["model_beats_popularity"] for day in (DAY, NEXT_DAY)}
    assert (verdicts[DAY].passed, verdicts[NEXT_DAY].passed) == (True, False)
    assert [verdicts[d].partition for d in (DAY, NEXT_DAY)] == ["2018-09-23", "2018-09-24"]
    assert verdicts[NEXT_DAY].description == "user_last_fraction: ours NDCG@10 0.0500 < popularity 0.0900"
    with dg.instance_for_test() as instance:  # what the UI reads: the check's status per partition
        for day in (DAY, NEXT_DAY):
            gate_run(resources, day, instance=instance)
        records = instance.event_log_storage.get_asset_check_execution_history(
            model_beats_popularity.check_key, limit=10
        )
        by_day = {r.event.dagster_event.event_specific_data.partition: r.status.value for r in records if r.event}
        assert by_day == {"2018-09-23": "SUCCEEDED", "2018-09-24": "FAILED"}


def gate_run(resources, day: date, instance=None) -> dg.ExecuteInProcessResult:
    """One run of the gate for ``day`` and ``recommendations`` after it, as the nightly job's run does after
    model_evaluation (Dagster runs a partitioned check in a run that selects an asset of its partitions; here
    ``recommendations``, which finds no champion in this empty MLflow store when the gate lets it run)."""
    return dg.materialize(
        [DEFS.get_assets_def(k) for k in DEFS.resolve_all_asset_keys()] + list(DEFS.asset_checks),
        resources=resources,
        raise_on_error=False,
        selection=dg.AssetSelection.checks(model_beats_popularity) | dg.AssetSelection.assets(recommendations),
        partition_key=day.isoformat(),
        instance=instance,
    )


def test_demo_runs_include_the_gate_with_model_evaluation():
    """A run that materializes model_evaluation carries its blocking check, and recommendations depends on it."""
    defs = DEFS
    job = defs.resolve_job_def("recsys_pipeline_job")
    subset = job.get_subset(asset_selection={dg.AssetKey("model_evaluation")})
    assert model_beats_popularity.check_key in subset.asset_layer.asset_graph.asset_check_keys
    graph = defs.resolve_asset_graph()
    assert dg.AssetKey("model_evaluation") in graph.get(dg.AssetKey("recommendations")).parent_keys
