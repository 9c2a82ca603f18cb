"""A new item borrows the history part of its nearest trained items by content (``new_item_history_neighbours``),
and the neighbour search it shares with the item-item head."""

from dataclasses import replace

import numpy as np
import pytest

from recsys_pipeline.content.features import ItemFeatures
from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
from recsys_pipeline.models.two_tower.neighbours import content_neighbours
from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

CPU = TrainerConfig(accelerator="cpu", devices=1)


def _concat(a: ItemFeatures, b: ItemFeatures, ids: list[str]) -> ItemFeatures:
    return ItemFeatures(
        item_ids=a.item_ids + ids,
        modalities={k: np.concatenate([a.modalities[k], b.modalities[k]]) for k in a.modalities},
        present=np.concatenate([a.present, b.present]),
        genres=np.concatenate([a.genres, b.genres]),
        genre_names=a.genre_names,
        year=np.concatenate([a.year, b.year]),
    )


@pytest.fixture(scope="module")
def history_model(toy):
    content = toy.features()
    config = ModelConfig(**dict(toy.FAST, val_fraction=0.0, max_epochs=3, history_length=5))
    return content, TwoTowerRecommender(config, CPU).fit(toy.interactions(), content)


def _with(model: TwoTowerRecommender, k: int, features: ItemFeatures) -> TwoTowerRecommender:
    other = model.with_features(features)
    other.config = replace(other.config, new_item_history_neighbours=k)
    return other


def test_a_new_items_content_twin_lends_it_its_history_part_and_nothing_else_moves(history_model, toy):
    content, model = history_model
    twin_of = model.trained_item_ids[0]
    twin = content.subset([twin_of])
    catalog = _concat(
        _concat(content, twin, ["twin"]), toy.features(4, seed=9, prefix="new"), [f"new{i}" for i in range(4)]
    )
    dim = model.config.embedding_dim
    borrowing, off = _with(model, 1, catalog), _with(model, 0, catalog)
    with_history, without = borrowing.item_vectors().numpy(), off.item_vectors().numpy()
    twin_row, source_row = catalog.rows(["twin", twin_of])
    # the twin's nearest trained item by content is the item it copies (cosine 1): its history part, exactly
    np.testing.assert_allclose(with_history[twin_row, dim + 1 :], with_history[source_row, dim + 1 :], rtol=1e-6)
    assert np.abs(with_history[source_row, dim + 1 :]).max() > 0.01  # a trained, non-zero history part
    assert not without[twin_row, dim + 1 :].any()  # off: a new item has no history part (no id)
    # the id-and-content part and the bias are untouched, and so is every trained item
    np.testing.assert_array_equal(with_history[:, : dim + 1], without[:, : dim + 1])
    trained = catalog.rows(model.trained_item_ids)
    np.testing.assert_array_equal(with_history[trained], without[trained])
    # the score moves by the user's history term against the borrowed part (no item-item head: score = u . v)
    users = ["u0", "u1", "u2", "u3"]
    moved = borrowing.score(users, ["twin"]) - off.score(users, ["twin"])
    history = borrowing.user_vectors(users).numpy()[:, dim + 1 :]
    np.testing.assert_allclose(moved[:, 0], history @ with_history[source_row, dim + 1 :], rtol=1e-4, atol=1e-6)
    assert np.abs(moved).max() > 1e-3


def test_a_new_item_borrows_the_cosine_weighted_mean_of_its_k_neighbours(history_model, toy):
    content, model = history_model
    catalog = _concat(content, toy.features(3, seed=4, prefix="new"), ["new0", "new1", "new2"])
    dim, k = model.config.embedding_dim, 3
    vectors = _with(model, k, catalog).item_vectors().numpy()
    trained = catalog.rows(model.trained_item_ids)
    new = catalog.rows(["new0", "new1", "new2"])
    space = model.with_features(catalog)._content_vectors()
    unit = space / np.linalg.norm(space, axis=1, keepdims=True)
    for row in new:  # the reference: brute force over every trained item
        sim = unit[trained] @ unit[row]
        nearest = np.argsort(-sim)[:k]
        weight = np.maximum(sim[nearest], 0) / np.maximum(sim[nearest], 0).sum()
        expected = weight @ vectors[trained[nearest], dim + 1 :]
        np.testing.assert_allclose(vectors[row, dim + 1 :], expected, rtol=1e-4, atol=1e-6)


def test_content_neighbours_weights_and_edges():
    content = np.array([[1, 0], [0, 1], [-1, 0], [1, 1], [-1, -3]], dtype=np.float32)
    keys, queries = np.array([0, 1, 2]), np.array([3, 4])
    top, weight = content_neighbours(content, keys, queries, 2)
    assert top.shape == weight.shape == (2, 2) and top.dtype == np.int64 and weight.dtype == np.float32
    assert sorted(top[0]) == [0, 1]
    np.testing.assert_allclose(weight[0], [0.5, 0.5])
    # [-1, -3]: cosine 1/sqrt(10) to key 2, -1/sqrt(10) to key 0 (weighs 0); the weights sum to 1
    np.testing.assert_allclose(dict(zip(top[1], weight[1])).get(2), 1.0)
    assert content_neighbours(content, keys, queries, 10)[0].shape == (2, 3)  # fewer keys than k: all of them
    opposite = np.array([[1, 0], [-1, 0]], dtype=np.float32)
    assert not content_neighbours(opposite, np.array([0]), np.array([1]), 1)[1].any()  # nothing similar: zeros
    assert content_neighbours(content, keys, np.array([], dtype=np.int64), 2)[0].shape == (0, 2)
    with pytest.raises(ValueError, match="k must be >= 1"):
        content_neighbours(content, keys, queries, 0)
    with pytest.raises(ValueError, match="queries must be rows"):
        content_neighbours(content, keys, np.array([5]), 1)


def test_the_setting_is_validated_and_older_models_load_without_it():
    with pytest.raises(ValueError, match="new_item_history_neighbours must be >= 0"):
        ModelConfig(new_item_history_neighbours=-1)
    assert ModelConfig().new_item_history_neighbours == 3
    assert ModelConfig.from_dict({}).new_item_history_neighbours == 0  # a model saved before it: as trained
