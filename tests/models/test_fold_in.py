"""Folding users' interactions into the two-tower recommender at request time (``with_history``): a known user's
own history reproduces the trained scores, a new user is served from their first items, and a saved model folds in
as the fitted one does."""

import numpy as np
import pandas as pd
import pytest

from recsys_pipeline.evaluation.evaluate import evaluate
from recsys_pipeline.evaluation.protocols import split_user_cold_start
from recsys_pipeline.models.popularity import PopularityRecommender
from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

CPU = TrainerConfig(accelerator="cpu", devices=1)


@pytest.fixture(scope="module")
def cold_users(toy):
    content = toy.features()
    split = split_user_cold_start(toy.interactions(), 0.2, seed=0)
    config = ModelConfig(
        **dict(toy.FAST, val_fraction=0.0, history_length=5, item_item_weight=0.5, item_item_l2=5.0, seed=1)
    )
    return content, split, TwoTowerRecommender(config, CPU).fit(split.train, content)


def test_a_known_users_own_history_folds_back_to_the_trained_scores(cold_users):
    content, split, model = cold_users
    users = ["u0", "u1"] if "u0" in model.user_index else sorted(model.user_index)[:2]
    own = split.train[split.train["user_id"].isin(users)]
    folded = model.with_history(own)
    np.testing.assert_allclose(folded.score(users, content.item_ids), model.score(users, content.item_ids), atol=1e-5)
    # folding in only the first 3 events re-pools the history from them: the scores move
    first = own.sort_values("timestamp").groupby("user_id").head(3)
    moved = model.with_history(first).score(users, content.item_ids)
    assert np.abs(moved - model.score(users, content.item_ids)).max() > 1e-3


def test_a_new_user_is_served_from_their_first_items(cold_users):
    content, split, model = cold_users
    revealed, test_split = split.reveal(3)
    new_users = sorted(revealed["user_id"].unique())
    assert not set(new_users) & set(model.user_index)
    folded = model.with_history(revealed)
    assert set(folded.folded_users) == set(new_users)
    # the revealed items are excluded from the lists; the other users' scores do not move
    ranked = folded.recommend(new_users, 10)
    shown = set(zip(ranked["user_id"], ranked["item_id"]))
    assert not shown & set(zip(revealed["user_id"], revealed["item_id"]))
    np.testing.assert_array_equal(
        folded.score(["u2", "u3"], content.item_ids), model.score(["u2", "u3"], content.item_ids)
    )
    # before the fold-in every new user gets the same list; after it, their planted genre
    assert len({tuple(r) for r in model.score(new_users, content.item_ids).round(5)}) == 1
    ours = evaluate(folded, test_split).metrics
    pop = evaluate(PopularityRecommender().fit(split.train, content), test_split).metrics
    assert ours["ndcg_at_10"] > pop["ndcg_at_10"] + 0.2, (ours["ndcg_at_10"], pop["ndcg_at_10"])


def test_a_saved_model_folds_in_as_the_fitted_one(cold_users, tmp_path):
    content, split, model = cold_users
    revealed, _ = split.reveal(5)
    model.save(tmp_path / "m")
    loaded = TwoTowerRecommender.load(tmp_path / "m")
    users = sorted(revealed["user_id"].unique())
    for pool in (False, True):
        np.testing.assert_allclose(
            loaded.with_history(revealed, pool_new_users=pool).score(users, content.item_ids),
            model.with_history(revealed, pool_new_users=pool).score(users, content.item_ids),
            atol=1e-5,
        )
    # pooling a new user's history changes their scores (the pooling weights were saved and rebuilt)
    pooled = loaded.with_history(revealed, pool_new_users=True).score(users, content.item_ids)
    assert np.abs(pooled - loaded.with_history(revealed).score(users, content.item_ids)).max() > 1e-3


def test_fold_in_needs_timestamps(cold_users):
    _, split, model = cold_users
    with pytest.raises(ValueError, match="lack \\['timestamp'\\]"):
        model.with_history(pd.DataFrame({"user_id": ["x"], "item_id": ["i1"]}))


def test_a_new_users_recency_term_is_the_popularity_of_their_days(cold_users):
    """The new-user recency term is exactly ``w * z(log1p(counts))`` over the trained items; known users and a
    zero weight see none of it."""
    from dataclasses import replace

    from recsys_pipeline.models.popularity.recent import utc_seconds
    from recsys_pipeline.models.two_tower.recommender import _standardise

    content, split, model = cold_users
    assert model.config.new_user_recency_weight > 0 and model.recent_popularity is not None
    revealed, _ = split.reveal(3)
    # every toy interaction is on 2020-01-01: new users who arrive two days later see that day in their window
    revealed = revealed.assign(timestamp=revealed["timestamp"] + pd.Timedelta(days=2))
    users = sorted(revealed["user_id"].unique())
    folded = model.with_history(revealed)
    off = model.with_history(revealed)
    off.config = replace(model.config, new_user_recency_weight=0.0)
    gap = folded.score(users, content.item_ids) - off.score(users, content.item_ids)
    days = model.config.new_user_recency_days
    latest = revealed.assign(t=utc_seconds(revealed["timestamp"])).groupby("user_id")["t"].max()
    times = latest.loc[users].to_numpy()
    counts = model.recent_popularity.window_counts(times, days, content.item_ids)
    assert counts.sum() > 0, "the toy data must have interactions in the window for this test to mean anything"
    over = model.recent_popularity.window_counts(times, days, model.trained_item_ids)
    expected = model.config.new_user_recency_weight * _standardise(np.log1p(counts), np.log1p(over))
    np.testing.assert_allclose(gap, expected, atol=1e-4)
    # a known user folded in again gets no recency term
    known = ["u2"]
    own = split.train[split.train["user_id"].isin(known)]
    np.testing.assert_allclose(
        model.with_history(own).score(known, content.item_ids), model.score(known, content.item_ids), atol=1e-5
    )


def test_a_model_saved_without_recent_popularity_scores_new_users_without_it(cold_users, tmp_path):
    from dataclasses import replace

    from recsys_pipeline.models.popularity.recent import RecentPopularity

    content, split, model = cold_users
    revealed, _ = split.reveal(3)
    revealed = revealed.assign(timestamp=revealed["timestamp"] + pd.Timedelta(days=2))
    users = sorted(revealed["user_id"].unique())
    model.save(tmp_path / "m")
    (tmp_path / "m" / RecentPopularity.FILE).unlink()  # as written before the term existed
    old = TwoTowerRecommender.load(tmp_path / "m")
    assert old.recent_popularity is None
    off = model.with_history(revealed)
    off.config = replace(model.config, new_user_recency_weight=0.0)
    np.testing.assert_allclose(
        old.with_history(revealed).score(users, content.item_ids), off.score(users, content.item_ids), atol=1e-5
    )
