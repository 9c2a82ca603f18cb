"""Explanations: the user's item named first really carries the largest share of an item's score (remove it and the
score drops the most, by the stated amount), and the modality shares of an item's content."""

import copy

import numpy as np
import pandas as pd
import pytest

from recsys_pipeline.models.base import SeenItems
from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender


@pytest.fixture(scope="module")
def trained(item_item_model):
    return item_item_model


def _without(model: TwoTowerRecommender, user: str, item: str) -> TwoTowerRecommender:
    pairs = model.seen.pairs()
    other = copy.copy(model)
    other.seen = SeenItems(pairs[~((pairs["user_id"] == user) & (pairs["item_id"] == item))])
    return other


@pytest.mark.parametrize("user", ["u0", "u5", "u13"])
def test_the_named_item_is_the_one_whose_removal_drops_the_score_most(trained, user):
    content, data, model = trained
    listed = model.recommend([user], 5)["item_id"].tolist()
    explained = model.explain([user], listed)
    assert explained["item_id"].tolist() == listed
    mine = sorted(data.loc[data["user_id"] == user, "item_id"].unique())
    for row in explained.itertuples():
        before = model.score([user], [row.item_id])[0, 0]
        drops = {i: before - _without(model, user, i).score([user], [row.item_id])[0, 0] for i in mine}
        largest = max(drops.values())
        assert row.because, f"no explanation for {row.item_id}"
        # the named item's removal drops the score most (two items can tie exactly: either may be named)
        assert drops[row.because[0]] >= largest - 1e-6, (row.because, sorted(drops.items(), key=lambda kv: -kv[1])[:3])
        np.testing.assert_allclose(row.contributions, [drops[i] for i in row.because], rtol=1e-3, atol=1e-5)
        assert row.contributions == sorted(row.contributions, reverse=True) and row.contributions[-1] > 0
        assert len(row.because) <= 3


def test_a_folded_in_visitor_is_explained_by_their_items_and_a_stranger_by_none(trained, toy):
    content, _, model = trained
    genre0 = [i for i in content.item_ids if int(i[1:]) % toy.GENRES == 0][:4]
    visitor = model.with_history(pd.DataFrame({"user_id": "v", "item_id": genre0, "timestamp": np.arange(4)}))
    listed = visitor.recommend(["v"], 5)["item_id"].tolist()
    explained = visitor.explain(["v", "stranger"], listed)
    named = set().union(*explained.loc[explained["user_id"] == "v", "because"])
    assert named and named <= set(genre0)
    assert explained.loc[explained["user_id"] == "stranger", "because"].map(len).eq(0).all()


def test_modality_weights_are_the_fusions_shares_of_the_present_modalities(trained):
    content, _, model = trained
    explained = model.explain(["u0"], content.item_ids[:4])
    for row, present in zip(explained.itertuples(), content.present[:4]):
        assert set(row.modality_weights) == {m for m, p in zip(["text", "image"], present) if p}
        assert sum(row.modality_weights.values()) == pytest.approx(1.0, abs=1e-3)
    odd = explained.iloc[1].modality_weights  # item 1 has no image: its content is its text alone
    assert odd == {"text": 1.0}
    even = explained.iloc[0].modality_weights
    assert 0 < even["image"] < 1


def test_explain_rejects_unknown_items(trained):
    _, _, model = trained
    with pytest.raises(ValueError, match="not in this model's item features"):
        model.explain(["u0"], ["no-such-item"])
