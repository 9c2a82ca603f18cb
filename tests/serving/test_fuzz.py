"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis, a bounded number of examples per operation): no
request makes it answer 5xx, and every answer matches the schema it publishes."""

import tempfile
from datetime import date
from pathlib import Path

import pandas as pd
import schemathesis
from hypothesis import HealthCheck, settings

from recsys_pipeline.serving.app import create_app
from recsys_pipeline.serving.snapshot import ITEMS, publish_snapshot
from recsys_pipeline.settings import HomePaths


def published_app():
    """The app over a tiny published snapshot in a temporary home (two users, three items)."""
    paths = HomePaths.at(Path(tempfile.mkdtemp(prefix="recsys-fuzz-")) / "home")
    recs = pd.DataFrame(
        {
            "user_id": ["1"] * 3 + ["2"] * 3,
            "rank": [1, 2, 3] * 2,
            "item_id": ["a", "b", "c", "b", "c", "a"],
            "score": [0.9, 0.8, 0.7] * 2,
            "strategy": "personalized",
        }
    ).assign(model_run_id="r", model_version="1", produced_on=date(2024, 1, 1))
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["A", "B", "C"], "users": [3, 2, 1], "rank": [1, 2, 3]})
    publish_snapshot(paths, items, ITEMS)
    publish_snapshot(paths, recs)
    return create_app(paths)


schema = schemathesis.openapi.from_asgi("/openapi.json", published_app())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_errors_and_matches_its_schema(case):
    response = case.call()
    assert response.status_code < 500, response.text[:500]
    case.validate_response(response, checks=[schemathesis.checks.not_a_server_error])
