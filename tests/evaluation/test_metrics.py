"""Ranking metrics: a hand-computed example and a cross-check against torchmetrics on random data."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torchmetrics.functional.retrieval import retrieval_normalized_dcg, retrieval_recall

from recsys_pipeline.evaluation.metrics import catalog_coverage, ndcg_at_k, ranking_metrics, recall_at_k


def _ranked(lists: dict[str, list[str]]) -> pd.DataFrame:
    rows = [(u, r + 1, i) for u, items in lists.items() for r, i in enumerate(items)]
    return pd.DataFrame(rows, columns=["user_id", "rank", "item_id"])


def _truth(pairs: dict[str, list[str]]) -> pd.DataFrame:
    return pd.DataFrame([(u, i) for u, items in pairs.items() for i in items], columns=["user_id", "item_id"])


@pytest.fixture
def tiny():
    # user a ranks [x, y, z]; relevant {y, q}   -> hit at rank 2 only
    # user b ranks [z, w, x]; relevant {z}      -> hit at rank 1
    # user c ranks [w, x, y]; relevant {}       -> not evaluated (absent from truth)
    # user d has no ranked list; relevant {x}   -> evaluated, scores 0
    ranked = _ranked({"a": ["x", "y", "z"], "b": ["z", "w", "x"], "c": ["w", "x", "y"]})
    truth = _truth({"a": ["y", "q"], "b": ["z"], "d": ["x"]})
    return ranked, truth


def test_recall_hand_computed(tiny):
    ranked, truth = tiny
    # k=1: a 0/2, b 1/1, d 0/1 -> (0 + 1 + 0) / 3
    assert recall_at_k(ranked, truth, 1) == pytest.approx(1 / 3)
    # k=3: a 1/2, b 1/1, d 0   -> (0.5 + 1 + 0) / 3 = 0.5
    assert recall_at_k(ranked, truth, 3) == pytest.approx(0.5)


def test_ndcg_hand_computed(tiny):
    ranked, truth = tiny
    # k=3: a: DCG = 1/log2(3) = 0.63093; IDCG (2 relevant) = 1/log2(2) + 1/log2(3) = 1.63093 -> 0.38685
    #      b: DCG = 1/log2(2) = 1; IDCG = 1 -> 1.0
    #      d: 0
    a = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(ranked, truth, 3) == pytest.approx((a + 1.0 + 0.0) / 3)
    # k=1: a: no hit in top-1 -> 0; b: 1; d: 0; IDCG uses min(|rel|, 1) = 1 term
    assert ndcg_at_k(ranked, truth, 1) == pytest.approx(1 / 3)


def test_coverage_and_bundle(tiny):
    ranked, truth = tiny
    # top-2 lists: a {x, y}, b {z, w}, c {w, x} -> distinct {x, y, z, w} = 4 of a catalog of 10
    assert catalog_coverage(ranked, 10, 2) == pytest.approx(0.4)
    m = ranking_metrics(ranked, truth, n_catalog=10, ks=(1, 3))
    assert set(m) == {"recall_at_1", "recall_at_3", "ndcg_at_1", "ndcg_at_3", "coverage", "n_users"}
    assert m["n_users"] == 3
    assert m["coverage"] == pytest.approx(4 / 10)  # coverage at the largest k: every ranked item


def test_duplicated_truth_counted_once(tiny):
    ranked, truth = tiny
    assert recall_at_k(ranked, pd.concat([truth, truth]), 3) == pytest.approx(0.5)


def test_empty_truth_is_nan(tiny):
    ranked, truth = tiny
    assert math.isnan(recall_at_k(ranked, truth.iloc[:0], 3))
    assert math.isnan(ndcg_at_k(ranked, truth.iloc[:0], 3))


@pytest.mark.parametrize("k", [1, 5, 10])
def test_matches_torchmetrics_on_random_data(k):
    rng = np.random.default_rng(k)
    n_users, n_items = 40, 30
    scores = rng.random((n_users, n_items))
    relevant = rng.random((n_users, n_items)) < 0.15
    relevant[0] = False  # a user without relevant items is skipped by both
    relevant[1, :] = False
    relevant[1, 3] = True
    order = np.argsort(-scores, axis=1)
    ranked = pd.DataFrame(
        {
            "user_id": np.repeat([f"u{u}" for u in range(n_users)], n_items),
            "rank": np.tile(np.arange(1, n_items + 1), n_users),
            "item_id": [f"i{i}" for i in order.ravel()],
        }
    )
    uu, ii = np.nonzero(relevant)
    truth = pd.DataFrame({"user_id": [f"u{u}" for u in uu], "item_id": [f"i{i}" for i in ii]})
    tm_recall, tm_ndcg = [], []
    for u in range(n_users):
        if not relevant[u].any():
            continue
        p, t = torch.tensor(scores[u]), torch.tensor(relevant[u])
        tm_recall.append(float(retrieval_recall(p, t, top_k=k)))
        tm_ndcg.append(float(retrieval_normalized_dcg(p, t, top_k=k)))
    assert recall_at_k(ranked, truth, k) == pytest.approx(np.mean(tm_recall), abs=1e-6)
    assert ndcg_at_k(ranked, truth, k) == pytest.approx(np.mean(tm_ndcg), abs=1e-6)
