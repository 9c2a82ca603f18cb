"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis, a bounded number of examples per operation): no
request makes it answer 5xx, and every answer matches the schema it publishes."""

import atexit
import shutil
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import schemathesis
from hypothesis import HealthCheck, settings

from recsys_pipeline.content.features import ItemFeatures
from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender
from recsys_pipeline.serving.app import create_app
from recsys_pipeline.serving.publish import items_snapshot, publish_day, rank_all_users
from recsys_pipeline.settings import HomePaths


def published_app():
    """The app over a tiny published day in a temporary home (three users, four items) with the model that made
    its lists (so ``POST /recommendations`` is fuzzed too)."""
    root = tempfile.mkdtemp(prefix="recsys-fuzz-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    paths = HomePaths.at(Path(root) / "home")
    items = ["a", "b", "c", "d"]
    features = ItemFeatures(
        item_ids=items,
        modalities={"text": np.eye(4, dtype=np.float32)},
        present=np.ones((4, 1), bool),
        genres=np.zeros((4, 0), np.float32),
        genre_names=[],
        year=np.zeros(4, np.int64),
    )
    events = pd.DataFrame(
        {"user_id": ["1", "1", "2", "2", "3", "3"], "item_id": ["a", "b", "b", "c", "c", "d"]}
    ).assign(timestamp=pd.Timestamp("2024-01-01"))
    config = ModelConfig(embedding_dim=8, n_heads=2, mlp_hidden=8, max_epochs=1, batch_size=4, num_negatives=2)
    model = TwoTowerRecommender(config, TrainerConfig(accelerator="cpu", devices=1)).fit(events, features)
    recs = rank_all_users(model, events, 3, "r", "1", date(2024, 1, 1))
    titles = pd.DataFrame({"item_id": items, "title": [i.upper() for i in items]})
    publish_day(paths, date(2024, 1, 1), recs, items_snapshot(events, features, titles), model=model)
    return create_app(paths)


schema = schemathesis.openapi.from_asgi("/openapi.json", published_app())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_errors_and_matches_its_schema(case):
    response = case.call()
    assert response.status_code < 500, response.text[:500]
    case.validate_response(response, checks=[schemathesis.checks.not_a_server_error])
