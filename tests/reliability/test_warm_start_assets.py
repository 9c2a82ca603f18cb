"""Warm-started retraining through the assets: with ``warm_start`` on, ``recommender_model`` starts from the
champion's weights (and says so in its metadata and its MLflow run); without a champion it trains in full."""

import pytest
from mlflow.tracking import MlflowClient

from recsys_pipeline.settings import HomePaths, ensure_home
from tests.reliability.support import definitions_training, materialize, toy_warehouse

pytestmark = pytest.mark.reliability


def _training_table(result) -> dict:
    """The ``training`` table of the run's ``recommender_model`` materialization as ``{name: value}``."""
    table = result.asset_materializations_for_node("recommender_model")[0].metadata["training"].value
    return {r.data["what"]: r.data["value"] for r in table.records}


@pytest.mark.slow
def test_recommender_model_warm_starts_from_the_champion(tmp_path, toy, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("RECSYS_HOME", str(home))
    monkeypatch.setenv("RECSYS_WARM_START", "1")
    paths = ensure_home(HomePaths.at(home))
    toy_warehouse(paths, toy)
    defs = definitions_training(home, **{**toy.FAST, "max_epochs": 6, "warm_start_epochs": 1})

    first = materialize(defs, ["recommender_model", "model_evaluation"], with_check=True)
    assert first.success
    assert _training_table(first)["warm start"] == "no champion of 2020-01-01 or before: full retrain"

    second = materialize(defs, ["recommender_model"], with_check=False)
    assert second.success
    meta = second.asset_materializations_for_node("recommender_model")[0].metadata
    assert _training_table(second)["warm start"] == "from champion version 1"
    assert meta["epochs_trained"].value == 1 and meta["model_version"].value == "2"
    client = MlflowClient(paths.mlflow_tracking_uri)
    run = client.get_run(client.get_model_version("recsys_ranker", "2").run_id)
    assert run.data.tags["train.warm_start"] == "True"
    assert int(run.data.tags["train.warm_start_users_carried"]) == int(run.data.params["data.users"])
