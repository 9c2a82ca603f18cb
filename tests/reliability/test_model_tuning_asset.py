"""``model_tuning`` through Dagster: an Optuna search whose trials are MLflow child runs and rows of the
``model_tuning`` table, and whose chosen params ``recommender_model`` then trains with (a field set in the
``training`` resource wins)."""

import json

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from recsys_pipeline.data import warehouse
from recsys_pipeline.evaluation.tuning import ITEM_ITEM_WEIGHTS, TUNED_FIELDS
from recsys_pipeline.models.two_tower.config import ModelConfig
from recsys_pipeline.settings import HomePaths, ensure_home
from tests.reliability.support import definitions_training, materialize, toy_warehouse

pytestmark = pytest.mark.reliability


def _tune(defs, **config) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [defs.get_assets_def(k) for k in defs.resolve_all_asset_keys()],
        resources=defs.resources,
        selection=dg.AssetSelection.assets("model_tuning"),
        run_config={"ops": {"model_tuning": {"config": config}}},
        raise_on_error=False,
    )


@pytest.mark.slow
def test_model_tuning_chooses_the_params_recommender_model_trains_with(tmp_path, toy, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("RECSYS_HOME", str(home))
    monkeypatch.delenv("RECSYS_MAX_EPOCHS", raising=False)
    paths = ensure_home(HomePaths.at(home))
    toy_warehouse(paths, toy)
    # lr and max_epochs are set: tuning cannot move them; the item-item weight is left to the search
    fixed = {**{k: v for k, v in toy.FAST.items() if k != "item_item_weight"}, "max_epochs": 3, "val_fraction": 0.0}
    defs = definitions_training(home, **fixed)

    tuned = _tune(defs, n_trials=3, protocol="user_random_fraction")
    assert tuned.success
    with warehouse.session(paths.warehouse) as con:
        rows = warehouse.read_frame(con, "SELECT * FROM model_tuning ORDER BY trial")
        params, about = warehouse.read_tuned_params(con)
    assert list(rows["trial"]) == [0, 1, 2] and set(rows["protocol"]) == {"user_random_fraction"}
    assert rows["chosen"].sum() == 1 and rows.loc[rows["chosen"], "value"].item() == rows["value"].max()
    base = ModelConfig(**fixed)
    searched = [f for f in TUNED_FIELDS if f not in fixed]  # what the user set is not searched
    assert searched == ["history_length", "item_item_weight", "id_dropout"]
    first = json.loads(rows["params"][0])
    # trial 0: as configured, but for the item-item weight: every trial's fit is scored at each, the best is kept
    assert {f: v for f, v in first.items() if f != "item_item_weight"} == {
        f: getattr(base, f) for f in searched if f != "item_item_weight"
    }
    assert all(set(json.loads(p)) == set(searched) for p in rows["params"])
    assert all(json.loads(p)["item_item_weight"] in ITEM_ITEM_WEIGHTS for p in rows["params"])
    assert params == json.loads(rows.loc[rows["chosen"], "params"].item())
    assert about["trials"] == 3 and about["metric"] == "ndcg_at_10" and 0 < about["value"] <= 1

    client = MlflowClient(paths.mlflow_tracking_uri)
    parent = client.get_run(about["mlflow_run_id"])
    assert parent.data.params["protocol"] == "user_random_fraction"
    assert parent.data.metrics["best_value"] == pytest.approx(about["value"])
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=10
    )
    assert sorted(float(r.data.metrics["val_ndcg_at_10"]) for r in children) == sorted(rows["value"])
    for child in children:  # the trial's value is the best of its fit scored at each item-item weight
        by_weight = [child.data.metrics[f"val_ndcg_at_10/item_item_weight_{w}"] for w in ITEM_ITEM_WEIGHTS]
        assert child.data.metrics["val_ndcg_at_10"] == pytest.approx(max(by_weight))
        chosen = float(child.data.params["item_item_weight"])
        assert by_weight[ITEM_ITEM_WEIGHTS.index(chosen)] == pytest.approx(max(by_weight))

    trained = materialize(defs, ["recommender_model"], with_check=False)
    assert trained.success
    model_params = client.get_run(client.get_model_version("recsys_ranker", "1").run_id).data
    for field in searched:
        assert (
            ModelConfig.from_params({field: model_params.params[f"model.{field}"]}).__getattribute__(field)
            == (params[field])
        )
    assert model_params.params["model.max_epochs"] == "3" and model_params.tags["tuning.protocol"] == (
        "user_random_fraction"
    )
    meta = trained.asset_materializations_for_node("recommender_model")[0].metadata["training"].value
    note = {r.data["what"]: r.data["value"] for r in meta.records}["hyperparameters"]
    assert note.startswith("model_tuning of ") and "a field set in the training resource wins" in note


def test_model_tuning_refuses_an_unknown_protocol(tmp_path, toy, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("RECSYS_HOME", str(home))
    toy_warehouse(ensure_home(HomePaths.at(home)), toy)
    result = _tune(definitions_training(home, **toy.FAST), protocol="temporal")
    assert not result.success
    failure = result.failure_data_for_node("model_tuning").error.message
    assert "cannot be tuned on" in failure


@pytest.mark.slow
def test_recsys_tune_is_a_dagster_run_and_prints_the_chosen_params(tmp_path, toy):
    """``recsys tune`` in a child process: one run of model_tuning_job on the home's instance, tagged with its
    origin; the printed choice is the table's."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    paths = ensure_home(HomePaths.at(home))
    toy_warehouse(paths, toy)
    env = {**os.environ, "RECSYS_HOME": str(home), "RECSYS_MAX_EPOCHS": "2"}
    out = subprocess.run(
        [sys.executable, "-m", "recsys_pipeline.cli", "tune", "--trials", "2", "--protocol", "item_cold_start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with warehouse.session(paths.warehouse, read_only=True) as con:
        params, about = warehouse.read_tuned_params(con)
    assert about["protocol"] == "item_cold_start" and about["metric"] == "item_cold_ndcg_at_10"
    assert f"validation item_cold_ndcg_at_10 {about['value']:.4f}" in out.stdout
    assert "max_epochs" not in params  # RECSYS_MAX_EPOCHS fixes it: not searched
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        (run,) = instance.get_runs()
        assert run.job_name == "model_tuning_job" and run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["recsys/origin"] == "tune"


def test_model_config_precedence_defaults_then_tuned_then_max_epochs_then_the_resource(monkeypatch):
    from recsys_pipeline.resources import ModelOverrides, TrainingResource

    tuned = {"history_length": 0, "item_item_weight": 1.0, "lr": 0.009, "max_epochs": 17}
    monkeypatch.delenv("RECSYS_MAX_EPOCHS", raising=False)
    config = TrainingResource(model=ModelOverrides(lr=0.002)).build_model_config(tuned)
    assert (config.history_length, config.item_item_weight, config.max_epochs) == (0, 1.0, 17)
    assert config.lr == 0.002  # set in the resource: wins over the search
    assert config.id_dropout == ModelConfig().id_dropout  # neither searched nor set: the default
    monkeypatch.setenv("RECSYS_MAX_EPOCHS", "3")
    assert TrainingResource().build_model_config(tuned).max_epochs == 3
    assert TrainingResource().fixed_fields() == ["max_epochs"]


@pytest.mark.slow
def test_a_chosen_trial_reaches_the_trained_model_and_a_stale_one_fails_clearly(tmp_path, toy, monkeypatch):
    """A ``model_tuning`` table written by hand with non-default params: the trained run logs exactly them; params
    that no longer fit ``ModelConfig`` stop ``recommender_model`` with a message, not a traceback."""
    import pandas as pd

    from recsys_pipeline.data.schema import MODEL_TUNING

    home = tmp_path / "home"
    monkeypatch.setenv("RECSYS_HOME", str(home))
    monkeypatch.delenv("RECSYS_MAX_EPOCHS", raising=False)
    paths = ensure_home(HomePaths.at(home))
    toy_warehouse(paths, toy)
    fixed = {k: v for k, v in toy.FAST.items() if k not in ("item_item_weight", "lr")}
    defs = definitions_training(home, **{**fixed, "max_epochs": 2, "val_fraction": 0.0})

    def write(params: dict) -> None:
        row = {"tuned_at": pd.Timestamp("2020-01-02"), "protocol": "user_last_fraction", "metric": "ndcg_at_10"}
        rows = pd.DataFrame(
            [
                {**row, "trial": 0, "params": "{}", "value": 0.1, "seconds": 1.0, "chosen": False},
                {**row, "trial": 1, "params": json.dumps(params), "value": 0.2, "seconds": 1.0, "chosen": True},
            ]
        ).assign(mlflow_run_id="run-0")
        with warehouse.session(paths.warehouse) as con:
            warehouse.replace_table(con, MODEL_TUNING, rows)

    write({"history_length": 0, "item_item_weight": 1.0, "lr": 0.0077})
    assert materialize(defs, ["recommender_model"], with_check=False).success
    client = MlflowClient(paths.mlflow_tracking_uri)
    run = client.get_run(client.get_model_version("recsys_ranker", "1").run_id).data
    assert run.params["model.history_length"] == "0" and run.params["model.item_item_weight"] == "1.0"
    assert run.params["model.lr"] == "0.0077" and run.tags["tuning.mlflow_run_id"] == "run-0"

    write({"a_field_renamed_since": 3})
    stale = materialize(defs, ["recommender_model"], with_check=False)
    assert not stale.success
    message = stale.failure_data_for_node("recommender_model").error.message
    assert "do not fit this ModelConfig" in message and "materialize model_tuning again" in message
