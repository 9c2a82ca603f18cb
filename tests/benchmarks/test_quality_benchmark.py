"""Smoke tests of benchmarks/quality.py on the planted toy data (the ``toy`` fixture; no text model, no full data):
the peer wrappers, the quick-mode run (Optuna budgets, N/A rows) and the table format."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import quality  # noqa: E402

from recsys_pipeline.evaluation.protocols import EvaluationSettings, make_split  # noqa: E402


@pytest.fixture(scope="module")
def setup(toy):
    return toy.features(), toy.interactions()


def _figures(model, split, protocol):
    return quality.figures(model, split, [protocol])[protocol]


def test_cornac_ease_and_bpr_rank_planted_structure_above_random(setup):
    content, inter = setup
    split = make_split(inter, "user_last_fraction", EvaluationSettings(seed=0))
    data = quality.Data(split.train, content, 0)
    rnd = _figures(quality.RandomRecommender(0).fit(split.train, content), split, "user_last_fraction")
    ease = _figures(quality.fit_ease(data, lamb=50.0), split, "user_last_fraction")
    bpr = _figures(
        quality.fit_cornac_bpr(data, k=16, learning_rate=0.05, lambda_reg=0.01, max_iter=50),
        split,
        "user_last_fraction",
    )
    # users like exactly one genre: item-item co-occurrence (EASE) and factors (BPR) must find it
    assert ease["ndcg_at_10"] > rnd["ndcg_at_10"] + 0.3
    assert ease["recall_at_20"] > rnd["recall_at_20"] + 0.3
    assert bpr["ndcg_at_10"] > rnd["ndcg_at_10"] + 0.3
    assert bpr["recall_at_20"] > rnd["recall_at_20"] + 0.3
    knn = _figures(quality.ItemKNN(data, k=20), split, "user_last_fraction")
    assert knn["ndcg_at_10"] > rnd["ndcg_at_10"] + 0.3
    for m in (rnd, ease, bpr, knn):
        assert 0.0 <= m["ndcg_at_10"] <= 1.0 and 0.0 <= m["recall_at_20"] <= 1.0


def test_cornac_scorer_unknown_items_last_and_unknown_users_zero(setup):
    content, inter = setup
    split = make_split(inter, "item_cold_start", EvaluationSettings(seed=0))
    model = quality.fit_ease(quality.Data(split.train, content, 0), lamb=50.0)
    cold = sorted(split.cold_items)
    warm = sorted(set(split.train["item_id"]))
    user = split.train["user_id"].iloc[0]
    s = model.score([user, "nobody"], warm + cold)
    assert s.shape == (2, len(warm) + len(cold)) and s.dtype == np.float32
    assert s[0, len(warm) :].max() < s[0, : len(warm)].min()  # an item cornac never saw ranks below every known one
    assert not s[1].any()  # an unknown user scores 0 everywhere


def test_vbpr_scores_cold_items_by_their_visual_features(setup):
    content, inter = setup
    split = make_split(inter, "item_cold_start", EvaluationSettings(seed=0))
    model = quality.fit_vbpr(quality.Data(split.train, content, 0), n_epochs=2)
    cold = sorted(split.cold_items)
    s = model.score([split.train["user_id"].iloc[0], "nobody"], cold)
    assert s.shape == (2, len(cold)) and np.isfinite(s).all()
    assert s[0].std() > 0  # the visual part ranks items cornac never saw
    assert not s[1].any()
    # no image modality: the family says why it cannot run
    fam = next(f for f in quality.families() if f.name == "vbpr")
    assert fam.needs(content) == "" and "--posters" in fam.needs(content.with_modalities(["text"]))


def test_lightfm_item_features_only_ranks_cold_items_above_random(setup):
    content, inter = setup
    split = make_split(inter, "item_cold_start", EvaluationSettings(seed=0))
    data = quality.Data(split.train, content, 0)
    f = quality._lightfm_item_features(data, "content", text_dim=0)
    # genres + the full text vectors, no identity block: an item is only its content
    assert f.shape == (len(content), len(content.genre_names) + content.modalities["text"].shape[1])
    np.testing.assert_allclose(np.asarray(abs(f).sum(axis=1)).ravel(), 1.0, rtol=1e-5)
    rnd = _figures(quality.RandomRecommender(0).fit(split.train, content), split, "item_cold_start")
    lfm = _figures(quality.fit_lightfm(data, "content", no_components=16, epochs=10), split, "item_cold_start")
    assert lfm["cold_candidates_ndcg_at_10"] > rnd["cold_candidates_ndcg_at_10"] + 0.2
    assert lfm["cold_candidates_recall_at_20"] > rnd["cold_candidates_recall_at_20"] + 0.1


def test_lightfm_features_hide_cold_item_ids(setup):
    content, inter = setup
    split = make_split(inter, "item_cold_start", EvaluationSettings(seed=0))
    data = quality.Data(split.train, content, 0)
    f = quality._lightfm_item_features(data, "genres+text", text_dim=4)
    cold_rows = content.rows(sorted(split.cold_items))
    assert f.shape == (len(content), len(content) + len(content.genre_names) + 4)
    assert f[cold_rows, : len(content)].nnz == 0  # no identity feature for an item without interactions


def test_quick_run_equal_budgets_and_na_rows(setup):
    content, inter = setup
    fams = [f for f in quality.families() if f.name in ("ease", "lightfm_content", "random", "vbpr")]
    logged: list[str] = []
    protocols = ["user_last_fraction", "item_cold_start", "item_cold_mixed"]
    tuner = quality.Tuner(trials=2, quick=True, log=logged.append)
    text_only = content.with_modalities(["text"])
    rows = {r["name"]: r for r in quality.run(inter, text_only, fams, protocols, [0], tuner, log=logged.append)}
    # equal budget: 2 trials per family with hyperparameters and split, 1 fit (no trials) without
    for name, split in (("ease", "user_last_fraction"), ("lightfm_content", "item_cold_start")):
        assert sum(line.startswith("  trial ") and f" {name}/{split} " in line for line in logged) == 2
    assert not any(" random/" in line for line in logged)
    # trial 0 is the documented default
    assert any(line.startswith("  trial 0 ease/user_last_fraction {'lamb': 500.0}") for line in logged)
    # pure CF: N/A on both cold protocols, with the reason; no fit there
    assert rows["ease"]["na"] == dict.fromkeys(("item_cold_start", "item_cold_mixed"), quality.NO_FACTOR)
    assert set(rows["ease"]["results"]) == {"user_last_fraction"}
    # VBPR without an image modality: N/A everywhere, saying why
    assert set(rows["vbpr"]["na"]) == set(protocols) and "--posters" in rows["vbpr"]["na"]["item_cold_start"]
    # the content-only LightFM serves both cold views from one fit; its quick budget is applied
    lfm = rows["lightfm_content"]
    assert len(lfm["fit_s"]) == 2  # user_last_fraction + item_cold_start (item_cold_mixed reuses the latter)
    assert lfm["params"]["item_cold_start"]["epochs"] == 3
    assert set(lfm["results"]["item_cold_mixed"]) == {"cold_recall_at_20", "cold_ndcg_at_10", "cold_share_at_20"}
    cold = lfm["results"]["item_cold_start"]["cold_candidates_ndcg_at_10"][0]
    assert cold > rows["random"]["results"]["item_cold_start"]["cold_candidates_ndcg_at_10"][0]
    share = lfm["results"]["item_cold_mixed"]["cold_share_at_20"][0]
    assert 0.0 < share <= 1.0

    meta = dict(protocols=protocols, seeds=[0], trials=2, k_core=0, max_users=None, quick=True, commit="abc1234")
    text = quality.write_table(quality.order_rows(list(rows.values())), meta)
    head = next(line for line in text.splitlines() if line.startswith("| model |"))
    assert head.count("|") == 1 + 11  # 11 columns: model, 2 + 2 + 3 metric columns, params, fit s, notes
    assert "| item_cold_mixed cold share@20 |" in head
    ease_line = next(line for line in text.splitlines() if line.startswith("| ease |"))
    cells = [c.strip() for c in ease_line.split("|")[1:-1]]
    assert cells[3:8] == ["N/A"] * 5 and float(cells[1]) > 0.3
    assert "N/A on item_cold_start, item_cold_mixed: no interactions = no trained factor" in ease_line
    assert "seed-dependent splits (the seed also draws the split): item_cold_start, item_cold_mixed" in text.lower()
    assert "commit abc1234" in text and "QUICK MODE" in text


def test_table_format_mean_std_and_merge(tmp_path):
    rows = [
        {
            "name": "als",
            "note": "",
            "results": {"user_last_fraction": {"recall_at_20": [0.1, 0.1], "ndcg_at_10": [0.1, 0.1]}},
            "params": {"user_last_fraction": {"factors": 64, "regularization": 0.0431171}},
            "na": {"item_cold_start": quality.NO_FACTOR},
            "fit_s": [1.0, 3.0],
        },
        {
            "name": "ours",
            "note": "",
            "results": {
                "user_last_fraction": {"recall_at_20": [0.2, 0.3], "ndcg_at_10": [0.1, 0.1]},
                "item_cold_start": {
                    "cold_candidates_recall_at_20": [0.5, 0.5],
                    "cold_candidates_ndcg_at_10": [0.4, 0.2],
                },
            },
            "params": {},
            "na": {},
            "fit_s": [10.0],
        },
    ]
    meta = dict(protocols=["user_last_fraction", "item_cold_start"], seeds=[0, 1], trials=10, k_core=10, wall_s=42.0)
    (tmp_path / "rows.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    out = tmp_path / "q.md"
    assert quality.main(["--merge", str(tmp_path / "rows.json"), "--out", str(out), "--no-mlflow"]) == 0
    text = out.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith(("| ours", "| als"))]
    assert lines[0] == "| ours | 0.2500 ± 0.0707 | 0.1000 ± 0.0000 | 0.5000 ± 0.0000 | 0.3000 ± 0.1414 | - | 10.0 | - |"
    als_cells = "| als | 0.1000 ± 0.0000 | 0.1000 ± 0.0000 | N/A | N/A | "
    als_params = "user_last_fraction: factors=64, regularization=0.04312 | 2.0 | "
    assert lines[1] == als_cells + als_params + "N/A on item_cold_start: no interactions = no trained factor |"
    assert "data view: 10-core" in text and "wall time 42 s" in text and "seeds: [0, 1]" in text
    # ours against the best peer: item_cold_start has no peer, so two lines
    verdicts = [ln for ln in text.split("## Ours against the best peer")[1].splitlines() if ln.startswith("| user")]
    assert verdicts == [
        "| user_last_fraction | Recall@20 | 0.2500 ± 0.0707 | als 0.1000 ± 0.0000 | +0.1500 | 0.0707 | first "
        "| +0.1500 ± 0.0707 | 2/2 |",
        "| user_last_fraction | NDCG@10 | 0.1000 ± 0.0000 | als 0.1000 ± 0.0000 | +0.0000 | 0.0000 | level "
        "| +0.0000 ± 0.0000 | 0/2 |",
    ]


def test_best_peer_excludes_random_and_our_variants_and_pairs_seeds():
    def row(name, values):
        return {"name": name, "results": {"item_cold_start": {"cold_candidates_recall_at_20": values}}}

    rows = [
        row("ours", [0.30, 0.20, 0.25]),
        row("ours_pooled", [0.90, 0.90, 0.90]),  # our own variant: not a peer
        row("random", [0.80, 0.80, 0.80]),  # the floor: not a peer
        row("ease", [0.20, 0.22, 0.24]),  # mean 0.22
        row("lightfm_content", [0.26, 0.18, 0.25]),  # mean 0.23: the best peer
    ]
    (found,) = quality.against_best_peer(rows, ["item_cold_start"])
    assert found["peer_name"] == "lightfm_content" and found["metric"] == "Recall@20"
    assert found["margin"] == pytest.approx(0.25 - 0.23)
    # the larger of ours' spread (0.05) and the peer's (0.0436)
    assert found["spread"] == pytest.approx(max(np.std([0.30, 0.20, 0.25], ddof=1), np.std([0.26, 0.18, 0.25], ddof=1)))
    assert found["spread"] == pytest.approx(0.05)
    assert found["verdict"] == "level"  # +0.02 is within it
    diffs = np.array([0.04, 0.02, 0.0])
    assert found["paired"] == pytest.approx((diffs.mean(), diffs.std(ddof=1)))
    assert found["ahead"] == "2/3"  # a tie is not ahead
    rows[0] = row("ours", [0.10, 0.10, 0.10])
    assert quality.against_best_peer(rows, ["item_cold_start"])[0]["verdict"] == "behind"
    rows[0] = row("ours", [0.40])  # one seed against three: no pairing
    (found,) = quality.against_best_peer(rows, ["item_cold_start"])
    assert found["verdict"] == "first" and found["paired"] is None and found["ahead"] is None


def test_trials_are_mlflow_child_runs_of_the_benchmark_run(setup, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    content, inter = setup
    fams = [f for f in quality.families() if f.name == "ease"]
    with quality.mlflow_parent("toy") as parent:
        quality.run(inter, content, fams, ["user_last_fraction"], [0], quality.Tuner(2, quick=True, mlflow_on=True))
    runs = mlflow.search_runs(experiment_ids=[parent.info.experiment_id])
    kids = runs[runs["tags.mlflow.parentRunId"] == parent.info.run_id]
    assert sorted(kids["tags.mlflow.runName"]) == ["ease/user_last_fraction/trial0", "ease/user_last_fraction/trial1"]
    assert (kids["metrics.val_ndcg_at_10"] > 0.3).all()
    assert "500.0" in kids["params.lamb"].tolist()  # trial 0: the documented default


def test_merge_replaces_a_family_per_protocol_and_names_what_each_run_gave():
    def row(name, results, params):
        return {"name": name, "note": "", "results": results, "params": params, "na": {}, "fit_s": [1.0]}

    first = {
        "meta": {
            "protocols": ["user_last_fraction", "item_cold_start"],
            "seeds": [0],
            "trials": 2,
            "commit": "aaa",
            "wall_s": 10,
        },
        "rows": [
            row(
                "ours",
                {
                    "user_last_fraction": {"recall_at_20": [0.2], "ndcg_at_10": [0.1]},
                    "item_cold_start": {"cold_candidates_recall_at_20": [0.3], "cold_candidates_ndcg_at_10": [0.3]},
                },
                {"user_last_fraction": {"lr": 0.003}, "item_cold_start": {"lr": 0.003}},
            )
        ],
    }
    second = {
        "meta": {"protocols": ["item_cold_start"], "seeds": [0], "trials": 2, "commit": "bbb", "wall_s": 5},
        "rows": [
            row(
                "ours",
                {"item_cold_start": {"cold_candidates_recall_at_20": [0.4], "cold_candidates_ndcg_at_10": [0.5]}},
                {"item_cold_start": {"lr": 0.001}},
            ),
            row(
                "lightfm_content",
                {"item_cold_start": {"cold_candidates_recall_at_20": [0.2], "cold_candidates_ndcg_at_10": [0.2]}},
                {"item_cold_start": {"epochs": 30}},
            ),
        ],
    }
    rows, meta = quality.merge_runs([first, second])
    ours, lightfm = rows
    assert ours["results"]["user_last_fraction"]["ndcg_at_10"] == [0.1]  # kept from the first run
    assert ours["results"]["item_cold_start"]["cold_candidates_ndcg_at_10"] == [0.5]  # replaced by the second
    assert ours["params"] == {"user_last_fraction": {"lr": 0.003}, "item_cold_start": {"lr": 0.001}}
    assert lightfm["na"] == {"user_last_fraction": "not run"} and meta["wall_s"] == 15
    # each run is named for the figures of it the table keeps: the first run's item_cold_start was replaced
    assert meta["commit"] == "aaa (ours on user_last_fraction); bbb (ours on item_cold_start, " + (
        "lightfm_content on item_cold_start)"
    )
    text = quality.write_table(rows, meta)
    assert "| lightfm_content | N/A | N/A | 0.2000 | 0.2000 |" in text and "N/A on user_last_fraction: not run" in text


def test_merge_rejects_a_bad_rows_file_with_its_name(tmp_path, capsys):
    out = tmp_path / "q.md"
    cases = {"missing.json": None, "empty.json": "", "list.json": "[]", "no_rows.json": '{"meta": {"protocols": []}}'}
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        assert quality.main(["--merge", str(tmp_path / name), "--out", str(out), "--no-mlflow"]) == 2
        assert f"quality.py: error: {tmp_path / name}" in capsys.readouterr().err
    assert not out.exists()  # nothing written


def test_a_run_without_out_never_overwrites_another_views_or_a_quick_result():
    assert quality.default_out(False, 0) == quality.RESULTS_DIR / "quality.md"
    assert quality.default_out(False, 10) == quality.RESULTS_DIR / "quality_10core.md"
    assert quality.default_out(False, 10, True) == quality.RESULTS_DIR / "quality_10core_cold_without_tags.md"
    quick = quality.default_out(True, 0)
    assert quick.name == "quality_quick.md" and quality.RESULTS_DIR not in quick.parents


def test_cold_items_without_tags_lose_their_tags_and_nothing_else(monkeypatch):
    from recsys_pipeline.evaluation.protocols import Split

    def fake_vectors(texts, encoder_factory=None):  # no text model here: [length, has a "Tags:" part]
        return np.array([[len(t), "Tags:" in t] for t in texts], np.float32)

    monkeypatch.setattr(quality, "text_vectors", fake_vectors)
    catalog = quality.load_catalog(tags_in_text=True)
    assert not quality.load_catalog()["text"].str.contains("Tags:").any()  # the pipeline's default text
    tagged = catalog.loc[catalog["tags_text"].str.len() > 0, "item_id"].astype(str).tolist()
    untagged = catalog.loc[catalog["tags_text"].str.len() == 0, "item_id"].astype(str).tolist()
    cold = set(tagged[:3] + untagged[:2])
    content = quality.build_content(catalog, fake_vectors(catalog["text"].tolist()))
    view = content.subset(tagged[:50] + untagged[:50])  # a data view: its items, in its order
    out = quality.UntaggedColdItems()(Split(None, None, cold), view)
    assert list(out.item_ids) == list(view.item_ids)
    before, after = view.modalities["text"], out.modalities["text"]
    changed = {i for i, b, a in zip(view.item_ids, before, after) if not np.array_equal(b, a)}
    assert changed == set(tagged[:3])  # the held-out items that had tags, and only they
    assert all(after[view.index[i]][1] == 0 and before[view.index[i]][1] == 1 for i in changed)
    assert quality.UntaggedColdItems()(Split(None, None, None), view) is view  # no held-out items: unchanged


def test_params_from_an_earlier_run_skip_the_search_and_content_follows_the_split(setup):
    content, inter = setup
    fams = [f for f in quality.families() if f.name in ("ease", "content_knn")]
    logged: list[str] = []
    asked: list[int] = []

    def content_for(split, features):
        asked.append(len(split.cold_items or ()))
        return features

    tuner = quality.Tuner(trials=2, quick=True, log=logged.append, content_for=content_for)
    tuner.given = {"ease": {"user_last_fraction": {"lamb": 123.0}}}
    rows = {r["name"]: r for r in quality.run(inter, content, fams, ["user_last_fraction"], [0, 1], tuner, log=print)}
    assert not any(line.startswith("  trial ") for line in logged)  # ease's params came from the earlier run
    assert rows["ease"]["params"] == {"user_last_fraction": {"lamb": 123.0}}
    assert asked == [0, 0, 0, 0]  # every fit's split (2 families x 2 seeds) went through content_for
    first = {"meta": {"protocols": ["item_cold_start"], "cold_items": "without tags"}, "rows": []}
    with pytest.raises(ValueError, match="describe held-out items differently"):
        quality.merge_runs([first, {"meta": {"protocols": ["item_cold_start"]}, "rows": []}])


def test_user_cold_start_verdicts_use_the_issue_peers_and_pair_the_held_out_users():
    import user_cold_start

    results = {
        ("ours", 3): [(0.12, 0.50), (0.10, 0.46), (0.11, 0.48)],
        ("ours_pooled", 3): [(0.90, 0.90)] * 3,  # our own variant: never the peer
        ("ease", 3): [(0.10, 0.40), (0.09, 0.41), (0.08, 0.39)],  # Recall@20 mean 0.09: the best issue peer
        ("content_knn", 3): [(0.02, 0.10)] * 3,
        ("popularity", 3): [(0.07, 0.44), (0.07, 0.42), (0.08, 0.43)],  # NDCG@10 mean 0.43: the best issue peer
        ("recent_popularity", 3): [(0.11, 0.49), (0.10, 0.47), (0.11, 0.47)],
    }
    rows = [line for line in user_cold_start.verdict_lines(results, [3]) if line.startswith("| 3 |")]
    assert len(rows) == 4  # (Recall@20, NDCG@10) x (the issue's best peer, recent_popularity)
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    recall_issue, recall_recent, ndcg_issue, ndcg_recent = cells
    assert recall_issue[1:3] == ["Recall@20", "best of EASE, content k-NN, popularity"]
    assert recall_issue[4].startswith("ease 0.0900")
    assert recall_issue[5] == "+0.0200"  # 0.11 - 0.09, against spreads 0.01 (both): first
    assert recall_issue[7] == "first" and recall_issue[9] == "3/3"
    assert ndcg_issue[4].startswith("popularity 0.4300") and ndcg_issue[5] == "+0.0500"
    assert ndcg_issue[7] == "first"  # 0.05 > max(0.02, 0.01)
    assert recall_recent[4].startswith("recent_popularity") and recall_recent[7] == "level"  # +0.0033 vs 0.0058
    assert recall_recent[8] == "+0.0033 ± 0.0058" and recall_recent[9] == "1/3"
    assert ndcg_recent[5] == "+0.0033"
