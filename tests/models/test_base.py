"""The Recommender contract: one top-k routine (exact, deterministic ties), exclusions, baselines, persistence."""

import numpy as np
import pandas as pd
import pytest

from recsys_pipeline.models.base import Recommender, SeenItems, top_k
from recsys_pipeline.models.popularity import PopularityRecommender
from recsys_pipeline.models.random import RandomRecommender


def brute_force_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The definition: order columns by (-score, column) and take k."""
    return np.array([sorted(range(len(row)), key=lambda j: (-row[j], j))[:k] for row in scores])


@pytest.mark.parametrize("k", [1, 3, 7, 12])
def test_top_k_is_exact_and_breaks_ties_by_column(k):
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 4, size=(50, 12)).astype(np.float32)  # many ties, at the boundary too
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    cols, values = top_k(scores, k)
    np.testing.assert_array_equal(cols, brute_force_top_k(scores, k))
    np.testing.assert_array_equal(values, np.take_along_axis(scores, cols, axis=1))
    assert cols.dtype == np.int64 and values.dtype == np.float32


def test_top_k_edge_cases():
    cols, values = top_k(np.array([[1.0, 2.0]], np.float32), 5)  # k above the width: everything, ranked
    assert cols.tolist() == [[1, 0]] and values.tolist() == [[2.0, 1.0]]
    assert top_k(np.zeros((0, 4), np.float32), 2)[0].shape == (0, 2)
    assert top_k(np.zeros((3, 4), np.float32), 0)[0].shape == (3, 0)


def test_seen_items_mask_positions_and_round_trip(tmp_path):
    pairs = pd.DataFrame({"user_id": ["a", "a", "b", "a"], "item_id": ["x", "y", "x", "x"]})  # one duplicate
    seen = SeenItems(pairs)
    assert len(seen) == 3
    rows, cols = seen.mask_positions(["b", "zz", "a"], pd.Index(["y", "x", "w"], dtype=object))
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (2, 0), (2, 1)]
    seen.save(tmp_path / "s.parquet")
    assert SeenItems.load(tmp_path / "s.parquet").pairs().values.tolist() == [["a", "x"], ["a", "y"], ["b", "x"]]


@pytest.fixture
def data():
    # item popularity by distinct users: c 3, a 2, b 1 (u1 rates c twice: counted once), d 0
    return pd.DataFrame(
        {"user_id": ["u1", "u1", "u2", "u3", "u2", "u1", "u3"], "item_id": ["a", "c", "c", "c", "a", "c", "b"]}
    )


class Catalog:
    item_ids = ["a", "b", "c", "d"]


def test_popularity_counts_distinct_users_and_recommend_excludes_what_was_seen(data):
    model = PopularityRecommender().fit(data, Catalog())
    assert isinstance(model, Recommender) and model.item_ids == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(model.score(["anyone"], ["a", "b", "c", "d"]), [[2, 1, 3, 0]])
    recs = model.recommend(["u1", "new", "u3"], k=2)
    assert recs.groupby("user_id", sort=False)["item_id"].apply(list).to_dict() == {
        "u1": ["b", "d"],
        "new": ["c", "a"],
        "u3": ["a", "d"],
    }
    assert recs["user_id"].unique().tolist() == ["u1", "new", "u3"]  # input order kept
    more = model.recommend(["new"], k=3, exclude=pd.DataFrame({"user_id": ["new"], "item_id": ["c"]}))
    assert more["item_id"].tolist() == ["a", "b", "d"]
    assert model.recommend(["u1"], k=5, exclude_seen=False)["item_id"].tolist() == ["c", "a", "b", "d"]
    assert model.recommend(["u1"], k=3, candidates=["d", "b"])["item_id"].tolist() == ["b", "d"]
    ranking = model.ranking()
    assert ranking.values.tolist() == [["c", 3, 1], ["a", 2, 2], ["b", 1, 3], ["d", 0, 4]]
    with pytest.raises(ValueError, match="not in the catalog"):
        model.score(["u1"], ["zzz"])


def test_popularity_save_load_gives_identical_lists(data, tmp_path):
    model = PopularityRecommender().fit(data, Catalog())
    model.save(tmp_path / "p")
    back = PopularityRecommender.load(tmp_path / "p")
    pd.testing.assert_frame_equal(back.recommend(["u1", "u2", "x"], k=3), model.recommend(["u1", "u2", "x"], k=3))


def test_random_scores_are_stable_per_pair_and_uniform(data):
    model = RandomRecommender(seed=3).fit(data, Catalog())
    once = model.score(["u1", "u2"], ["a", "b", "c", "d"])
    np.testing.assert_array_equal(model.score(["u2"], ["d", "a"]), once[1:, [3, 0]])  # same pair, same draw
    assert not np.array_equal(once[0], once[1])
    big = RandomRecommender(seed=0).fit(
        pd.DataFrame({"user_id": ["u"], "item_id": ["0"]}), type("C", (), {"item_ids": [str(i) for i in range(2000)]})()
    )
    draws = big.score(["u"], big.item_ids)[0]
    assert 0.45 < draws.mean() < 0.55 and draws.min() >= 0 and draws.max() < 1


def test_seen_items_overlay_adds_pairs_once_and_leaves_the_base_alone():
    base = SeenItems(pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"]}))
    more = base.with_pairs(pd.DataFrame({"user_id": ["a", "c", "c"], "item_id": ["y", "z", "x"]}))  # (a, y) again
    candidates = pd.Index(["x", "y", "z"], dtype=object)
    rows, cols = more.mask_positions(["a", "b", "c", "nobody"], candidates)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 0), (0, 1), (1, 0), (2, 0), (2, 2)]
    assert len(more) == 5 and len(base) == 3
    assert sorted(map(tuple, more.pairs().to_numpy().tolist())) == [
        ("a", "x"),
        ("a", "y"),
        ("b", "x"),
        ("c", "x"),
        ("c", "z"),
    ]
    rows, _ = base.mask_positions(["c"], candidates)
    assert len(rows) == 0
    again = more.with_pairs(pd.DataFrame({"user_id": ["b"], "item_id": ["z"]}))  # overlays stack
    assert len(again) == 6 and len(more) == 5
