"""Domain adaptation of the text encoder: positive pairs from co-interactions, a fine-tuning that pulls them
together, the saved encoder that ``TextEncoder`` loads, and the ``text_encoder_adaptation`` asset."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from recsys_pipeline.content.text import TextEncoder
from recsys_pipeline.content.text_adaptation import (
    AdaptationConfig,
    adapt_text_encoder,
    adapted_text_model,
    co_interaction_pairs,
)
from recsys_pipeline.resources import TextEncoderResource
from recsys_pipeline.settings import HomePaths, ensure_home

TEXTS = {
    "a": "Space station adventure with robots",
    "b": "A quiet romance in Paris",
    "c": "Detective story in foggy London",
    "d": "Cooking competition among grandmothers",
    "e": "Mountain climbing documentary",
    "f": "Animated musical about a lost dog",
}


def test_pairs_are_each_users_consecutive_distinct_items_once():
    events = pd.DataFrame(
        {
            "user_id": ["u", "u", "u", "u", "v", "v", "w"],
            "item_id": ["a", "b", "b", "c", "b", "a", "d"],
            "timestamp": [1, 2, 3, 4, 1, 2, 1],
        }
    )
    pairs = co_interaction_pairs(events)
    assert sorted(map(tuple, pairs.to_numpy().tolist())) == [("a", "b"), ("b", "c")]  # (b, a) of v = (a, b)
    assert len(co_interaction_pairs(events, max_pairs=1)) == 1
    assert co_interaction_pairs(events[events["user_id"] == "w"]).empty


def test_adaptation_pulls_the_positive_pairs_together_and_saves_a_loadable_encoder(tmp_path):
    pairs = pd.DataFrame({"anchor": ["a", "c", "e"], "positive": ["b", "d", "f"]})
    before = TextEncoder(num_threads=1).encode(list(TEXTS.values()))
    config = AdaptationConfig(steps=12, batch_size=3, lr=1e-4, max_length=16)
    facts = adapt_text_encoder(TEXTS, pairs, tmp_path / "adapted", config=config, accelerator="cpu")
    assert facts["pairs"] == 3 and facts["steps"] == 12 and facts["last_loss"] < facts["first_loss"]
    adapted = TextEncoder(tmp_path / "adapted", num_threads=1)
    after = adapted.encode(list(TEXTS.values()))
    assert adapted.dim == 384 and np.allclose(np.linalg.norm(after, axis=1), 1, atol=1e-5)
    pos = [(0, 1), (2, 3), (4, 5)]
    neg = [(0, 3), (2, 5), (4, 1)]
    gain = np.mean([after[i] @ after[j] - before[i] @ before[j] for i, j in pos])
    other = np.mean([after[i] @ after[j] - before[i] @ before[j] for i, j in neg])
    assert gain > other + 0.05, (gain, other)
    with pytest.raises(ValueError, match="no pair has both"):
        adapt_text_encoder(TEXTS, pd.DataFrame({"anchor": ["x"], "positive": ["y"]}), tmp_path / "none")


@pytest.mark.slow
def test_the_asset_versions_the_encoder_and_text_embeddings_can_read_it(tmp_path, toy, monkeypatch):
    from recsys_pipeline.definitions import build_definitions
    from tests.reliability.support import toy_warehouse

    home = tmp_path / "home"
    monkeypatch.setenv("RECSYS_HOME", str(home))
    paths = ensure_home(HomePaths.at(home))
    toy_warehouse(paths, toy)
    with pytest.raises(FileNotFoundError, match="materialize `text_encoder_adaptation` first"):
        TextEncoderResource(mode="adapted").build()
    defs = build_definitions()
    result = dg.materialize(
        [defs.get_assets_def(k) for k in defs.resolve_all_asset_keys()],
        resources=defs.resources,
        selection=dg.AssetSelection.assets("text_encoder_adaptation"),
        run_config={"ops": {"text_encoder_adaptation": {"config": {"steps": 3, "batch_size": 8}}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("text_encoder_adaptation")[0].metadata
    folder, info = adapted_text_model(paths.model_cache / "text_adapted")
    assert str(folder) == meta["path"].value and meta["steps"].value == 3
    run = MlflowClient(paths.mlflow_tracking_uri).get_run(info["mlflow_run_id"])
    assert run.data.params["steps"] == "3" and "last_loss" in run.data.metrics
    artifacts = [
        a.path for a in MlflowClient(paths.mlflow_tracking_uri).list_artifacts(run.info.run_id, "text_encoder")
    ]
    assert "text_encoder/config.json" in artifacts
    encoder = TextEncoderResource(mode="adapted").build()
    assert encoder.model_id == str(folder)  # a new model id: text_embeddings re-encodes every text
    frozen = TextEncoderResource().build()
    assert not np.allclose(encoder.encode(["Toy i1"]), frozen.encode(["Toy i1"]))
    with pytest.raises(ValueError, match="'frozen' or 'adapted'"):
        TextEncoderResource(mode="tuned").build()
