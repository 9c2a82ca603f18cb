"""Smoke test of benchmarks/quality.py on the planted toy data (the ``toy`` fixture; no text model, no full data)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import quality  # noqa: E402


@pytest.fixture(scope="module")
def setup(toy):
    return toy.features(), toy.interactions()


@pytest.mark.parametrize("protocol", ["warm", "cold"])
def test_peers_rank_planted_structure_above_random(setup, protocol):
    content, inter = setup
    split = quality.make_split(protocol, inter, seed=0)
    data = quality.Data(split.train, content, 0)
    ids = content.item_ids
    rnd = quality.evaluate(quality.RandomRecommender(0).fit(split.train, content), split, protocol, ids, None)
    knn = quality.evaluate(quality.ContentKNN(data), split, protocol, ids, None)
    lfm = quality.evaluate(quality.fit_lightfm(data, "genres", no_components=8, epochs=5), split, protocol, ids, None)
    # users like exactly one genre and the text vector encodes the genre: content-based peers must beat random
    assert knn["recall_at_20"] > rnd["recall_at_20"] + 0.1
    assert lfm["recall_at_20"] > rnd["recall_at_20"] + 0.1
    if protocol == "warm":
        als = quality.evaluate(quality.fit_als(data, factors=8, iterations=5), split, protocol, ids, None)
        assert als["ndcg_at_10"] > rnd["ndcg_at_10"]
    for m in (rnd, knn, lfm):
        assert 0.0 <= m["ndcg_at_10"] <= 1.0 and 0.0 <= m["recall_at_20"] <= 1.0


def test_lightfm_features_hide_cold_item_ids(setup):
    content, inter = setup
    split = quality.make_split("cold", inter, seed=0)
    data = quality.Data(split.train, content, 0)
    f = quality._lightfm_item_features(data, "genres+text", text_dim=4)
    cold_rows = content.rows(sorted(split.cold_items))
    assert f.shape == (len(content), len(content) + len(content.genre_names) + 4)
    assert f[cold_rows, : len(content)].nnz == 0  # no identity feature for an item without interactions
    np.testing.assert_allclose(np.asarray(abs(f).sum(axis=1)).ravel(), 1.0, rtol=1e-5)


def test_table_lists_ours_first_and_na(tmp_path):
    rows = [
        {
            "name": "ours",
            "note": "",
            "warm": {"recall_at_20": [0.2, 0.3], "ndcg_at_10": [0.1, 0.1]},
            "cold": {"recall_at_20": [0.1, 0.1], "ndcg_at_10": [0.05, 0.05]},
        },
        {"name": "als", "note": "", "warm": {"recall_at_20": [0.1, 0.1], "ndcg_at_10": [0.1, 0.1]}, "cold_na": "N/A"},
    ]
    text = quality.write_table(rows, [0, 1], tmp_path / "q.md")
    lines = [ln for ln in text.splitlines() if ln.startswith(("| ours", "| als"))]
    assert lines[0].startswith("| ours | 0.2500 ± 0.0707 | 0.1000 ± 0.0000 |")
    assert "| N/A | N/A |" in lines[1]
