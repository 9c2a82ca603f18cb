"""The champion by day (issue 18): a version is gated against the champion of its own day, the ``champion`` alias
never moves back to an older day when an old day is re-run after newer ones, and the lists of day D rank with the
newest promoted version of D or before.

Versions are registered by hand (no training): each with its ``partition_date`` tag and a figure on the gate
metric, so every decision below is the arithmetic of ``registry.gate`` on known numbers.
"""

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from recsys_pipeline.registry import gate, model_registry, tracking

NAME = "recsys_ranker"
POLICY = gate.ChampionPolicy()  # user_last_fraction.ours.ndcg_at_10, margin 0


def figures(ours: float, popularity: float = 0.05) -> pd.DataFrame:
    """An evaluation's ``protocol, model, metric, value`` rows: ours vs popularity on the gate protocol."""
    return pd.DataFrame(
        [
            ("user_last_fraction", "ours", "ndcg_at_10", ours),
            ("user_last_fraction", "popularity", "ndcg_at_10", popularity),
        ],
        columns=["protocol", "model", "metric", "value"],
    )


@pytest.fixture
def registry(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.quiet()
    experiment = tracking.experiment_id(uri, "days", str(tmp_path / "artifacts"))
    client = MlflowClient(uri)
    client.create_registered_model(NAME)

    def register(day: str | None) -> str:
        """A new version trained as of ``day`` (no model params: the gate compares recorded figures)."""
        run = client.create_run(experiment)
        tags = {model_registry.PARTITION_DATE_TAG: day} if day else {}
        return str(
            client.create_model_version(NAME, f"runs:/{run.info.run_id}/model", run.info.run_id, tags=tags).version
        )

    def gate_it(version: str, ours: float, popularity: float = 0.05) -> gate.GateDecision:
        return model_registry.gate_model_version(uri, NAME, version, figures(ours, popularity), POLICY)

    def alias(name: str) -> str | None:
        holder = tracking.version_by_alias(client, NAME, name)
        return None if holder is None else str(holder.version)

    return uri, register, gate_it, alias


def test_an_old_day_rerun_after_newer_ones_is_champion_of_its_day_and_the_alias_stays(registry):
    uri, register, gate_it, alias = registry
    v1 = register("2018-09-20")
    assert gate_it(v1, 0.10).promoted and alias("champion") == v1
    v2 = register("2018-09-24")
    assert gate_it(v2, 0.12).promoted and alias("champion") == v2  # a later day: the alias moves forward

    # 2018-09-22 re-run (a backfill) after 2018-09-24 exists: measured against the champion of ITS day (v1,
    # 2018-09-20, 0.10), not the alias holder (v2, 0.12), and promoted for its day without moving the alias
    v3 = register("2018-09-22")
    decision = gate_it(v3, 0.11)
    assert decision.promoted and decision.champion_version == v1 and decision.champion_value == pytest.approx(0.10)
    assert alias("champion") == v2
    assert "the champion alias stays on v2, of a later day (2018-09-24)" in decision.reason

    # which version ranks the lists of each day: the newest promoted of that day or before
    by_day = {d: str(model_registry.champion_for_day(uri, NAME, d).version) for d in ("2018-09-21", "2018-09-23")}
    assert by_day == {"2018-09-21": v1, "2018-09-23": v3}
    assert str(model_registry.champion_for_day(uri, NAME, "2018-09-30").version) == v2 == alias("champion")
    with pytest.raises(LookupError, match="no champion for 2018-09-19 or an earlier day"):
        model_registry.champion_for_day(uri, NAME, "2018-09-19")


def test_a_day_rerun_is_measured_against_that_days_earlier_champion_and_a_loser_moves_nothing(registry):
    uri, register, gate_it, alias = registry
    v1 = register("2018-09-24")
    assert gate_it(v1, 0.12).promoted
    v2 = register("2018-09-24")  # the same day re-materialized: the newer version of the day
    assert str(model_registry.version_for_partition(uri, NAME, "2018-09-24").version) == v2
    lost = gate_it(v2, 0.11)
    assert not lost.promoted and lost.champion_version == v1 and alias("champion") == v1
    assert alias("challenger") == v2
    assert str(model_registry.champion_for_day(uri, NAME, "2018-09-24").version) == v1  # the loser never ranks lists
    below = register("2018-09-25")
    decision = gate_it(below, 0.30, popularity=0.40)  # far above the champion, below the popularity floor
    assert not decision.promoted and "below the popularity floor" in decision.reason
    assert alias("champion") == v1 and str(model_registry.champion_for_day(uri, NAME, "2018-09-25").version) == v1
    with pytest.raises(LookupError, match="no model of 2018-09-26"):
        model_registry.version_for_partition(uri, NAME, "2018-09-26")


def test_the_first_version_of_an_earlier_day_than_every_champion_has_no_champion_to_beat(registry):
    uri, register, gate_it, alias = registry
    v1 = register("2018-09-24")
    assert gate_it(v1, 0.12).promoted
    early = register("2018-09-01")
    decision = gate_it(early, 0.08)
    assert decision.promoted and decision.comparison == "first_version" and alias("champion") == v1
    assert decision.reason.startswith("no champion of 2018-09-01 or an earlier day")


def test_versions_without_a_day_gate_as_before_against_the_alias_holder(registry):
    uri, register, gate_it, alias = registry
    old = register(None)  # registered before daily partitions
    assert gate_it(old, 0.10).promoted and alias("champion") == old
    new = register("2018-09-24")
    decision = gate_it(new, 0.11)  # a day's version is newer than any version without one
    assert decision.promoted and decision.champion_version == old and alias("champion") == new
