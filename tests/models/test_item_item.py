"""The EASE item-item head: the closed form, pruning, the item cap, fold-in scores, items outside the head borrowing
their content neighbours' columns, and its blend into the two-tower recommender (formula, new items, persistence)."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from recsys_pipeline.content.features import ItemFeatures
from recsys_pipeline.evaluation.evaluate import evaluate
from recsys_pipeline.evaluation.protocols import split_user_random_fraction
from recsys_pipeline.models.base import SeenItems
from recsys_pipeline.models.popularity import PopularityRecommender
from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
from recsys_pipeline.models.two_tower.item_item import ItemItemHead
from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

CPU = TrainerConfig(accelerator="cpu", devices=1)


def _random_interactions(n_users=40, n_items=12, density=0.3, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users, items = np.nonzero(rng.random((n_users, n_items)) < density)
    return pd.DataFrame({"user_id": [f"u{u}" for u in users], "item_id": [f"i{i:02d}" for i in items]})


def _dense_ease(inter: pd.DataFrame, l2: float) -> tuple[list[str], np.ndarray]:
    """Steck 2019, eq. 8, with numpy's general inverse: the reference the head must match."""
    x = pd.crosstab(inter["user_id"], inter["item_id"]).clip(upper=1)
    gram = x.to_numpy(float).T @ x.to_numpy(float) + l2 * np.eye(x.shape[1])
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return list(x.columns), b


def test_weights_are_the_ease_closed_form():
    inter = _random_interactions()
    head = ItemItemHead.fit(pd.concat([inter, inter.iloc[:5]]), l2=3.0, neighbours=100)  # repeats count once
    ids, expected = _dense_ease(inter, 3.0)
    assert list(head.item_ids) == ids
    np.testing.assert_allclose(head.weights.toarray(), expected, rtol=1e-3, atol=1e-5)  # float32 inverse
    assert np.all(head.weights.diagonal() == 0)


def test_pruning_keeps_each_columns_largest_weights_and_the_cap_keeps_the_most_interacted_items():
    inter = _random_interactions(n_items=20)
    _, dense = _dense_ease(inter, 3.0)
    pruned = ItemItemHead.fit(inter, l2=3.0, neighbours=4).weights.toarray()
    assert (np.count_nonzero(pruned, axis=0) == 4).all()
    for j in range(dense.shape[1]):
        kept = np.flatnonzero(pruned[:, j])
        np.testing.assert_allclose(pruned[kept, j], dense[kept, j], rtol=1e-3)
        assert np.abs(dense[kept, j]).min() >= np.sort(np.abs(dense[:, j]))[-4] - 1e-5

    popular = inter["item_id"].value_counts()
    capped = ItemItemHead.fit(inter, l2=3.0, max_items=5)
    assert len(capped.item_ids) == 5
    assert popular[list(capped.item_ids)].min() >= popular.drop(list(capped.item_ids)).max()


def test_scores_fold_in_a_users_items_and_are_zero_without_any():
    inter = _random_interactions()
    head = ItemItemHead.fit(inter, l2=3.0)
    seen = SeenItems(pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["i01", "i03", "not-an-item"]}))
    scores = head.scores(seen, ["a", "b", "stranger"])
    w = head.weights.toarray()
    cols = head.item_ids.get_indexer(["i01", "i03"])
    np.testing.assert_allclose(scores[0], w[cols].sum(axis=0), rtol=1e-6)
    assert scores.shape == (3, len(head.item_ids)) and scores.dtype == np.float32
    assert not scores[1:].any()


def test_fit_rejects_bad_settings():
    with pytest.raises(ValueError, match="no interactions"):
        ItemItemHead.fit(_random_interactions().iloc[:0])
    with pytest.raises(ValueError, match="l2 > 0"):
        ItemItemHead.fit(_random_interactions(), l2=0.0)
    with pytest.raises(ValueError, match="item_item_weight"):
        ModelConfig(item_item_weight=-1.0)


@pytest.fixture(scope="module")
def blended(toy):
    content = toy.features()
    split = split_user_random_fraction(toy.interactions(), 0.25, seed=0)
    config = ModelConfig(**dict(toy.FAST, val_fraction=0.0, max_epochs=4, item_item_weight=0.5, item_item_l2=5.0))
    return content, split, TwoTowerRecommender(config, CPU).fit(split.train, content)


def _with_content_neighbours(model: TwoTowerRecommender, k: int, features: ItemFeatures) -> TwoTowerRecommender:
    other = model.with_features(features)
    other.config = replace(other.config, item_item_content_neighbours=k)
    return other


def test_blend_is_standardised_two_tower_plus_weighted_standardised_item_item(blended):
    content, split, model = blended
    assert model.item_item is not None and model.train_stats["item_item_items"] == len(model.item_item.item_ids)
    users, items = ["u0", "u7", "stranger"], content.item_ids
    model = _with_content_neighbours(model, 0, content)  # items outside the head: raw item-item term 0
    plain = TwoTowerRecommender.with_features(model, content)
    plain.item_item = None
    two_tower = plain.score(users, items)
    trained = [items.index(i) for i in model.trained_item_ids]
    reference = two_tower[:, trained]
    z = (two_tower - reference.mean(1, keepdims=True)) / reference.std(1, keepdims=True)
    ii = model.item_item.scores(model.seen, users)
    ii_std = np.where(ii.std(1, keepdims=True) > 0, ii.std(1, keepdims=True), 1.0)
    cols = model.item_item.item_ids.get_indexer(items)
    asked = np.where(cols >= 0, ii[:, np.maximum(cols, 0)], 0.0)
    expected = z + 0.5 * (asked - ii.mean(1, keepdims=True)) / ii_std
    np.testing.assert_allclose(model.score(users, items), expected, rtol=1e-4, atol=1e-5)
    # an item's score does not depend on which other items are asked
    np.testing.assert_allclose(model.score(users, items[:7]), expected[:, :7], rtol=1e-4, atol=1e-5)
    # the planted structure (one genre per user) is there for the blend to find
    ours = evaluate(model, split).metrics
    pop = evaluate(PopularityRecommender().fit(split.train, content), split).metrics
    assert ours["ndcg_at_10"] > pop["ndcg_at_10"] + 0.1, (ours["ndcg_at_10"], pop["ndcg_at_10"])


def test_another_blend_weight_rescores_the_same_fit(blended):
    content, _, model = blended
    users, items = ["u0", "u7"], content.item_ids
    plain = TwoTowerRecommender.with_features(model, content)
    plain.item_item = None
    alone = model.with_item_item_weight(0.0)
    np.testing.assert_allclose(alone.score(users, items), plain.score(users, items), rtol=1e-5, atol=1e-6)
    # the blend is linear in the weight: score(w) = z(two-tower) + w * z(item-item)
    half, double = model.score(users, items), model.with_item_item_weight(1.0).score(users, items)
    z_two_tower = _standardised_two_tower(model, users, items)
    np.testing.assert_allclose(double - z_two_tower, 2 * (half - z_two_tower), rtol=1e-4, atol=1e-4)
    assert model.config.item_item_weight == 0.5  # the original is unchanged
    with pytest.raises(ValueError, match=">= 0"):
        model.with_item_item_weight(-0.1)
    with pytest.raises(ValueError, match="no item-item head"):
        plain.with_item_item_weight(0.25)


def _standardised_two_tower(model, users, items):
    plain = TwoTowerRecommender.with_features(model, model.features)
    plain.item_item = None
    scores = plain.score(users, items)
    reference = scores[:, [list(items).index(i) for i in model.trained_item_ids]]
    return (scores - reference.mean(1, keepdims=True)) / reference.std(1, keepdims=True)


def test_new_items_rank_among_themselves_by_the_content_path_alone(blended, toy):
    content, _, model = blended
    new = toy.features(6, seed=9, prefix="new")
    both = ItemFeatures(
        item_ids=content.item_ids + new.item_ids,
        modalities={k: np.concatenate([content.modalities[k], new.modalities[k]]) for k in content.modalities},
        present=np.concatenate([content.present, new.present]),
        genres=np.concatenate([content.genres, new.genres]),
        genre_names=content.genre_names,
        year=np.concatenate([content.year, new.year]),
    )
    model = _with_content_neighbours(model, 0, both)
    plain = model.with_features(both)
    plain.item_item = None
    users = ["u0", "u3", "u5"]
    blended_new = model.score(users, new.item_ids)
    content_new = plain.score(users, new.item_ids)
    np.testing.assert_array_equal(np.argsort(-blended_new, axis=1), np.argsort(-content_new, axis=1))


def test_catalog_map_reads_head_columns_and_borrows_the_nearest_heads_for_other_items():
    head = ItemItemHead(["a", "b", "c"], ItemItemHead.fit(_random_interactions(n_items=3), l2=3.0).weights)
    catalog = ["a", "b", "c", "new_near_a", "new_between", "new_opposite"]
    content = np.array(
        [[1, 0], [0, 1], [-1, 0], [2, 0.0], [1, 1], [-1, -3]],  # the last is closest to c, then negative to b
        dtype=np.float32,
    )
    one = head.catalog_map(catalog, content, 1).toarray()
    np.testing.assert_array_equal(one[:, :3], np.eye(3))  # a head item reads its own column
    np.testing.assert_array_equal(one[:, 3], [1, 0, 0])
    np.testing.assert_array_equal(one[:, 5], [0, 0, 1])
    two = head.catalog_map(catalog, content, 2).toarray()
    np.testing.assert_allclose(two[:, 4], [0.5, 0.5, 0])  # cosines 0.707 and 0.707
    # new_opposite: cosine 1/sqrt(10) to c, -1/sqrt(10) to a (its second): a negative one weighs 0, weights sum to 1
    np.testing.assert_allclose(two[:, 5], [0, 0, 1])
    none = head.catalog_map(catalog, content, 0).toarray()
    assert not none[:, 3:].any()
    scores = np.array([[1.0, 2.0, 4.0]], dtype=np.float32)  # one user's head scores
    np.testing.assert_allclose(scores @ two, [[1, 2, 4, 1, 1.5, 4]])
    with pytest.raises(ValueError, match="does not match"):
        head.catalog_map(catalog, content[:3], 1)
    with pytest.raises(ValueError, match="neighbours must be >= 0"):
        head.catalog_map(catalog, content, -1)


def test_a_new_items_content_twin_lends_it_its_item_item_score(blended):
    content, _, model = blended
    twin_of = model.item_item.item_ids[0]
    row = content.rows([twin_of])
    twin = content.subset([twin_of])
    both = ItemFeatures(
        item_ids=content.item_ids + ["twin"],
        modalities={k: np.concatenate([content.modalities[k], twin.modalities[k]]) for k in content.modalities},
        present=np.concatenate([content.present, twin.present]),
        genres=np.concatenate([content.genres, content.genres[row]]),
        genre_names=content.genre_names,
        year=np.concatenate([content.year, content.year[row]]),
    )
    users = ["u0", "u3", "u5", "stranger"]
    borrowing = _with_content_neighbours(model, 1, both).score(users, ["twin"])
    not_borrowing = _with_content_neighbours(model, 0, both).score(users, ["twin"])
    ii = model.item_item.scores(model.seen, users)
    std = np.where(ii.std(1) > 0, ii.std(1), 1.0)
    expected = model.config.item_item_weight * ii[:, 0] / std  # the twin's raw term: 0 -> its twin's
    np.testing.assert_allclose((borrowing - not_borrowing)[:, 0], expected, rtol=1e-4, atol=1e-5)
    assert np.abs(expected[:3]).max() > 0.1  # a real lift or drop for known users; none for the stranger
    assert expected[3] == 0


def test_saved_head_loads_with_identical_scores(blended, tmp_path):
    content, _, model = blended
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "item_item.npz").exists()
    back = TwoTowerRecommender.load(tmp_path / "m")
    users = ["u0", "u9", "stranger"]
    np.testing.assert_array_equal(back.score(users, content.item_ids), model.score(users, content.item_ids))
    # newer interactions given at load fold into the item-item term without retraining
    newer = pd.concat([model.seen.pairs(), pd.DataFrame({"user_id": ["u0"], "item_id": [content.item_ids[-1]]})])
    moved = TwoTowerRecommender.load(tmp_path / "m", seen=newer).score(["u0"], content.item_ids)
    assert not np.allclose(moved, model.score(["u0"], content.item_ids))


def test_a_model_trained_with_the_head_refuses_to_load_without_it(blended, tmp_path):
    _, _, model = blended
    model.save(tmp_path / "m")
    (tmp_path / "m" / "item_item.npz").unlink()
    with pytest.raises(ValueError, match="holds no item_item.npz"):
        TwoTowerRecommender.load(tmp_path / "m")
