"""Champion / challenger in the MLflow registry, the champion as a pyfunc, and the PNG charts of the runs.

Tiny planted data (the ``toy`` fixture): a mediocre first version, a worse one, a better one, each trained and
evaluated by the functions the assets call (``registry.runs.train_and_log`` / ``evaluate_and_gate``).
"""

import dataclasses
import json
from datetime import date

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from recsys_pipeline.evaluation.protocols import EvaluationSettings, evaluation_fingerprint
from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
from recsys_pipeline.registry import gate, model_registry, runs, tracking
from recsys_pipeline.serving.publish import rank_all_users

NAME = "recsys_ranker"
TRAINER = TrainerConfig(accelerator="cpu", devices=1, num_threads=1)
POLICY = gate.ChampionPolicy()  # user_last_fraction.ours.ndcg_at_10, margin 0
SETTINGS = EvaluationSettings(protocols=("user_last_fraction",), k=20)


def configs(toy) -> dict[str, ModelConfig]:
    """More epochs learn more of the planted genre structure: measured NDCG@10 on this split 0.187 (2 epochs),
    0.070 (1 epoch), 0.438 (6 epochs); training is deterministic on CPU, so the order is stable."""
    return {
        "mediocre": ModelConfig(**{**toy.FAST, "max_epochs": 2}),
        "worse": ModelConfig(**{**toy.FAST, "max_epochs": 1}),
        "better": ModelConfig(**{**toy.FAST, "max_epochs": 6}),
    }


def train_evaluate_gate(store, config):
    """What one night does: recommender_model (train + register) then model_evaluation (evaluate + gate)."""
    uri, exp, data, features = store["uri"], store["exp"], store["data"], store["features"]
    trained = runs.train_and_log(data, features, config, TRAINER, uri, exp, NAME)
    gated = runs.evaluate_and_gate(
        data, features, trained.model_version, ModelConfig(), TRAINER, SETTINGS, POLICY, uri, exp, NAME
    )
    return trained, gated.evaluation, gated.gate


@pytest.fixture(scope="module")
def store(tmp_path_factory, toy):
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking.quiet()
    exp = tracking.experiment_id(uri, "test", str(root / "artifacts"))
    s = {
        "uri": uri,
        "exp": exp,
        "data": toy.interactions(),
        "features": toy.features(),
        "nights": [],
        "aliases": [],
        "configs": configs(toy),
    }
    client = MlflowClient(uri)
    for name in ("mediocre", "worse", "better"):
        s["nights"].append(train_evaluate_gate(s, s["configs"][name]))
        holders = {alias: tracking.version_by_alias(client, NAME, alias) for alias in ("champion", "challenger")}
        s["aliases"].append({alias: str(v.version) for alias, v in holders.items() if v is not None})
    return s


def version_tags(store, version):
    return MlflowClient(store["uri"]).get_model_version(NAME, version).tags


def test_first_version_becomes_champion(store):
    trained, evaluated, decision = store["nights"][0]
    assert trained.model_version == "1"
    assert decision.promoted and decision.comparison == "first_version" and decision.champion_version is None
    assert store["aliases"][0] == {"champion": "1"}
    tags = version_tags(store, "1")
    assert tags["gate.decision"] == "champion" and "first evaluated version" in tags["gate.reason"]
    figure = evaluated.metrics.query("protocol == 'user_last_fraction' and model == 'ours' and metric == 'ndcg_at_10'")
    assert float(tags["gate.value"]) == pytest.approx(float(figure["value"].iloc[0]), abs=1e-6)


def test_worse_challenger_keeps_the_champion_and_says_why(store):
    first_value = store["nights"][0][2].value
    _, evaluated, decision = store["nights"][1]
    assert not decision.promoted and decision.champion_version == "1"
    # same interactions, features and settings as the champion's own gate (same fingerprint): its recorded figure
    # is what retraining its config would give, so nothing is retrained
    assert decision.comparison == "recorded_same_split"
    assert decision.champion_value == pytest.approx(first_value, abs=1e-6)
    assert decision.value < decision.champion_value
    assert store["aliases"][1] == {"champion": "1", "challenger": "2"}
    client = MlflowClient(store["uri"])
    tags = version_tags(store, "2")
    assert tags["gate.decision"] == "challenger" and tags["gate.champion_version"] == "1"
    assert "< margin 0" in tags["gate.reason"] and "ndcg_at_10" in tags["gate.reason"]
    # the same decision sits on the training run and the evaluation run, with the champion's re-scored figure
    for run_id in (client.get_model_version(NAME, "2").run_id, evaluated.run_id):
        assert client.get_run(run_id).data.tags["gate.decision"] == "challenger"
    assert client.get_run(evaluated.run_id).data.metrics["user_last_fraction.champion.ndcg_at_10"] == pytest.approx(
        decision.champion_value
    )


def test_the_champion_config_is_retrained_only_on_other_inputs(store):
    uri, data, features = store["uri"], store["data"], store["features"]
    champion = model_registry.champion_version(uri, NAME)
    champion_config = model_registry.version_model_config(uri, NAME, champion.version)
    fewer = data.iloc[: len(data) - 5]  # other inputs: another fingerprint
    same = evaluation_fingerprint(data, features, SETTINGS)
    assert same == evaluation_fingerprint(data.sample(frac=1.0, random_state=0), features, SETTINGS)  # row order
    assert evaluation_fingerprint(fewer, features, SETTINGS) != same
    assert version_tags(store, str(champion.version))["gate.split"] == same
    retrained = []

    def rescore(config):
        retrained.append(config)
        return 1.0  # the champion keeps the alias whatever happens here

    metrics = store["nights"][1][1].metrics
    decision = model_registry.gate_model_version(
        uri, NAME, "2", metrics, POLICY, rescore, split=evaluation_fingerprint(fewer, features, SETTINGS)
    )
    assert decision.comparison == "retrained_same_split" and retrained == [champion_config]
    again = model_registry.gate_model_version(uri, NAME, "2", metrics, POLICY, rescore, split=same)
    assert again.comparison == "recorded_same_split" and len(retrained) == 1
    assert not decision.promoted and not again.promoted  # v2 (the worse config) stays challenger


def test_better_challenger_becomes_champion(store):
    _, _, decision = store["nights"][2]
    assert decision.promoted and decision.champion_version == "1" and decision.value > decision.champion_value
    assert store["aliases"][2] == {"champion": "3", "challenger": "2"}  # the loser keeps its alias
    assert version_tags(store, "3")["gate.decision"] == "champion"
    assert str(model_registry.champion_version(store["uri"], NAME).version) == "3"


def test_same_config_and_margin_rules(store):
    # a nightly retrain of the champion's config ties on the same split: promoted at margin 0, kept at 0.01
    assert gate.decide(0.3, 0.3, 0.0)[0] and not gate.decide(0.3, 0.3, 0.01)[0]
    assert not gate.decide(float("nan"), 0.3)[0] and gate.decide(0.1, None)[0]
    with pytest.raises(ValueError, match="<protocol>.<model>.<metric>"):
        gate.ChampionPolicy("ndcg_at_10")
    with pytest.raises(ValueError, match="min_margin"):
        gate.ChampionPolicy(min_margin=-0.1)
    metrics = pd.DataFrame(
        {"protocol": ["item_cold_start"], "model": ["ours"], "metric": ["ndcg_at_10"], "value": [0.5]}
    )
    with pytest.raises(ValueError, match="not in this evaluation"):
        model_registry.gate_model_version(store["uri"], NAME, "3", metrics, POLICY)


def test_recommendations_and_pyfunc_use_the_champion(store):
    uri, data, features = store["uri"], store["data"], store["features"]
    mlflow.set_tracking_uri(uri)
    champion = model_registry.champion_version(uri, NAME)
    model = model_registry.load_version(uri, f"models:/{NAME}/{champion.version}", features)
    seen = data[["user_id", "item_id"]].drop_duplicates()
    recs = rank_all_users(model, seen, 5, champion.run_id, champion.version, date(2024, 1, 1))
    assert recs["strategy"].eq("personalized").all() and recs.groupby("user_id").size().eq(5).all()
    assert recs.merge(seen, on=["user_id", "item_id"]).empty  # seen items excluded
    assert (recs["model_version"] == "3").all()
    # interactions the champion was not trained on are folded in when the lists are made
    known = data[data["user_id"] == "u0"]
    newer = pd.DataFrame(
        {
            "user_id": ["newbie"] * 3 + ["u0"],
            "item_id": [*known["item_id"].iloc[:3], features.item_ids[-1]],
            "timestamp": pd.Timestamp("2030-01-01"),
        }
    )
    events = pd.concat([data[["user_id", "item_id", "timestamp"]], newer], ignore_index=True)
    folded = rank_all_users(model, events, 5, champion.run_id, champion.version, date(2024, 1, 1))
    strategy = folded.groupby("user_id")["strategy"].first()
    assert strategy["newbie"] == "folded_in" and strategy["u0"] == "folded_in"
    assert strategy.drop(["newbie", "u0"]).eq("personalized").all()
    assert folded.merge(newer, on=["user_id", "item_id"]).empty  # the newer items are excluded too
    unchanged = folded[folded["user_id"] == "u7"]["item_id"].tolist()
    assert unchanged == recs[recs["user_id"] == "u7"]["item_id"].tolist()  # the others' lists do not move
    served = mlflow.pyfunc.load_model(model_registry.champion_uri(NAME))
    users = ["u0", "u7"]
    out = served.predict(pd.DataFrame({"user_id": users}), params={"k": 5})
    assert list(out.columns) == ["user_id", "rank", "item_id", "score"]
    assert out["item_id"].tolist() == recs[recs["user_id"].isin(users)]["item_id"].tolist()
    # a bad k or input: MLflow's INVALID_PARAMETER_VALUE, which `mlflow models serve` answers as 400 with the message
    for bad_input, bad_params in ((pd.DataFrame({"user_id": users}), {"k": 0}), (pd.DataFrame({"user": users}), {})):
        with pytest.raises(mlflow.exceptions.MlflowException, match="param k must be an integer in 1..|'user_id'") as e:
            served.predict(bad_input, params=bad_params)
        assert e.value.get_http_status_code() == 400
    explained = served.predict(pd.DataFrame({"user_id": users}), params={"k": 5, "explain": True})
    assert list(explained.columns) == ["user_id", "rank", "item_id", "score", "because", "modality_weights"]
    expected = model.explain(["u7"], out.loc[out["user_id"] == "u7", "item_id"].tolist())
    assert (
        explained.loc[explained["user_id"] == "u7", "modality_weights"].tolist()
        == expected["modality_weights"].tolist()
    )
    # the champion (v3) is not the worse challenger (v2): their lists differ
    loser = mlflow.pyfunc.load_model(f"models:/{NAME}@challenger").predict(
        pd.DataFrame({"user_id": users}), params={"k": 5}
    )
    assert loser["item_id"].tolist() != out["item_id"].tolist()
    # the logged request example validates against the signature and predicts (what `mlflow models serve` does)
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_registry.champion_uri(NAME))
    with open(f"{local}/serving_input_example.json") as handle:
        example = json.load(handle)
    assert example["params"] == {"k": 10}
    answer = mlflow.models.validate_serving_input(model_registry.champion_uri(NAME), example)
    assert len(answer) == 10 and answer["rank"].tolist() == list(range(1, 11))


def test_no_champion_is_a_clear_error(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(LookupError, match="no champion"):
        model_registry.champion_version(uri, NAME)


def test_runs_carry_training_curves_and_evaluation_chart(store):
    trained, evaluated, _ = store["nights"][2]
    client = MlflowClient(store["uri"])
    charts = {a.path for a in client.list_artifacts(trained.run_id, "charts")}
    assert tracking.TRAINING_CHART in charts
    assert tracking.EVALUATION_CHART in {a.path for a in client.list_artifacts(evaluated.run_id, "charts")}
    local = client.download_artifacts(trained.run_id, tracking.TRAINING_CHART)
    with open(local, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert len(client.get_metric_history(trained.run_id, "val_ndcg_at_10")) >= 2  # what the curve plots


def test_version_config_round_trips_through_run_params(store):
    assert model_registry.version_model_config(store["uri"], NAME, "2") == store["configs"]["worse"]
    assert dataclasses.asdict(model_registry.version_model_config(store["uri"], NAME, "3")) == dataclasses.asdict(
        store["configs"]["better"]
    )
    assert str(model_registry.latest_version(store["uri"], NAME).version) == "3"


def test_a_model_logged_by_the_previous_release_still_loads(tmp_path, toy):
    """Homes written before the redesign hold artifacts as weights/ + item_content.npz + seen.parquet; the loader
    the ``recommendations`` asset uses reads them and ranks exactly as the saved model does."""
    from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

    features, data = toy.features(), toy.interactions()
    model = TwoTowerRecommender(ModelConfig(**{**toy.FAST, "max_epochs": 1}), TRAINER).fit(data, features)
    old = tmp_path / "old" / "artifacts"
    model.save(old / "weights")
    for name in ("item_features.npz", "seen.parquet", "recommender.json"):  # the old release kept these apart
        (old / "weights" / name).unlink()
    features.to_npz(old / "item_content.npz")
    data[["user_id", "item_id"]].drop_duplicates().to_parquet(old / "seen.parquet")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = tracking.experiment_id(uri, "old-layout", str(tmp_path / "store"))
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifacts(str(tmp_path / "old"), artifact_path="model")
    loaded = model_registry.load_version(uri, f"runs:/{run.info.run_id}/model")
    users = ["u0", "u3", "stranger"]
    pd.testing.assert_frame_equal(loaded.recommend(users, k=5), model.recommend(users, k=5))


def test_the_champion_is_rescored_with_its_validation_carved_as_the_gate_protocol(toy, monkeypatch):
    from recsys_pipeline.models.popularity import PopularityRecommender
    from recsys_pipeline.models.two_tower import recommender

    built = []

    class Recording:
        def __init__(self, config, trainer_config):
            built.append(config)

        def fit(self, interactions, features):
            return PopularityRecommender().fit(interactions, features)

    monkeypatch.setattr(recommender, "TwoTowerRecommender", Recording)
    data, features = toy.interactions(), toy.features()
    for protocol, val_split in (("user_random_fraction", "random"), ("user_last_fraction", "last")):
        policy = gate.ChampionPolicy(metric=f"{protocol}.ours.ndcg_at_10")
        settings = EvaluationSettings(protocols=(protocol,), k=20)
        value = model_registry.score_config(data, features, ModelConfig(val_split="last"), TRAINER, policy, settings)
        assert built[-1].val_split == val_split and 0 < value <= 1
