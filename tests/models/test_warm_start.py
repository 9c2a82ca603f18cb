"""Carrying trained weights to other id vocabularies (``models.two_tower.warm_start``) and the warm refit."""

import numpy as np
import pytest
import torch

from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
from recsys_pipeline.models.two_tower.modules import TwoTowerModel
from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender
from recsys_pipeline.models.two_tower.warm_start import ITEM_ROWS, USER_ROWS, carry_rows, remap_state

CPU = TrainerConfig(accelerator="cpu", devices=1)
DIMS = {"text": 6}


def _model(n_users: int, n_items: int, seed: int) -> TwoTowerModel:
    torch.manual_seed(seed)
    return TwoTowerModel(n_users, n_items, DIMS, 3, ModelConfig(embedding_dim=8, n_heads=2, history_length=4))


def test_id_rows_follow_their_ids_and_new_ids_keep_the_fresh_init():
    old, new = _model(3, 4, seed=0), _model(4, 3, seed=1)
    old_users, new_users = ["a", "b", "c"], ["b", "d", "a", "c"]
    old_items, new_items = ["i1", "i2", "i3", "i4"], ["i4", "i9", "i2"]
    state, counts = remap_state(old.state_dict(), new.state_dict(), old_users, new_users, old_items, new_items)
    assert counts == {"users_carried": 3, "items_carried": 2}
    o, fresh = old.state_dict(), new.state_dict()
    u = state["user_tower.emb.weight"]
    assert torch.equal(u[1], o["user_tower.emb.weight"][2])  # "b": old row 2 -> new row 1
    assert torch.equal(u[3], o["user_tower.emb.weight"][1])  # "a"
    assert torch.equal(u[2], fresh["user_tower.emb.weight"][2])  # "d" is new: fresh init
    for key in ("item_tower.id_emb.weight", "next_item_emb.weight", "user_tower.history.emb.weight"):
        assert torch.equal(state[key][1], o[key][4]) and torch.equal(state[key][3], o[key][2])  # i4, i2
        assert torch.equal(state[key][2], fresh[key][2])  # i9 is new
    # every tensor that is not an id embedding is the trained one
    shared = [k for k in o if k not in USER_ROWS + ITEM_ROWS]
    assert len(shared) > 5 and all(torch.equal(state[k], o[k]) for k in shared)
    new.load_state_dict(state)  # a valid state dict for the new model


def test_another_architecture_is_refused():
    old = _model(3, 4, seed=0)
    other = TwoTowerModel(3, 4, DIMS, 3, ModelConfig(embedding_dim=16, n_heads=2, history_length=4))
    with pytest.raises(ValueError, match="cannot warm start"):
        remap_state(old.state_dict(), other.state_dict(), ["a"], ["a"], ["i"], ["i"])


def test_carry_rows_copies_a_flag_vector():
    out, n = carry_rows(torch.tensor([False, True, False]), torch.zeros(3, dtype=torch.bool), ["x", "y"], ["y", "x"])
    assert n == 2 and out.tolist() == [False, False, True]


def test_warm_refit_trains_on_everything_for_its_epochs(toy):
    content, inter = toy.features(), toy.interactions()
    cfg = ModelConfig(**dict(toy.FAST, max_epochs=3, patience=1, refit_epochs=1))
    model = TwoTowerRecommender(cfg, CPU).fit(inter, content)
    stats = model.train_stats
    assert stats["refit"] and stats["n_train_interactions"] == len(inter)
    assert np.isfinite(model.score(["u0"], content.item_ids)).all()
    # every item of the data has a trained id embedding (those seen only in validation too)
    assert set(model.trained_item_ids) == set(inter["item_id"].astype(str))
    with pytest.raises(ValueError, match="refit_epochs"):
        ModelConfig(refit_epochs=-1)


def test_warm_started_retraining_keeps_what_the_champion_learned(toy, tmp_path):
    """One epoch from a trained (saved and loaded) model ranks about as well as that model, and far better than one
    epoch from scratch; users and items new to it get rows of their own."""
    from recsys_pipeline.evaluation.evaluate import evaluate
    from recsys_pipeline.evaluation.protocols import split_user_last_fraction

    content = toy.features()
    split = split_user_last_fraction(toy.interactions(), 0.2, 5)
    train = split.train
    newest_user = sorted(train["user_id"].unique())[-1]
    older = train[train["user_id"] != newest_user]  # yesterday's data: one user fewer
    champion = TwoTowerRecommender(ModelConfig(**toy.FAST), CPU).fit(older, content)
    champion.save(tmp_path / "champion")
    loaded = TwoTowerRecommender.load(tmp_path / "champion", content)
    assert any(k.startswith("user_tower.history.") for k in loaded._history_state)  # saved for warm starts

    one_epoch = ModelConfig(**dict(toy.FAST, warm_start_epochs=1, max_epochs=1, val_fraction=0.0))
    warm = TwoTowerRecommender(one_epoch, CPU).fit(train, content, init=loaded)
    cold = TwoTowerRecommender(one_epoch, CPU).fit(train, content)
    stats = warm.train_stats
    assert stats["warm_start"] and stats["epochs_trained"] == 1
    assert stats["warm_start_users_carried"] == len(champion.user_ids) == len(warm.user_ids) - 1
    assert stats["warm_start_items_carried"] == len(champion.trained_item_ids)
    assert newest_user in warm.known_users
    ndcg = {
        name: evaluate(m, split).metrics["ndcg_at_10"]
        for name, m in [("champion", champion), ("warm", warm), ("cold", cold)]
    }
    assert ndcg["warm"] > ndcg["cold"] + 0.05, ndcg
    assert ndcg["warm"] > 0.8 * ndcg["champion"], ndcg
