"""The gate's popularity floor: a version below popularity's NDCG@10 never takes the champion alias, even when it
beats the champion's figure (pure ``decide`` and ``gate_model_version`` on hand-registered versions, no training)."""

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from recsys_pipeline.registry import gate, model_registry, tracking

NAME = "recsys_ranker"


def figures(ours: float, popularity: float) -> pd.DataFrame:
    rows = [
        ("user_last_fraction", "ours", "ndcg_at_10", ours),
        ("user_last_fraction", "popularity", "ndcg_at_10", popularity),
    ]
    return pd.DataFrame(rows, columns=["protocol", "model", "metric", "value"])


def test_decide_never_promotes_below_the_floor():
    failed = {"passed": False, "reason": "user_last_fraction: ours NDCG@10 0.0300 < popularity 0.0400"}
    passed = {"passed": True, "reason": "ours >= popularity on user_last_fraction"}
    assert gate.decide(0.5, 0.1, 0.0, passed) == gate.decide(0.5, 0.1, 0.0)
    promote, reason = gate.decide(0.5, 0.1, 0.0, failed)  # far better than the champion, still below the floor
    assert not promote
    assert reason == (
        "below the popularity floor (user_last_fraction: ours NDCG@10 0.0300 < popularity 0.0400): kept as "
        "challenger; 0.5000 vs champion 0.1000 (delta +0.4000 >= margin 0)"
    )
    promote, reason = gate.decide(0.03, None, 0.0, failed)  # the first version too
    assert not promote and reason.endswith("kept as challenger; no champion yet")


@pytest.fixture
def registry(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.quiet()
    client = MlflowClient(uri)
    client.create_registered_model(NAME)
    for _ in range(3):  # versions without a training run: the champion's recorded figure is the comparison
        client.create_model_version(NAME, source=str(tmp_path / "model"))
    return uri, client


def aliases(client) -> dict[str, str]:
    found = {a: tracking.version_by_alias(client, NAME, a) for a in (gate.CHAMPION, gate.CHALLENGER)}
    return {a: str(v.version) for a, v in found.items() if v is not None}


def test_a_version_above_the_champion_but_below_popularity_stays_challenger(registry):
    uri, client = registry
    policy = gate.ChampionPolicy()
    first = model_registry.gate_model_version(uri, NAME, "1", figures(0.30, 0.10), policy)
    assert first.promoted and aliases(client) == {"champion": "1"}
    assert client.get_model_version(NAME, "1").tags["gate.popularity_floor"] == (
        "passed: ours >= popularity on user_last_fraction"
    )

    # 0.35 beats the champion's recorded 0.30, but popularity scored 0.50 on this evaluation
    second = model_registry.gate_model_version(uri, NAME, "2", figures(0.35, 0.50), policy)
    assert not second.promoted and second.comparison == "recorded"
    assert aliases(client) == {"champion": "1", "challenger": "2"}
    tags = client.get_model_version(NAME, "2").tags
    assert tags["gate.decision"] == "challenger"
    assert tags["gate.popularity_floor"] == "failed: user_last_fraction: ours NDCG@10 0.3500 < popularity 0.5000"
    assert (
        "below the popularity floor (user_last_fraction: ours NDCG@10 0.3500 < popularity 0.5000)"
        in (tags["gate.reason"])
    )

    third = model_registry.gate_model_version(uri, NAME, "3", figures(0.40, 0.20), policy)
    assert third.promoted and aliases(client) == {"champion": "3", "challenger": "2"}


def test_a_first_version_below_popularity_is_no_champion(registry):
    uri, client = registry
    decision = model_registry.gate_model_version(uri, NAME, "1", figures(0.02, 0.09), gate.ChampionPolicy())
    assert not decision.promoted and decision.comparison == "first_version"
    assert aliases(client) == {"challenger": "1"}
    with pytest.raises(LookupError, match="no champion"):
        model_registry.champion_version(uri, NAME)
