"""A simulated night: a new event file lands, the sensor ingests its day, the 02:00 schedule tick materializes
yesterday's partition of every stage (catalog, content, model, evaluation, lists) in one run.

On a tiny ``daily_files`` source (two days of re-dated MovieLens ratings), everything through the
real sensor, schedule, jobs and resources, executed in process on a temporary Dagster instance.
"""

import os
import time
from datetime import UTC, datetime

import dagster as dg
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from recsys_pipeline.data import warehouse
from recsys_pipeline.settings import BUNDLED_MOVIELENS_DIR, HomePaths, ensure_home

pytestmark = pytest.mark.slow

DAY1, DAY2 = "2018-09-01", "2018-09-02"


def landing_folder(root):
    """The first 60 users' ratings of their 150 most rated movies (~2,100 events), in time order: 85% re-dated
    into DAY1, the rest into DAY2; ``write(day, events)`` writes a day's file and grows the catalog file."""
    ratings = pd.read_csv(BUNDLED_MOVIELENS_DIR / "ratings.csv")
    ratings = ratings[ratings["userId"] <= 60]
    ratings = ratings[ratings["movieId"].isin(ratings["movieId"].value_counts().head(150).index)]
    ratings = ratings.sort_values(["timestamp", "userId", "movieId"]).reset_index(drop=True)
    cut = int(len(ratings) * 0.85)
    movies = pd.read_csv(BUNDLED_MOVIELENS_DIR / "movies.csv").rename(columns={"movieId": "item_id"})
    events = root / "landing"
    events.mkdir()
    known: set[int] = set()

    def write(day, part):
        """The day's events, and the catalog grown by the items they mention (new items arrive with their day)."""
        known.update(part["movieId"])
        movies[movies["item_id"].isin(known)].to_csv(root / "items.csv", index=False)
        seconds = pd.Series(range(len(part))) * (86_399 // max(len(part), 1))
        pd.DataFrame(
            {
                "user_id": part["userId"].to_numpy(),
                "item_id": part["movieId"].to_numpy(),
                "timestamp": (pd.Timestamp(day) + pd.to_timedelta(seconds, unit="s")).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "value": part["rating"].to_numpy(),
            }
        ).to_csv(events / f"{day}.csv", index=False)
        return len(part)

    return events, root / "items.csv", write, ratings.iloc[:cut], ratings.iloc[cut:]


# Tiny training for the test: one evaluation protocol, no modality ablation (the schedule's own runs use the
# assets' defaults).
SMALL_EVALUATION = {
    "ops": {"model_evaluation": {"config": {"protocols": ["user_last_fraction"], "ablation_variants": []}}}
}
GATE = "model_beats_popularity"


def execute(defs, instance, job_name, request):
    """Execute a RunRequest as the daemon would launch it; the run may only fail on the publishing gate."""
    job = defs.resolve_job_def(job_name)
    run_config = {**(request.run_config or {}), **(SMALL_EVALUATION if job_name == "recsys_pipeline_job" else {})}
    result = job.execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        tags=request.tags,
        run_config=run_config,
        raise_on_error=False,
    )
    failures = [e.step_failure_data.error.to_string() for e in result.all_events if e.is_step_failure]
    gate_failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    if not result.success:  # ours losing to popularity on tiny data stops publishing, nothing else may fail
        assert [e.asset_check_key.name for e in gate_failed] == [GATE], failures
    return result


def test_a_night_adds_a_partition_and_a_model_version(tmp_path, monkeypatch):
    from recsys_pipeline.definitions import build_definitions
    from recsys_pipeline.resources import ModelOverrides, SourceResource, TrainingResource, resources_for_home

    home = tmp_path / "home"
    monkeypatch.setenv("RECSYS_HOME", str(home))
    paths = ensure_home(HomePaths.at(home))
    events, catalog, write, day1, day2 = landing_folder(tmp_path)
    resources = resources_for_home(
        str(home),
        source=SourceResource(kind="daily_files", events_dir=str(events), catalog_path=str(catalog)),
        training=TrainingResource(model=ModelOverrides(max_epochs=2), accelerator="cpu", devices="1"),
    )
    defs = build_definitions(resources=resources)
    schedule = defs.resolve_schedule_def("nightly_retrain")
    sensor = defs.resolve_sensor_def("landing_events")
    client = MlflowClient(paths.mlflow_tracking_uri)

    def sensor_tick(cursor):
        context = dg.build_sensor_context(cursor=cursor, resources=resources, definitions=defs, instance=instance)
        return sensor.evaluate_tick(context)

    def schedule_tick(day):
        when = datetime.fromisoformat(day).replace(hour=2, tzinfo=UTC)
        return schedule.evaluate_tick(dg.build_schedule_context(instance=instance, scheduled_execution_time=when))

    with dg.instance_for_test() as instance:
        # Night 1: DAY1's file is there; the sensor ingests it, the 02:00 tick of DAY2 retrains on it.
        n1 = write(DAY1, day1)
        old = time.time() - 3600  # written an hour ago: settled
        os.utime(events / f"{DAY1}.csv", (old, old))
        tick = sensor_tick(None)
        assert [r.partition_key for r in tick.run_requests] == [DAY1]
        execute(defs, instance, "ingest_events_job", tick.run_requests[0])
        nightly = schedule_tick(DAY2).run_requests
        assert [r.partition_key for r in nightly] == [DAY1]
        execute(defs, instance, schedule.job_name, nightly[0])
        assert len(client.search_model_versions("name='recsys_ranker'")) == 1

        # Night 2: DAY2's file lands; only DAY2 is requested (DAY1 unchanged); the 02:00 tick of the next day.
        n2 = write(DAY2, day2)
        os.utime(events / f"{DAY2}.csv", (old, old))
        tick = sensor_tick(tick.cursor)
        assert [r.partition_key for r in tick.run_requests] == [DAY2]
        execute(defs, instance, "ingest_events_job", tick.run_requests[0])
        nightly = schedule_tick("2018-09-03").run_requests
        assert [r.partition_key for r in nightly] == [DAY2]
        result = execute(defs, instance, schedule.job_name, nightly[0])

        materialized = {
            e.materialization.asset_key.to_user_string(): e.materialization.partition
            for e in result.get_asset_materialization_events()
        }
        every_stage = {"item_catalog", "raw_events", "interactions", "text_embeddings", "image_embeddings"}
        every_stage |= {"audio_embeddings", "item_features", "recommender_model", "model_evaluation"}
        assert every_stage <= set(materialized)
        assert set(materialized.values()) == {DAY2}  # yesterday's partition of every stage, in one run
        for event in result.get_asset_materialization_events():  # what people look at in the UI
            metadata = event.materialization.metadata
            assert metadata["seconds"].value >= 0, event.asset_key
            if event.asset_key.to_user_string() != "recommender_model":  # the one asset that writes no table
                assert metadata["dagster/row_count"].value >= 0 and "dagster/column_schema" in metadata
        published = "recommendations" in materialized
        assert published == result.success  # published exactly when the gate passed
        assert instance.get_materialized_partitions(dg.AssetKey("interactions")) == {DAY1, DAY2}

    with warehouse.session(paths.warehouse, read_only=True) as con:
        per_day = dict(
            con.execute(
                "SELECT strftime(CAST(timestamp AS DATE), '%Y-%m-%d'), count(*) FROM interactions GROUP BY 1"
            ).fetchall()
        )
        assert per_day == {DAY1: n1, DAY2: n2}
        # night 2 encoded only the items first seen on DAY2
        new_items = len(set(day2["movieId"]) - set(day1["movieId"]))
        assert warehouse.row_count(con, "text_embeddings") == len(set(day1["movieId"]) | set(day2["movieId"]))
        published_by = (
            con.execute("SELECT DISTINCT model_run_id FROM recommendations WHERE partition_date = ?", [DAY2]).fetchall()
            if warehouse.table_exists(con, "recommendations")
            else []
        )
    numbers = sorted(int(v.version) for v in client.search_model_versions("name='recsys_ranker'"))
    assert numbers == [1, 2]
    versions = [client.get_model_version("recsys_ranker", str(n)) for n in numbers]  # search omits aliases
    assert [v.tags["partition_date"] for v in versions] == [DAY1, DAY2]  # the model of each night's day
    encoded = result.asset_materializations_for_node("text_embeddings")[0].metadata["encoded"].value
    assert encoded == new_items
    # Champion / challenger: a version takes the alias only when it clears the popularity floor (the blocking
    # check's verdict) and beats the champion; version 1 became champion on night 1 when it cleared the floor.
    champions = [v for v in versions if "champion" in v.aliases]
    assert len(champions) <= 1
    for v in versions:
        floor = v.tags["gate.popularity_floor"]
        assert floor.startswith(("passed: ", "failed: "))
        if floor.startswith("failed: "):
            assert v.tags["gate.decision"] == "challenger" and "champion" not in v.aliases
    first_passed = versions[0].tags["gate.popularity_floor"].startswith("passed: ")
    assert (versions[0].tags["gate.decision"] == "champion") == first_passed
    decision = versions[1].tags["gate.decision"]
    assert decision in ("champion", "challenger")
    assert (decision == "champion") == (bool(champions) and str(champions[0].version) == "2")
    assert ("challenger" in versions[1].aliases) == (decision == "challenger")
    if published:  # the night's recommendations come from the champion
        assert published_by == [(champions[0].run_id,)]
