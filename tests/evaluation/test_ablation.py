"""The modality ablation: hidden at inference on the evaluated models (logged in MLflow), or retrained per variant."""

from functools import partial

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from recsys_pipeline.content.features import ItemFeatures
from recsys_pipeline.evaluation.ablation import ablation_table, masked_ablation, retrained_ablation
from recsys_pipeline.evaluation.evaluate import evaluate_protocols, modality_groups
from recsys_pipeline.evaluation.protocols import EvaluationSettings
from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
from recsys_pipeline.models.two_tower.recommender import two_tower_for_split
from recsys_pipeline.registry import tracking
from recsys_pipeline.registry.runs import ablation_and_log


def _toy_data(n_users=40, n_items=60, seed=0):
    """Users in two taste groups; item 'image' vectors carry the group, text vectors are noise; half the items
    have an image."""
    rng = np.random.default_rng(seed)
    group = np.arange(n_items) % 2
    rows = []
    for u in range(n_users):
        liked = rng.choice(np.flatnonzero(group == u % 2), size=12, replace=False)
        rows += [(f"u{u}", f"i{i}", pd.Timestamp("2020-01-01") + pd.Timedelta(hours=t)) for t, i in enumerate(liked)]
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).assign(value=1.0)
    image = np.eye(2, 8, dtype=np.float32)[group] + 0.01 * rng.standard_normal((n_items, 8)).astype(np.float32)
    present = np.stack([np.ones(n_items, bool), np.arange(n_items) % 4 < 2], axis=1)
    content = ItemFeatures(
        item_ids=[f"i{i}" for i in range(n_items)],
        modalities={"text": rng.standard_normal((n_items, 6)).astype(np.float32), "image": image * present[:, 1:]},
        present=present,
        genres=np.zeros((n_items, 0), np.float32),
        genre_names=[],
        year=np.zeros(n_items, np.int64),
    )
    return interactions, content


SMALL = dict(
    embedding_dim=8,
    mlp_hidden=16,
    max_epochs=2,
    refit=False,
    val_fraction=0.0,
    num_negatives=16,
    batch_size=64,
    exclude_modalities="",  # these tests hide or drop the image: the model must read it
)


def test_masked_ablation_hides_modalities_of_the_evaluated_models_and_logs_it(tmp_path):
    interactions, content = _toy_data()
    settings = EvaluationSettings(protocols=("user_last_fraction", "item_cold_start"), k=10)
    config = ModelConfig(**SMALL)
    trainer = TrainerConfig(accelerator="cpu", devices=1)
    evaluation = evaluate_protocols(
        partial(two_tower_for_split, config, trainer),
        interactions,
        content,
        settings,
        modality_groups(content),
    )
    assert set(evaluation.models) == set(evaluation.splits) == set(settings.protocols)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.experiment_id(uri, "ablation-test", str(tmp_path / "art"))
    table = ablation_and_log(evaluation, content, settings, ["text", "text_image", "all"], uri, exp)
    status = table.drop_duplicates("variant").set_index("variant")["status"].to_dict()
    # text+image is every modality here: the evaluated model itself; "all" is the same
    assert status == {"text": "masked at inference", "text_image": "evaluation model", "all": "same as text_image"}
    assert set(table["protocol"]) == set(settings.protocols) and set(table["fusion"]) == {"attention"}
    ours = evaluation.metrics[evaluation.metrics["model"] == "ours"]
    reused = table[table["variant"] == "text_image"].merge(ours, on=["protocol", "metric"])
    assert len(reused) == len(ours)
    np.testing.assert_array_equal(reused["value_x"], reused["value_y"])
    run = MlflowClient(uri).get_run(table["mlflow_run_id"].iloc[0])  # one run per variant, the first is text
    assert run.info.run_name == "ablation: text" and run.data.params["variant"] == "text"
    masked = table[(table["variant"] == "text") & (table["protocol"] == "item_cold_start")].set_index("metric")
    recall = run.data.metrics["item_cold_start.cold_candidates_recall_at_10"]
    assert recall == pytest.approx(masked.loc["cold_candidates_recall_at_10", "value"])
    assert run.data.params["method"] == "modalities hidden at inference"
    assert table.groupby("variant")["mlflow_run_id"].nunique().eq(1).all() and table["mlflow_run_id"].nunique() == 3
    # hiding the image changes the vectors of items that have one, and only theirs
    model = evaluation.models["user_last_fraction"]
    full = model.item_vectors().numpy()
    text_only = model.with_features(content.with_modalities(["text"])).item_vectors().numpy()
    has_image = content.present[:, 1]
    changed = np.abs(full - text_only).max(axis=1) > 1e-6
    assert changed[has_image].all() and not changed[~has_image].any()
    with pytest.raises(ValueError, match="unknown ablation"):
        masked_ablation(evaluation, content, 10, ["all_concat"])


def test_retrained_ablation_trains_each_distinct_variant_once():
    interactions, content = _toy_data()
    groups = modality_groups(content, "image")
    assert len(groups["with_image"]) == 30 and groups["with_image"].isdisjoint(groups["without_image"])
    config = ModelConfig(**{**SMALL, "max_epochs": 1})
    settings = EvaluationSettings(protocols=("item_cold_start",), k=10)
    table = retrained_ablation(
        config,
        TrainerConfig(accelerator="cpu", devices=1),
        interactions,
        content,
        settings,
        ["text", "text_image", "all", "all_concat"],
    )
    status = table.drop_duplicates("variant").set_index("variant")["status"].to_dict()
    # text_image is every modality here: "all" reuses it; concat is a different model
    assert status == {"text": "trained", "text_image": "trained", "all": "same as text_image", "all_concat": "trained"}
    got = table.pivot_table(index="variant", columns="metric", values="value", aggfunc="first")
    assert got.loc["all", "recall_at_10"] == got.loc["text_image", "recall_at_10"]
    assert {
        "with_image_recall_at_10",
        "cold_candidates_with_image_recall_at_10",
        "cold_candidates_without_image_recall_at_10",
    } <= set(got.columns)
    md = ablation_table(table, ["cold_candidates_recall_at_10"])
    assert md.count("\n") == 5 and "all_concat" in md  # header, rule, four variants
    # the variant equal to the evaluated model (every modality, same fusion) reuses its figures: nothing trained
    reference = pd.DataFrame(
        {
            "protocol": "item_cold_start",
            "model": ["ours", "popularity"],
            "metric": "recall_at_10",
            "value": [0.25, 0.125],
        }
    )
    reused = retrained_ablation(
        config, TrainerConfig(), interactions, content, settings, ["text_image", "all"], reference
    )
    assert reused[["variant", "status", "metric", "value"]].values.tolist() == [
        ["text_image", "evaluation model", "recall_at_10", 0.25],
        ["all", "same as text_image", "recall_at_10", 0.25],
    ]
    with pytest.raises(ValueError, match="unknown ablation"):
        retrained_ablation(config, TrainerConfig(), interactions, content, settings, ["video"])


def test_ablation_of_a_model_that_does_not_read_images(tmp_path):
    """The default model leaves the image out (``exclude_modalities="image"``): masking it away measures nothing,
    so the masked ablation says so and the text variant is the evaluated model; the retrained ablation still
    trains text + image, and reuses the evaluation's figures for text."""
    interactions, content = _toy_data()
    settings = EvaluationSettings(protocols=("item_cold_start",), k=10)
    config = ModelConfig(**{**SMALL, "exclude_modalities": "image"})
    trainer = TrainerConfig(accelerator="cpu", devices=1)
    evaluation = evaluate_protocols(partial(two_tower_for_split, config, trainer), interactions, content, settings)
    assert evaluation.models["item_cold_start"].modality_dims == {"text": content.modality_dims["text"]}
    table = masked_ablation(evaluation, content, 10)
    status = table.drop_duplicates("variant").set_index("variant")["status"].to_dict()
    assert status == {
        "text": "evaluation model",
        "text_image": "skipped: the model does not read image",
        "all": "same as text",
    }
    reference = evaluation.metrics[evaluation.metrics["metric"] == "recall_at_10"]
    retrained = retrained_ablation(config, trainer, interactions, content, settings, ["text", "text_image"], reference)
    status = retrained.drop_duplicates("variant").set_index("variant")["status"].to_dict()
    assert status == {"text": "evaluation model", "text_image": "trained"}
    assert "cold_candidates_with_image_recall_at_10" in set(
        retrained.loc[retrained["variant"] == "text_image", "metric"]
    )
