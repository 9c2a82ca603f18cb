"""A model below the popularity floor never becomes champion (issue 14, item 1).

Night 1 trains a good model on planted toy data through the Dagster assets: it becomes champion v1 and is
published. Night 2 trains a deliberately bad one (learning rate 1e-9, one epoch: an untrained ranker): the blocking
check stops the run, and the registry still says champion v1; a later ``recommendations`` run alone publishes v1, and
the HTTP app (what ``recsys serve`` runs) reports v1.
"""

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from recsys_pipeline.registry import gate
from recsys_pipeline.serving.app import create_app
from recsys_pipeline.serving.snapshot import read_snapshot
from recsys_pipeline.settings import HomePaths, ensure_home
from tests.reliability.support import definitions_training, materialize, toy_warehouse

pytestmark = pytest.mark.reliability

NAME = "recsys_ranker"


@pytest.mark.slow
def test_a_model_below_the_popularity_floor_never_becomes_champion(tmp_path, toy, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("RECSYS_HOME", str(home))
    paths = ensure_home(HomePaths.at(home))
    toy_warehouse(paths, toy)
    night = ["recommender_model", "model_evaluation", "recommendations"]

    good = definitions_training(home, **{**toy.FAST, "max_epochs": 6})
    first = materialize(good, night, with_check=True)
    assert first.success
    assert read_snapshot(paths)["model_version"].unique().tolist() == ["1"]

    bad = definitions_training(home, **{**toy.FAST, "max_epochs": 1, "lr": 1e-9})
    second = materialize(bad, night, with_check=True)
    assert not second.success  # stopped by the blocking check, before recommendations
    [check] = second.get_asset_check_evaluations()
    assert check.asset_check_key.name == "model_beats_popularity" and not check.passed
    assert "recommendations" not in {
        e.materialization.asset_key.to_user_string() for e in second.get_asset_materialization_events()
    }
    evaluation = second.asset_materializations_for_node("model_evaluation")[0].metadata
    assert evaluation["model_version"].value == "2" and evaluation["gate.decision"].value == "challenger"

    client = MlflowClient(paths.mlflow_tracking_uri)
    assert str(client.get_model_version_by_alias(NAME, gate.CHAMPION).version) == "1"
    assert str(client.get_model_version_by_alias(NAME, gate.CHALLENGER).version) == "2"
    tags = client.get_model_version(NAME, "2").tags
    assert tags["gate.decision"] == "challenger"
    assert "below the popularity floor (user_last_fraction: ours NDCG@10 0.0" in tags["gate.reason"]
    assert tags["gate.reason"].endswith("champion v1, recorded same split")  # same inputs: not retrained
    assert tags["gate.popularity_floor"].startswith("failed: ")
    assert client.get_model_version(NAME, "1").tags["gate.popularity_floor"].startswith("passed: ")

    published_before = read_snapshot(paths)
    alone = materialize(bad, ["recommendations"], with_check=False)  # the next run of recommendations alone
    assert alone.success
    assert alone.asset_materializations_for_node("recommendations")[0].metadata["model_version"].value == "1"
    published = read_snapshot(paths)
    assert published["model_version"].unique().tolist() == ["1"]
    assert published["model_run_id"].unique().tolist() == [client.get_model_version(NAME, "1").run_id]
    pd.testing.assert_frame_equal(
        published.drop(columns="produced_on"), published_before.drop(columns="produced_on")
    )  # the same champion ranks the same lists

    health = TestClient(create_app(paths)).get("/health")
    assert health.status_code == 200 and health.json()["model_version"] == "1"


@pytest.mark.slow
def test_model_evaluation_of_a_day_evaluates_the_model_of_that_day(champion_home, toy):
    """``model_evaluation`` finds the version of its own day by the ``partition_date`` tag, not the newest one."""
    from tests.reliability.support import TOY_DAY, TOY_NEXT_DAY

    paths, _ = champion_home  # version 1: the model of TOY_DAY, champion, published
    defs = definitions_training(paths.root, **{**toy.FAST, "max_epochs": 1})
    assert materialize(defs, ["recommender_model"], with_check=False, day=TOY_NEXT_DAY).success  # version 2
    client = MlflowClient(paths.mlflow_tracking_uri)
    assert client.get_model_version(NAME, "2").tags["partition_date"] == TOY_NEXT_DAY
    again = materialize(defs, ["model_evaluation"], with_check=True, day=TOY_DAY)
    assert again.success
    meta = again.asset_materializations_for_node("model_evaluation")[0].metadata
    assert meta["model_version"].value == "1" and meta["gate.decision"].value == "champion"
    assert "gate.decision" not in client.get_model_version(NAME, "2").tags  # the next day's model: not gated yet
    (check,) = again.get_asset_check_evaluations()
    assert check.partition == TOY_DAY and check.passed
