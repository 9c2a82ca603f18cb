"""The two-tower model: modules (masking, DCN formula), training, scoring through the contract, persistence, cold
items, the history head."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_pipeline.content.features import ItemFeatures
from recsys_pipeline.evaluation.evaluate import evaluate
from recsys_pipeline.evaluation.protocols import split_user_last_fraction
from recsys_pipeline.models.popularity import PopularityRecommender
from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
from recsys_pipeline.models.two_tower.modules import ConcatFusion, CrossNetworkV2, ModalityAttentionFusion
from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

CPU = TrainerConfig(accelerator="cpu", devices=1)


@pytest.fixture(scope="module")
def content(toy):
    return toy.features()


@pytest.fixture(scope="module")
def trained(content, toy):
    split = split_user_last_fraction(toy.interactions(), 0.2, 5)
    model = TwoTowerRecommender(ModelConfig(**toy.FAST), CPU).fit(split.train, content)
    return model, model.train_stats, split


# ---------------------------------------------------------------------------------------------- modules
@pytest.mark.parametrize("cls", [ModalityAttentionFusion, ConcatFusion])
def test_fusion_masks_absent_modalities(cls):
    torch.manual_seed(0)
    fusion = cls({"text": 6, "image": 4, "audio": 3}, width=8, n_heads=2, dropout=0.0).eval()
    b = 5
    feats = {"text": torch.randn(b, 6), "image": torch.randn(b, 4), "audio": torch.randn(b, 3)}
    present = torch.tensor(
        [[True, True, True], [True, False, True], [False, True, False], [False, False, False], [True, False, False]]
    )
    out, has = fusion(feats, present)
    assert out.shape == (b, 8) and has.tolist() == [True, True, True, False, True]
    assert torch.isfinite(out).all()
    assert torch.equal(out[3], torch.zeros(8))  # no modality at all -> zeros, no NaN
    # whatever sits in the rows of absent modalities, the output does not change
    garbage = {
        k: torch.where(present[:, j : j + 1], v, 100 * torch.randn_like(v)) for j, (k, v) in enumerate(feats.items())
    }
    out2, _ = fusion(garbage, present)
    torch.testing.assert_close(out, out2)
    # ... while a present modality does matter
    changed = dict(feats, text=feats["text"] + 1.0)
    out3, _ = fusion(changed, present)
    assert not torch.allclose(out3[0], out[0])


def test_attention_fusion_list_input_and_grad():
    g = torch.Generator().manual_seed(0)
    fusion = ModalityAttentionFusion({"text": 6}, width=8, n_heads=4, dropout=0.0)
    x = torch.randn(3, 6, generator=g, requires_grad=True)
    out, _ = fusion([x], torch.tensor([[True], [False], [True]]))
    # Not out.sum(): with one modality each row is LayerNorm(...) with gamma 1, beta 0 at init, so every row sums
    # to exactly 0 whatever x is and that gradient is 0 analytically. A fixed random projection is not invariant.
    projection = torch.randn(out.shape, generator=g)
    (out * projection).sum().backward()
    assert torch.equal(x.grad[1], torch.zeros(6))  # the absent row gets no gradient: it was never used
    for present_row in (0, 2):
        assert x.grad[present_row].abs().min() > 1e-6, x.grad[present_row]  # every input coordinate matters


def test_cross_network_v2_formula_hand_example():
    net = CrossNetworkV2(2, n_layers=1)
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        net.layers[0].bias.copy_(torch.tensor([0.5, -1.0]))
    x0 = torch.tensor([[1.0, 2.0]])
    # W x0 + b = [1, 4] + [0.5, -1] = [1.5, 3];  x0 * that = [1.5, 6];  + x0 = [2.5, 8]
    torch.testing.assert_close(net(x0), torch.tensor([[2.5, 8.0]]))
    # two layers: x2 = x0 * (W x1 + b) + x1 with x1 = [2.5, 8]: W x1 + b = [3, 15] -> [3, 30] + [2.5, 8]
    net2 = CrossNetworkV2(2, n_layers=2)
    with torch.no_grad():
        for layer in net2.layers:
            layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
            layer.bias.copy_(torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(net2(x0), torch.tensor([[5.5, 38.0]]))


# ---------------------------------------------------------------------------------------------- training
def test_training_beats_popularity_on_planted_structure(trained, content):
    model, stats, split = trained
    assert stats["epochs_trained"] >= 1 and stats["samples_per_second"] > 0
    assert np.isfinite(stats["best_val_ndcg_at_10"])
    ours = evaluate(model, split).metrics
    pop = evaluate(PopularityRecommender().fit(split.train, content), split).metrics
    assert ours["ndcg_at_10"] > pop["ndcg_at_10"] + 0.1, (ours["ndcg_at_10"], pop["ndcg_at_10"])
    assert ours["recall_at_20"] > pop["recall_at_20"]


def test_score_shapes_and_unknown_user(trained, content):
    model, _, _ = trained
    items = content.item_ids[:30]
    s = model.score(["u1", "u2", "stranger", "other-stranger"], items)
    assert s.shape == (4, 30) and s.dtype == np.float32 and np.isfinite(s).all()
    # unknown users share one documented fallback: the learned item bias (a content-aware popularity)
    np.testing.assert_array_equal(s[2], s[3])
    bias = model.item_vectors()[:30, model.config.embedding_dim].numpy()  # the column after the item vector
    np.testing.assert_allclose(s[2], bias, rtol=1e-6)
    assert not np.allclose(s[0], s[2])


def test_recommend_excludes_and_ranks(trained, content):
    model, _, split = trained
    users = ["u0", "u5", "stranger"]
    rec = model.recommend(users, k=7, exclude=split.train)
    assert list(rec.columns) == ["user_id", "rank", "item_id", "score"]
    assert rec.groupby("user_id")["rank"].apply(list).map(lambda r: r == list(range(1, 8))).all()
    seen = set(zip(split.train["user_id"], split.train["item_id"]))
    assert not any((u, i) in seen for u, i in zip(rec["user_id"], rec["item_id"]))
    # agrees with the score matrix
    s = model.score(["u5"], content.item_ids)[0]
    mask = np.array([("u5", i) in seen for i in content.item_ids])
    s[mask] = -np.inf
    top = [content.item_ids[j] for j in np.argsort(-s, kind="stable")[:7]]
    assert rec[rec.user_id == "u5"]["item_id"].tolist() == top
    cand = model.recommend(["u0"], k=50, candidates=["i1", "i2", "i3"])
    assert sorted(cand["item_id"]) == ["i1", "i2", "i3"]


def test_save_load_roundtrip_identical_scores(trained, content, tmp_path):
    model, _, _ = trained
    model.save(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == [
        "config.json",
        "id_maps.json",
        "item_features.npz",
        "model.safetensors",
        "recent_popularity.npz",
        "recommender.json",
        "seen.parquet",
    ]
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["modality_dims"] == {"text": 16, "image": 8}
    back = TwoTowerRecommender.load(tmp_path / "m")  # features and seen items come from the folder
    users, items = ["u0", "u7", "stranger"], content.item_ids
    np.testing.assert_array_equal(model.score(users, items), back.score(users, items))
    assert back.user_ids == model.user_ids and back.trained_item_ids == model.trained_item_ids
    assert back.item_ids == model.item_ids == content.item_ids
    pd.testing.assert_frame_equal(back.recommend(users, k=5), model.recommend(users, k=5))  # seen items too


def test_cold_item_scored_from_content(trained, content, toy):
    model, _, _ = trained
    new = toy.features(4, seed=9, prefix="new")  # never seen in training
    both = ItemFeatures(
        item_ids=content.item_ids + new.item_ids,
        modalities={k: np.concatenate([content.modalities[k], new.modalities[k]]) for k in content.modalities},
        present=np.concatenate([content.present, new.present]),
        genres=np.concatenate([content.genres, new.genres]),
        genre_names=content.genre_names,
        year=np.concatenate([content.year, new.year]),
    )
    m2 = model.with_features(both)
    s = m2.score(["u0", "u1", "stranger"], new.item_ids)
    assert np.isfinite(s).all()
    # content-dependent: a genre-0 item scores higher for a genre-0 user (u0) than a genre-1 item does
    assert s[0, 0] > s[0, 1]
    # and changing the item's text vector changes its score
    text = both.modalities["text"].copy()
    text[-4] = -text[-4]
    m3 = model.with_features(
        ItemFeatures(
            both.item_ids,
            {"text": text, "image": both.modalities["image"]},
            both.present,
            both.genres,
            both.genre_names,
            both.year,
        )
    )
    assert not np.isclose(m3.score(["u0"], ["new0"])[0, 0], s[0, 0])
    # unknown items (not in content) are an error that says how many
    with pytest.raises(ValueError, match="1 of 2 item_ids"):
        model.score(["u0"], ["i1", "new0"])


def test_train_rejects_bad_inputs(content, toy):
    inter = toy.interactions()
    with pytest.raises(ValueError, match="empty"):
        TwoTowerRecommender().fit(inter.iloc[:0], content)
    bad = pd.concat([inter, inter.iloc[:3].assign(item_id=["x1", "x2", "x1"])])
    with pytest.raises(ValueError, match="2 of .* items \\(3 interactions\\)"):
        TwoTowerRecommender().fit(bad, content)
    with pytest.raises(ValueError, match="needs item features"):
        TwoTowerRecommender().fit(inter)


def test_validation_split_is_each_users_latest_or_a_seeded_random_draw(content, toy):
    from recsys_pipeline.models.two_tower import InteractionDataModule

    inter = toy.interactions()
    last = InteractionDataModule(inter, content, 0.2, 64, 0, val_split="last")
    random = InteractionDataModule(inter, content, 0.2, 64, 0, val_split="random")
    again = InteractionDataModule(inter, content, 0.2, 64, 0, val_split="random")
    pairs = [set(zip(*(a.tolist() for a in dm.val_pairs))) for dm in (last, random, again)]
    assert len(pairs[0]) == len(pairs[1]) > 0 and pairs[1] == pairs[2]  # same size per user; seeded
    assert pairs[0] != pairs[1]
    # the random draw holds out some user's rows that are older than rows that user keeps for training
    when = {
        (u, it): t
        for u, it, t in inter[["user_id", "item_id", "timestamp"]].astype({"item_id": str}).itertuples(index=False)
    }
    item_of_row = {row: it for it, row in content.index.items()}
    user_of = {i: u for u, i in random.user_index.items()}
    val_times = pd.Series([when[user_of[u], item_of_row[r]] for u, r in pairs[1]], dtype="datetime64[ns]")
    val_users = [user_of[u] for u, _ in pairs[1]]
    train_latest = {
        user_of[u]: max(when[user_of[u], item_of_row[r]] for uu, r in zip(*random.train_pairs) if uu == u)
        for u in set(random.val_pairs[0].tolist())
    }
    assert (val_times < pd.Series([train_latest[u] for u in val_users], dtype="datetime64[ns]")).any()
    with pytest.raises(ValueError, match="val_split"):
        ModelConfig(val_split="first")


def test_bpr_and_concat_variants_train(content, toy):
    inter = toy.interactions()
    cfg = ModelConfig(**dict(toy.FAST, max_epochs=2, loss="bpr", fusion="concat", refit=True))
    model = TwoTowerRecommender(cfg, CPU).fit(inter, content)
    stats = model.train_stats
    assert stats["epochs_trained"] == 2 and stats["refit"]
    # the refit saw every interaction, including each user's latest ones
    assert stats["n_train_interactions"] == len(inter)
    assert np.isfinite(model.score(["u0"], content.item_ids)).all()


def test_default_trains_max_epochs_on_every_interaction(content, toy):
    """The default has no validation split: exactly ``max_epochs`` epochs on every interaction, no refit."""
    assert ModelConfig().val_fraction == 0.0
    inter = toy.interactions()
    cfg = ModelConfig(**dict(toy.FAST, val_fraction=0.0, max_epochs=3))
    model = TwoTowerRecommender(cfg, CPU).fit(inter, content)
    stats = model.train_stats
    assert (stats["epochs_trained"], stats["n_val_users"], stats["refit"]) == (3, 0, False)
    assert stats["n_train_interactions"] == len(inter) and np.isnan(stats["best_val_ndcg_at_10"])
    # nothing held back: every interacted item has a trained id embedding
    assert set(model.trained_item_ids) == set(inter["item_id"].astype(str))


def test_same_seed_and_threads_give_the_same_model(content, toy):
    """Fits on two threads are reproducible: without deterministic algorithms the backward pass of indexing the
    batch's item vectors accumulates in a varying order (this fails then, scores differing by ~1e-3)."""
    inter = toy.interactions()
    cfg = ModelConfig(**dict(toy.FAST, batch_size=1024, num_negatives=512, max_epochs=3))
    trainer = TrainerConfig(accelerator="cpu", devices=1, num_threads=2)
    assert trainer.deterministic == "warn"
    fits = [TwoTowerRecommender(cfg, trainer).fit(inter, content) for _ in range(4)]
    scores = [m.score(["u0", "u1"], m.item_ids) for m in fits]
    assert all(np.array_equal(s, scores[0]) for s in scores[1:])
    with pytest.raises(ValueError, match="deterministic"):
        TrainerConfig(deterministic="yes")


def test_train_cli(tmp_path, content, toy):
    from recsys_pipeline.models.two_tower.train import main

    toy.interactions().to_parquet(tmp_path / "i.parquet")
    content.to_npz(tmp_path / "c.npz")
    stats = main(
        [
            "--interactions",
            str(tmp_path / "i.parquet"),
            "--features",
            str(tmp_path / "c.npz"),
            "--out",
            str(tmp_path / "m"),
            "--accelerator",
            "cpu",
            "--devices",
            "1",
            "--max-epochs",
            "1",
            "--config-json",
            json.dumps({"batch_size": 256, "num_negatives": 32}),
        ]
    )
    assert stats["epochs_trained"] == 1
    back = TwoTowerRecommender.load(tmp_path / "m")
    assert back.score(["u1"], ["i1"]).shape == (1, 1)


@pytest.mark.slow
def test_train_cli_ddp_two_processes_on_cpu(tmp_path, content, toy):
    """DDP by configuration (gloo on CPU, 2 processes; early stopping, then the refit): training finishes, only
    rank 0 writes, the model loads, and the history ids trained on either rank are merged (the same set as one
    process marks over the same pairs)."""
    import subprocess
    import sys

    from recsys_pipeline.models.two_tower.train import main

    toy.interactions().to_parquet(tmp_path / "i.parquet")
    content.to_npz(tmp_path / "c.npz")
    # early stopping on a validation split, then the refit: the validation ranking is gathered across ranks
    cfg = json.dumps(
        {"batch_size": 64, "num_negatives": 32, "history_length": 3, "history_dropout": 0.0, "val_fraction": 0.1}
    )
    common = [
        "--interactions",
        str(tmp_path / "i.parquet"),
        "--features",
        str(tmp_path / "c.npz"),
        "--accelerator",
        "cpu",
        "--max-epochs",
        "2",
        "--num-threads",
        "1",
        "--config-json",
        cfg,
    ]
    single = main(common + ["--out", str(tmp_path / "one"), "--devices", "1"])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys_pipeline.models.two_tower.train",
            *common,
            "--out",
            str(tmp_path / "ddp"),
            "--devices",
            "2",
            "--strategy",
            "ddp",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "train_stats.json").read_text())
    assert ddp["epochs_trained"] == 2 and ddp["refit"]
    assert [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")] == [ddp]  # rank 0 only
    # every position but each user's newest is some pair's history: the union over ranks covers them all
    assert ddp["history_items_trained"] == single["history_items_trained"] > 0
    back = TwoTowerRecommender.load(tmp_path / "ddp")
    assert np.isfinite(back.score(["u1", "u2"], content.item_ids)).all()


def _history_module(content, inter, fast, **cfg):
    from recsys_pipeline.models.two_tower import InteractionDataModule, RecommenderModule, item_table

    dm = InteractionDataModule(inter, content, 0.0, 64, 0)
    table = item_table(content, dm.item_index, content.genre_names, content.modality_dims)
    config = ModelConfig(**dict(fast, **cfg))
    module = RecommenderModule(
        dm.n_users, dm.n_items, content.modality_dims, len(content.genre_names), config, table, dm.train_history
    )
    return dm, module


def test_history_is_causal_newest_first_and_truncated(content, toy):
    """A training pair's history holds exactly the user's items *before* it, newest first, at most L of them."""
    inter = toy.interactions()  # every user has 15 items at hours 0..14, in that order
    dm, module = _history_module(content, inter, toy.FAST, history_length=4)
    u = dm.user_index["u7"]
    own = inter[inter["user_id"] == "u7"].sort_values("timestamp")["item_id"].tolist()
    ids = [dm.item_index[i] for i in own]  # id index of the user's items, oldest first
    pairs = np.nonzero(dm.train_pairs[0] == u)[0]
    rows = dm.train_pairs[1][pairs]
    order = {content.index[i]: t for t, i in enumerate(own)}
    by_time = pairs[np.argsort([order[r] for r in rows])]  # the user's pairs, oldest first
    pos = torch.as_tensor(dm.train_positions[by_time])
    hist = module.history_index(torch.full((len(pos),), u), pos)
    assert hist[0].tolist() == [0, 0, 0, 0]  # first item: nothing before it
    assert hist[2].tolist() == [ids[1], ids[0], 0, 0]
    assert hist[9].tolist() == [ids[8], ids[7], ids[6], ids[5]]
    # serving: the last 4 of the whole history
    assert module.history_index(torch.tensor([u])).tolist() == [[ids[14], ids[13], ids[12], ids[11]]]
    assert module.history_index(torch.tensor([0])).tolist() == [[0, 0, 0, 0]]  # unknown user: no history


def test_history_pooling_masks_padding_and_learns_recency_weights():
    from recsys_pipeline.models.two_tower.modules import HistoryPooling

    pool = HistoryPooling(n_items=5, dim=3, length=3, decay=1.0)
    with torch.no_grad():
        pool.emb.weight[1:] = torch.arange(15, dtype=torch.float32).reshape(5, 3)
    out = pool(torch.tensor([[2, 1, 0], [0, 0, 0], [3, 3, 3]]))
    w = torch.softmax(torch.tensor([0.0, -1.0]), 0)  # slots 0 and 1 valid, decay 1
    assert torch.allclose(out[0], w[0] * pool.emb.weight[2] + w[1] * pool.emb.weight[1])
    assert torch.equal(out[1], torch.zeros(3))  # no history: zeros, not NaN
    assert torch.allclose(out[2], pool.emb.weight[3])  # weights sum to 1
    out.sum().backward()
    assert pool.pos_logits.grad is not None and torch.isfinite(pool.pos_logits.grad).all()


@pytest.mark.parametrize("loss", ["sampled_softmax", "softmax"])
def test_history_folds_into_fixed_user_vectors(content, toy, loss):
    """After training with history, folding the pooled history into the per-user table gives identical scores
    without any history input."""
    inter = toy.interactions()
    dm, module = _history_module(content, inter, toy.FAST, history_length=5, history_dropout=0.5, loss=loss)
    loss_value = module.training_step(next(iter(dm.train_dataloader())), 0)
    loss_value.backward()
    assert torch.isfinite(loss_value)
    assert module.model.user_tower.history.emb.weight.grad.abs().sum() > 0
    # only the ids that reached the loss count as trained; the rest are padding for serving
    trained = module.h_trained.clone()
    assert 0 < int(trained[1:].sum()) < dm.n_items
    for batch in dm.train_dataloader():
        module.training_step(batch, 0)
    module.eval()
    users = torch.arange(dm.n_users + 1)
    v = module.all_item_vectors()
    before = module.user_vectors(users) @ v.T
    no_history = module.model.user_vectors(users) @ v.T  # before folding: a zero history part
    assert not torch.allclose(before, no_history)  # the history changes the scores
    module.fold_history(chunk=7)  # several chunks
    after = module.model.user_vectors(users) @ v.T
    assert not module.use_history
    assert torch.allclose(before, after, atol=1e-5)
    d = module.config.embedding_dim
    assert torch.equal(after[0], v[:, d])  # unknown user: item bias only


def test_history_does_not_touch_new_item_scores(content, toy):
    """A new item (id 0) is scored by the id embedding and the content alone: whatever the user's recent items,
    its score is the same, so the history cannot skew item-cold-start ranking."""
    inter = toy.interactions()
    dm, module = _history_module(content, inter, toy.FAST, history_length=5, history_dropout=0.0)
    for batch in dm.train_dataloader():
        module.training_step(batch, 0)
    module.eval()
    rows = torch.arange(module.n_table)
    feats = [getattr(module, f"t_feat_{j}") for j in range(len(module.modality_names))]
    with torch.no_grad():
        new = module.model.item_vectors(
            torch.zeros_like(rows), feats, module.t_present, module.t_genres, module.t_year, reduced=True
        )  # every catalog item as if brand new
        warm = module.all_item_vectors()
        users = torch.arange(1, dm.n_users + 1)
        with_history = module.user_vectors(users)
        other = module.model.user_vectors(users, module.history_index(users.flip(0)))  # someone else's history
    assert not torch.allclose(with_history, other)
    assert torch.equal(with_history @ new.T, other @ new.T)
    assert not torch.allclose(with_history @ warm.T, other @ warm.T)  # known items do use it


def test_history_model_beats_id_only_on_sequential_structure(toy):
    """Planted order: each user walks a ring of items, so the next item follows from the last one seen; the
    user id alone cannot say where the user stopped. History must win clearly on the held-out next items."""
    n_items, n_users, steps = 60, 80, 12
    rng = np.random.default_rng(3)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        for t in range(steps):
            rows.append(
                (f"u{u}", f"i{(start + 2 * t) % n_items}", pd.Timestamp("2021-01-01") + pd.Timedelta(minutes=t))
            )
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    content = toy.features(n_items=n_items)
    split = split_user_last_fraction(inter, 0.2, 5)
    figures = {}
    for length in (0, 3):
        cfg = ModelConfig(
            **dict(
                toy.FAST,
                history_length=length,
                history_dropout=0.0,
                max_epochs=30,
                patience=30,
                id_dropout=0.0,
                num_negatives=32,
                refit=False,
            )
        )
        model = TwoTowerRecommender(cfg, CPU).fit(split.train, content)
        figures[length] = evaluate(model, split, k=2).metrics["recall_at_2"]
    assert figures[3] > figures[0] + 0.2, figures


def test_softmax_negatives_exclude_cold_items(content, toy):
    """Items nobody interacted with in training are not negatives (the softmax runs over known items only)."""
    from recsys_pipeline.models.two_tower import InteractionDataModule, RecommenderModule, item_table

    inter = toy.interactions()
    cold = {f"i{i}" for i in range(10)}
    inter = inter[~inter["item_id"].isin(cold)]
    dm = InteractionDataModule(inter, content, 0.0, 64, 0)
    table = item_table(content, dm.item_index, content.genre_names, content.modality_dims)
    module = RecommenderModule(
        dm.n_users, dm.n_items, content.modality_dims, toy.GENRES, ModelConfig(**toy.FAST), table
    )
    warm_rows = module.t_warm_rows.tolist()
    assert warm_rows == sorted(content.index[i] for i in dm.item_ids)
    assert not {content.item_ids[r] for r in warm_rows} & cold
    assert module.t_warm_col[warm_rows].tolist() == list(range(len(warm_rows)))


def test_training_resource_passes_history_settings():
    """The Dagster ``training`` resource can turn the history pooling off or change it; unset keeps the defaults."""
    from recsys_pipeline.resources import ModelOverrides, TrainingResource

    assert TrainingResource(model=ModelOverrides(history_length=0)).build_model_config().history_length == 0
    cfg = TrainingResource(model=ModelOverrides(history_length=20, history_dropout=0.5)).build_model_config()
    assert (cfg.history_length, cfg.history_dropout) == (20, 0.5)
    default = ModelConfig()
    assert TrainingResource().build_model_config().history_length == default.history_length == 50


def test_history_never_trained_items_are_left_out_of_serving(content, toy):
    """An item only ever seen as a user's newest never gets a history gradient: serving pools without it."""
    inter = toy.interactions()
    dm, module = _history_module(content, inter, toy.FAST, history_length=3, history_dropout=0.0)
    for batch in dm.train_dataloader():
        module.training_step(batch, 0)
    indptr, rows = dm.train_history
    ids = module.t_id_idx[torch.as_tensor(rows)]
    last = torch.as_tensor(indptr[2:] - 1)  # each user's newest position
    in_history = torch.ones(len(ids), dtype=torch.bool)
    in_history[last] = False  # every other position is some later pair's history
    expected = torch.zeros_like(module.h_trained)
    expected[ids[in_history]] = True
    expected[0] = module.h_trained[0]
    assert torch.equal(module.h_trained, expected)
    users = torch.arange(1, dm.n_users + 1)
    served = module.serving_history(users)
    raw = module.history_index(users)
    assert torch.equal(served != 0, (raw != 0) & expected[raw])


def test_saved_model_holds_folded_history_and_old_artifacts_load(content, toy, tmp_path):
    """Saved weights hold the folded per-user history vectors (what serving reads) and the pooling (kept for
    warm-started retraining; loaded aside, saved again by a loaded model); a model saved before the history head
    existed (plain two-tower, no history keys in its config) still loads and scores as before."""
    from safetensors.torch import load_file

    inter = toy.interactions()
    model = TwoTowerRecommender(ModelConfig(**dict(toy.FAST, max_epochs=2, history_length=5)), CPU).fit(inter, content)
    model.save(tmp_path / "m")
    keys = set(load_file(str(tmp_path / "m" / "model.safetensors")))
    assert {"user_tower.folded_history", "next_item_emb.weight"} <= keys
    pooling = {k for k in keys if k.startswith("user_tower.history.")}
    assert "user_tower.history.emb.weight" in pooling
    back = TwoTowerRecommender.load(tmp_path / "m", content)
    assert set(back._history_state) == pooling
    back.save(tmp_path / "again")
    assert set(load_file(str(tmp_path / "again" / "model.safetensors"))) == keys
    assert back.config.history_length == 5  # how it was trained is kept
    np.testing.assert_array_equal(
        back.score(["u1", "u2"], content.item_ids), model.score(["u1", "u2"], content.item_ids)
    )
    # an artifact written before the history pooling existed: no history keys in its config or weights
    plain = TwoTowerRecommender(ModelConfig(**dict(toy.FAST, max_epochs=2, history_length=0)), CPU).fit(inter, content)
    plain.save(tmp_path / "p")
    assert not [k for k in load_file(str(tmp_path / "p" / "model.safetensors")) if "history" in k]
    meta = json.loads((tmp_path / "p" / "config.json").read_text())
    assert meta["format_version"] == 2  # no item-item head: the format the release before reads
    del meta["model_config"]["history_length"], meta["model_config"]["history_dropout"]
    meta["format_version"] = 1
    (tmp_path / "p" / "config.json").write_text(json.dumps(meta))
    old = TwoTowerRecommender.load(tmp_path / "p", content)
    np.testing.assert_array_equal(old.score(["u1"], content.item_ids), plain.score(["u1"], content.item_ids))
    # a format this code does not know is refused up front (so is format 3 by the code before it, not half-loaded)
    (tmp_path / "p" / "config.json").write_text(json.dumps(dict(meta, format_version=4)))
    with pytest.raises(ValueError, match="format_version 4"):
        TwoTowerRecommender.load(tmp_path / "p", content)


@pytest.mark.parametrize("bad", [dict(history_length=-1), dict(history_dropout=1.0), dict(history_dropout=-0.1)])
def test_model_config_rejects_bad_history_settings(bad):
    with pytest.raises(ValueError, match="history_"):
        ModelConfig(**bad)
