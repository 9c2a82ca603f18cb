"""The figure a protocol is tuned on (``evaluation.tuning.validation_value``)."""

import numpy as np
import pandas as pd
import pytest

from recsys_pipeline.evaluation.evaluate import evaluate
from recsys_pipeline.evaluation.protocols import EvaluationSettings, make_split
from recsys_pipeline.evaluation.tuning import tune, validation_metric, validation_value
from recsys_pipeline.models.random import RandomRecommender


@pytest.fixture
def interactions():
    rng = np.random.default_rng(3)
    rows = [(f"u{u}", f"i{int(i)}", 1_000 * u + t) for u in range(40) for t, i in enumerate(rng.choice(60, 15, False))]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


class Catalog:
    """The whole catalogue (new items included): what a model ranks."""

    def __init__(self, interactions):
        self.item_ids = sorted(interactions["item_id"].unique())


def test_item_cold_protocols_are_tuned_on_both_rankings_of_the_new_items(interactions):
    split = make_split(interactions, "item_cold_start", EvaluationSettings(seed=0))
    metrics = evaluate(RandomRecommender(0).fit(split.train, Catalog(interactions)), split).metrics
    among_new, in_catalogue = metrics["cold_candidates_ndcg_at_10"], metrics["cold_ndcg_at_10"]
    assert among_new != in_catalogue  # the two rankings differ, so the mean is not either one
    for protocol in ("item_cold_start", "item_cold_mixed"):
        assert validation_metric(protocol) == "item_cold_ndcg_at_10"
        assert validation_value(metrics, protocol) == pytest.approx((among_new + in_catalogue) / 2)


def test_user_protocols_are_tuned_on_ndcg_and_missing_parts_raise(interactions):
    split = make_split(interactions, "user_last_fraction", EvaluationSettings(seed=0))
    metrics = evaluate(RandomRecommender(0).fit(split.train, None), split).metrics
    assert validation_metric("user_last_fraction") == "ndcg_at_10"
    assert validation_value(metrics, "user_last_fraction") == metrics["ndcg_at_10"]
    with pytest.raises(KeyError):
        validation_value(metrics, "item_cold_start")  # a user split has no new items' figures


def test_variants_of_one_fit_are_each_scored_and_the_trial_keeps_the_best(interactions):
    """A setting that does not change training (``variants``) costs no fit: every trial scores its one fit at
    each value and keeps the best; trial 0's default value is its variant with the default's setting."""
    split = make_split(interactions, "user_random_fraction", EvaluationSettings(seed=0))
    fits = []

    def fit(params, train):
        fits.append(params)
        return RandomRecommender(params["seed"]).fit(train, Catalog(interactions))

    def ordered(seed: int) -> RandomRecommender:
        return RandomRecommender(seed).fit(split.train, Catalog(interactions))

    def variants(params, fitted):  # the "order" setting: another random order of the same (trivial) fit
        return [({**params, "order": o}, ordered(10 * params["seed"] + o)) for o in range(4)]

    def space(trial):
        return {"seed": trial.suggest_int("seed", 1, 50)}

    result = tune(fit, space, split, "user_random_fraction", 3, default={"seed": 7, "order": 2}, variants=variants)
    assert len(fits) == 3 and fits[0] == {"seed": 7}  # one fit per trial, trial 0 the default
    for trial in result.trials:
        values = [v for _, v in trial.variant_values]
        assert [p["order"] for p, _ in trial.variant_values] == [0, 1, 2, 3] and len(set(values)) > 1
        assert trial.value == max(values)
        assert trial.params == trial.variant_values[values.index(max(values))][0]
        expected = evaluate(ordered(10 * trial.params["seed"] + trial.params["order"]), split).metrics["ndcg_at_10"]
        assert trial.value == pytest.approx(expected)
    assert result.default_value == result.trials[0].variant_values[2][1]  # seed 7, order 2
    assert result.best_value == max(t.value for t in result.trials) and result.best_params["order"] in range(4)
