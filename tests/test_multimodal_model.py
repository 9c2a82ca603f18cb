"""Fusion over text / image / audio with missing modalities, and modality dropout."""

import pytest
import torch

from recsys_pipeline.model.modules import ConcatFusion, ItemTower, ModalityAttentionFusion, drop_modalities

DIMS = {"text": 8, "image": 6, "audio": 4}


def _batch(present):
    torch.manual_seed(0)
    feats = {m: torch.randn(len(present), d) for m, d in DIMS.items()}
    return feats, torch.tensor(present)


def test_modality_dropout_never_empties_an_item():
    g = torch.Generator().manual_seed(0)
    present = torch.rand(4000, 3, generator=g) < 0.7
    for p in (0.2, 0.5, 0.95):
        kept = drop_modalities(present, p, generator=g)
        assert not (kept & ~present).any()  # never invents a modality
        assert torch.equal(kept.any(dim=1), present.any(dim=1))  # never removes all of an item's
        dropped = (present & ~kept).sum().item() / present.sum().item()
        assert 0.5 * p < dropped <= p + 0.02  # about p, a little less where one is given back
    full = torch.ones(2000, 3, dtype=torch.bool)
    kept = drop_modalities(full, 0.5, generator=g)
    assert (kept.sum(dim=1) == 1).float().mean() > 0.3  # many items train with a single modality


def test_absent_modalities_do_not_change_the_fusion_output():
    for cls in (ModalityAttentionFusion, ConcatFusion):
        torch.manual_seed(1)
        fusion = cls(DIMS, width=16, n_heads=4, dropout=0.0).eval()
        feats, present = _batch([[True, False, True], [True, True, True], [False, False, False]])
        out, has = fusion(feats, present)
        garbage = {m: v.clone() for m, v in feats.items()}
        garbage["image"][0] = 1e3  # item 0 has no image: its values must not matter
        out2, _ = fusion(garbage, present)
        assert torch.allclose(out[0], out2[0]) and has.tolist() == [True, True, False]
        assert torch.equal(out[2], torch.zeros(16))  # nothing present: zeros, not NaN
        assert not torch.allclose(out[0], out[1])


def test_item_tower_trains_with_modality_dropout_and_keeps_content():
    tower = ItemTower(5, DIMS, n_genres=2, dim=16, modality_dropout=0.9, id_dropout=0.0).train()
    feats, present = _batch([[True, True, True]] * 5)
    out = tower(torch.arange(1, 6), feats, present, torch.zeros(5, 2), torch.full((5,), 2000))
    assert out.shape == (5, 17) and torch.isfinite(out).all()


def _toy_data(n_users=40, n_items=60, seed=0):
    """Users in two taste groups; item 'image' vectors carry the group, text vectors are noise; half the items
    have an image."""
    import numpy as np
    import pandas as pd

    from recsys_pipeline.model import ItemContent

    rng = np.random.default_rng(seed)
    group = np.arange(n_items) % 2
    rows = []
    for u in range(n_users):
        liked = rng.choice(np.flatnonzero(group == u % 2), size=12, replace=False)
        rows += [(f"u{u}", f"i{i}", pd.Timestamp("2020-01-01") + pd.Timedelta(hours=t)) for t, i in enumerate(liked)]
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).assign(value=1.0)
    image = np.eye(2, 8, dtype=np.float32)[group] + 0.01 * rng.standard_normal((n_items, 8)).astype(np.float32)
    present = np.stack([np.ones(n_items, bool), np.arange(n_items) % 4 < 2], axis=1)
    content = ItemContent(
        item_ids=[f"i{i}" for i in range(n_items)],
        modalities={"text": rng.standard_normal((n_items, 6)).astype(np.float32), "image": image * present[:, 1:]},
        present=present, genres=np.zeros((n_items, 0), np.float32), genre_names=[], year=np.zeros(n_items, np.int64),
    )
    return interactions, content


def test_ablation_trains_each_distinct_variant_and_logs_it(tmp_path):
    from mlflow.tracking import MlflowClient

    from recsys_pipeline import tracking
    from recsys_pipeline.model import ModelConfig, TrainerConfig
    from recsys_pipeline.runs import ablation_and_log, ablation_table, image_groups, restrict_modalities

    interactions, content = _toy_data()
    groups = image_groups(content)
    assert len(groups["with_image"]) == 30 and groups["with_image"].isdisjoint(groups["without_image"])
    assert restrict_modalities(content, ["text"]).modality_names == ["text"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.experiment_id(uri, "ablation-test", str(tmp_path / "art"))
    config = ModelConfig(embedding_dim=8, mlp_hidden=16, max_epochs=1, refit=False, val_fraction=0.0, num_negatives=16,
                         batch_size=64)
    table = ablation_and_log(interactions, content, config, TrainerConfig(accelerator="cpu", devices=1), uri, exp,
                             protocols=["item_cold_start"], variants=["text", "text_image", "all", "all_concat"],
                             k=10)
    status = table.drop_duplicates("variant").set_index("variant")["status"].to_dict()
    # text_image is every modality here: "all" reuses it; concat is a different model
    assert status == {"text": "trained", "text_image": "trained", "all": "same as text_image",
                      "all_concat": "trained"}
    got = table.pivot_table(index="variant", columns="metric", values="value", aggfunc="first")
    assert got.loc["all", "recall_at_10"] == got.loc["text_image", "recall_at_10"]
    assert {"with_image_recall_at_10", "cold_candidates_with_image_recall_at_10",
            "cold_candidates_without_image_recall_at_10"} <= set(got.columns)
    run = MlflowClient(uri).get_run(table["mlflow_run_id"].iloc[0])
    assert "text.item_cold_start.cold_candidates_recall_at_10" in run.data.metrics
    assert "all_concat.item_cold_start.cold_candidates_recall_at_10" in run.data.metrics
    md = ablation_table(table, ["cold_candidates_recall_at_10"])
    assert md.count("\n") == 5 and "all_concat" in md  # header, rule, four variants
    # the variant equal to the evaluated model (every modality, same fusion) reuses its figures: nothing trained
    import pandas as pd

    reference = pd.DataFrame({"protocol": "item_cold_start", "model": ["ours", "popularity"],
                              "metric": "recall_at_10", "value": [0.25, 0.125]})
    reused = ablation_and_log(interactions, content, config, TrainerConfig(), uri, exp, reference=reference,
                              protocols=["item_cold_start"], variants=["text_image", "all"])
    assert reused[["variant", "status", "metric", "value"]].values.tolist() == [
        ["text_image", "evaluation model", "recall_at_10", 0.25], ["all", "same as text_image", "recall_at_10", 0.25]]
    with pytest.raises(ValueError, match="unknown ablation"):
        ablation_and_log(interactions, content, config, TrainerConfig(), uri, exp, variants=["video"])
