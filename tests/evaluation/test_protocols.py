"""Protocols (splits without leakage, their settings) and evaluation through ``Recommender.recommend``."""

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from recsys_pipeline.evaluation.evaluate import evaluate, evaluate_protocols
from recsys_pipeline.evaluation.protocols import (
    EvaluationSettings,
    Split,
    make_split,
    split_item_cold_start,
    split_temporal,
    split_user_cold_start,
    split_user_last_fraction,
    split_user_random_fraction,
    validation_split,
)
from recsys_pipeline.models.base import Recommender
from recsys_pipeline.models.popularity import PopularityRecommender
from recsys_pipeline.models.random import RandomRecommender


@pytest.fixture
def interactions():
    rng = np.random.default_rng(0)
    rows = []
    for u in range(30):
        n = 3 + u % 10  # 3..12 interactions
        items = rng.choice(50, size=n, replace=False)
        times = pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.permutation(n) * 3600 + u, unit="s")
        rows += [(f"u{u}", f"i{i}", t, 4.0) for i, t in zip(items, times)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "value"])


def test_user_last_fraction_takes_latest(interactions):
    sp = split_user_last_fraction(interactions, fraction=0.2, min_interactions=5)
    assert len(sp.train) + len(sp.test) == len(interactions)
    counts = interactions.groupby("user_id").size()
    small = set(counts[counts < 5].index)
    assert not set(sp.test["user_id"]) & small  # users below the minimum stay all-train
    for u, t in sp.test.groupby("user_id"):
        tr = sp.train[sp.train["user_id"] == u]
        assert t["timestamp"].min() >= tr["timestamp"].max()  # test = the latest timestamps
        assert len(t) == max(1, int(np.floor(counts[u] * 0.2)))
    assert sp.cold_items is None


def test_user_random_fraction_is_a_seeded_stratified_random_holdout(interactions):
    sp = split_user_random_fraction(interactions, fraction=0.25, seed=42)
    key = ["user_id", "item_id", "timestamp"]
    both = pd.concat([sp.train, sp.test])
    assert len(both) == len(interactions) and not both.duplicated(key).any()  # a partition of the rows
    counts = interactions.groupby("user_id").size()
    assert not set(sp.test["user_id"]) & set(counts[counts < 5].index)  # users below the minimum stay all-train
    held = sp.test.groupby("user_id").size()
    assert held.to_dict() == {u: max(1, int(np.floor(n * 0.25))) for u, n in counts.items() if n >= 5}
    # random, not the latest: over the users, some held-out rows are older than some kept ones
    latest = split_user_last_fraction(interactions, fraction=0.25)
    assert set(map(tuple, sp.test[key].to_numpy())) != set(map(tuple, latest.test[key].to_numpy()))
    # seeded, and independent of the row order; another seed draws other rows
    again = split_user_random_fraction(interactions.sample(frac=1.0, random_state=3), fraction=0.25, seed=42)
    assert sorted(map(tuple, again.test[key].to_numpy())) == sorted(map(tuple, sp.test[key].to_numpy()))
    other = split_user_random_fraction(interactions, fraction=0.25, seed=7)
    assert sorted(map(tuple, other.test[key].to_numpy())) != sorted(map(tuple, sp.test[key].to_numpy()))
    via_settings = make_split(interactions, "user_random_fraction", EvaluationSettings(random_fraction=0.25, seed=42))
    assert via_settings.test.equals(sp.test)


def test_each_protocol_names_the_validation_split_its_models_carve():
    assert validation_split("user_last_fraction") == "last"
    assert validation_split("user_random_fraction") == "random"
    assert validation_split("item_cold_start") == validation_split("temporal") == "last"
    with pytest.raises(ValueError, match="unknown protocol"):
        validation_split("leave_one_out")


def test_temporal_split(interactions):
    cutoff = datetime(2021, 1, 1, 5)
    sp = split_temporal(interactions, cutoff)
    assert (sp.train["timestamp"] < pd.Timestamp(cutoff)).all()
    assert (sp.test["timestamp"] >= pd.Timestamp(cutoff)).all()
    assert set(sp.test["user_id"]) <= set(sp.train["user_id"])


def test_item_cold_start_no_leakage(interactions):
    sp = split_item_cold_start(interactions, fraction=0.2, seed=0)
    n_items = interactions["item_id"].nunique()
    assert len(sp.cold_items) == round(0.2 * n_items)
    assert not set(sp.train["item_id"]) & sp.cold_items  # cold items absent from train
    assert set(sp.test["item_id"]) == sp.cold_items & set(interactions["item_id"])
    assert len(sp.train) + len(sp.test) == len(interactions)
    again = split_item_cold_start(interactions, fraction=0.2, seed=0)
    assert again.cold_items == sp.cold_items  # seeded


class Catalog:
    def __init__(self, interactions):
        self.item_ids = sorted(interactions["item_id"].unique())

    def subset(self, item_ids):
        return Catalog(pd.DataFrame({"item_id": list(item_ids)}))


def test_evaluation_ranks_with_recommend_masking_train_items_and_respecting_candidates(interactions):
    sp = split_user_last_fraction(interactions, 0.2, 5)
    pop = PopularityRecommender().fit(sp.train, Catalog(interactions))
    result = evaluate(pop, sp, k=5)
    ranked = result.ranked
    assert list(ranked.columns) == ["user_id", "rank", "item_id", "score"]
    assert set(ranked["user_id"]) == set(sp.test["user_id"])
    seen = set(zip(sp.train["user_id"], sp.train["item_id"]))
    assert not any((u, i) in seen for u, i in zip(ranked["user_id"], ranked["item_id"]))
    assert (ranked.groupby("user_id")["rank"].apply(list).map(lambda r: r == list(range(1, 6)))).all()
    # scores are non-increasing within a list, and the lists are what recommend serves
    assert (ranked.groupby("user_id")["score"].apply(lambda s: (np.diff(s.to_numpy()) <= 0).all())).all()
    served = pop.recommend(sorted(sp.test["user_id"].unique()), k=5)
    pd.testing.assert_frame_equal(ranked, served)
    assert result.ranked_cold is None

    cold = split_item_cold_start(interactions, 0.3, seed=1)
    random = RandomRecommender(0).fit(cold.train, Catalog(interactions))
    ranked_c = evaluate(random, cold, k=5).ranked_cold
    assert set(ranked_c["item_id"]) <= cold.cold_items and len(ranked_c)


def test_evaluate_keys_and_oracle(interactions):
    sp = split_item_cold_start(interactions, 0.2, seed=0)
    truth = set(zip(sp.test["user_id"], sp.test["item_id"]))

    class Oracle(Recommender):  # knows the test set: must score perfectly
        def fit(self, data, features=None):
            self._remember(features.item_ids, data)
            return self

        def score(self, user_ids, item_ids):
            return np.array([[float((u, i) in truth) for i in item_ids] for u in user_ids], dtype=np.float32)

    res = evaluate(Oracle().fit(sp.train, Catalog(interactions)), sp, k=20).metrics
    for key in ["recall_at_10", "recall_at_20", "ndcg_at_10", "ndcg_at_20", "coverage", "n_users"]:
        assert key in res and f"warm_{key}" in res and f"cold_{key}" in res
    assert res["ndcg_at_20"] == pytest.approx(1.0)
    assert res["cold_candidates_recall_at_20"] == pytest.approx(1.0)
    assert res["cold_candidates_random_recall_at_20"] == pytest.approx(min(20, len(sp.cold_items)) / len(sp.cold_items))
    assert res["warm_n_users"] == 0  # every test item is cold in an item-cold-start split
    pop = evaluate(PopularityRecommender().fit(sp.train, Catalog(interactions)), sp).metrics
    assert pop["ndcg_at_10"] < res["ndcg_at_10"]


def test_settings_are_validated_and_choose_the_split(interactions):
    settings = EvaluationSettings(protocols=["user_last_fraction"], holdout_fraction=0.25)
    assert settings.protocols == ("user_last_fraction",)
    split = make_split(interactions, "user_last_fraction", settings)
    assert len(split.test) == len(split_user_last_fraction(interactions, 0.25).test)
    with pytest.raises(ValueError, match="unknown or no protocols"):
        EvaluationSettings(protocols=["random"])
    with pytest.raises(ValueError, match="temporal_cutoff"):
        EvaluationSettings(protocols=["temporal"])
    with pytest.raises(ValueError, match="cold_fraction"):
        EvaluationSettings(cold_fraction=1.5)
    with pytest.raises(ValueError, match="random_fraction"):
        EvaluationSettings(random_fraction=0.0)


def test_evaluated_models_carve_their_validation_as_their_protocol_carves_its_test(interactions):
    asked = []

    def make_model(val_split):
        asked.append(val_split)
        return PopularityRecommender()

    settings = EvaluationSettings(protocols=["user_random_fraction", "user_last_fraction", "item_cold_start"], k=5)
    result = evaluate_protocols(make_model, interactions, Catalog(interactions), settings)
    assert asked == ["random", "last", "last"]
    assert {p: d["val_split"] for p, d in result.details.items()} == dict(zip(settings.protocols, asked))
    figures = result.metrics.set_index(["protocol", "model", "metric"])["value"]
    assert 0 < figures["user_random_fraction", "popularity", "recall_at_5"] <= 1


def test_split_dataclass_describe(interactions):
    sp = Split(interactions.iloc[:10], interactions.iloc[10:20])
    assert sp.describe()["n_train"] == 10


def test_protocol_models_fitted_in_processes_equal_the_ones_fitted_here(toy, capfd):
    """``processes=2`` fits each protocol's model in its own spawned process and brings it back through save / load:
    at the same thread count the figures, lists and training stats are those of the fits in this process. The
    children log as the parent does: under a quiet parent (the CLI's) no Lightning banner."""
    import logging
    from functools import partial

    import torch

    from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
    from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender, two_tower_for_split

    data, features = toy.interactions(), toy.features()
    config = ModelConfig(**dict(toy.FAST, max_epochs=2, val_fraction=0.0))
    # one thread in both (the children get cores // processes = 1 on 2 cores): bit-identical CPU training
    make_model = partial(two_tower_for_split, config, TrainerConfig(accelerator="cpu", devices=1, num_threads=1))
    settings = EvaluationSettings(protocols=["user_last_fraction", "item_cold_start"], k=10)
    threads = torch.get_num_threads()
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    try:
        here = evaluate_protocols(make_model, data, features, settings, processes=1)
        # the children write to this process's stderr file descriptor (capfd): Lightning's banner at INFO ...
        lightning_log.setLevel(logging.INFO)
        capfd.readouterr()
        evaluate_protocols(make_model, data, features, settings, processes=2)
        assert "GPU available" in "".join(capfd.readouterr())
        # ... and none when this process is quiet
        lightning_log.setLevel(logging.ERROR)
        spawned = evaluate_protocols(make_model, data, features, settings, processes=2)
        assert "GPU available" not in "".join(capfd.readouterr())
    finally:
        torch.set_num_threads(threads)
        lightning_log.setLevel(level)
    assert all(isinstance(m, TwoTowerRecommender) for m in spawned.models.values())
    pd.testing.assert_frame_equal(spawned.metrics, here.metrics)
    pd.testing.assert_frame_equal(spawned.ranked, here.ranked)
    for protocol in settings.protocols:
        assert spawned.models[protocol].train_stats["epochs_trained"] == 2
        assert spawned.details[protocol]["epochs"] == here.details[protocol]["epochs"] == 2
    figures = here.metrics.set_index(["protocol", "model", "metric"])["value"]
    assert figures["user_last_fraction", "ours", "ndcg_at_10"] > 0


def test_item_cold_mixed_is_the_cold_split_ranked_over_the_whole_catalogue(interactions):
    """``item_cold_mixed`` shares ``item_cold_start``'s split and fitted model (one fit for both), ranks the held-out
    items among every unseen item, and reports their share of the top-k: popularity, which has never seen them,
    lists none; a model that puts them first holds every slot they can."""
    fits = []

    class NewFirst(PopularityRecommender):  # held-out items first (score 1000), then by popularity
        def fit(self, data, features=None):
            fits.append(len(data))
            self.cold = set(Catalog(interactions).item_ids) - set(data["item_id"])
            return super().fit(data, features)

        def score(self, user_ids, item_ids):
            bonus = np.array([1000.0 * (i in self.cold) for i in item_ids], dtype=np.float32)
            return super().score(user_ids, item_ids) + bonus

    settings = EvaluationSettings(protocols=["item_cold_start", "item_cold_mixed"], k=5)
    result = evaluate_protocols(lambda _val: NewFirst(), interactions, Catalog(interactions), settings)
    assert len(fits) == 1  # one split, one model
    assert result.splits["item_cold_mixed"] is result.splits["item_cold_start"]
    assert result.models["item_cold_mixed"] is result.models["item_cold_start"]
    f = result.metrics.set_index(["protocol", "model", "metric"])["value"]
    split = result.splits["item_cold_mixed"]
    users = split.test["user_id"].nunique()
    n_cold = len(split.cold_items)
    assert f["item_cold_mixed", "popularity", "cold_share_at_5"] == 0.0
    assert f["item_cold_mixed", "popularity", "recall_at_5"] == 0.0  # popularity never lists a new item
    assert f["item_cold_mixed", "ours", "cold_share_at_5"] == pytest.approx(min(5, n_cold) * users / (5 * users))
    mixed = result.ranked[(result.ranked["protocol"] == "item_cold_mixed") & (result.ranked["model"] == "ours")]
    cold_lists = result.ranked[(result.ranked["protocol"] == "item_cold_start") & (result.ranked["model"] == "ours")]
    assert set(mixed["item_id"]) <= split.cold_items  # new items first: the whole-catalogue lists are theirs
    assert len(mixed) == len(cold_lists)
    assert validation_split("item_cold_mixed") == "last"
    # its rows are the whole-catalogue figures of the shared evaluation, not a copy of the held-out ones
    assert ("item_cold_mixed", "ours", "cold_candidates_recall_at_5") not in f
    assert f["item_cold_mixed", "ours", "recall_at_5"] == f["item_cold_start", "ours", "recall_at_5"]


def test_k_core_view_is_iterated_and_chooses_the_split():
    """The k-core keeps users and items with at least k distinct partners, iterating: dropping a user can push an
    item below k. The split of a protocol is made on that view."""
    from recsys_pipeline.evaluation.protocols import k_core

    rows = [(f"u{u}", f"i{i}") for u in range(3) for i in range(3)]  # a 3 x 3 block: the 3-core
    rows += [("u3", "i0"), ("u3", "i1"), ("u3", "i3")]  # u3 has 3 items ...
    rows += [("u4", "i3"), ("u5", "i3")]  # ... and i3 3 users, until u4 / u5 (1 item each) go: then i3, then u3
    data = pd.DataFrame(rows, columns=["user_id", "item_id"]).assign(timestamp=pd.Timestamp("2021-01-01"))
    core = k_core(data, 3)
    assert set(core["user_id"]) == {"u0", "u1", "u2"} and set(core["item_id"]) == {"i0", "i1", "i2"}
    assert len(core) == 9
    assert len(k_core(data, 1)) == len(data) and k_core(data, 10).empty
    settings = EvaluationSettings(protocols=["item_cold_start"], k_core=3, cold_fraction=0.34)
    split = make_split(data, "item_cold_start", settings)
    assert set(split.train["item_id"]) | set(split.test["item_id"]) == {"i0", "i1", "i2"}
    with pytest.raises(ValueError, match="k_core"):
        EvaluationSettings(k_core=-1)
    with pytest.raises(ValueError, match="item_cold_start: the train part is empty .*k_core=10"):
        evaluate_protocols(
            lambda _val: PopularityRecommender(),
            data,
            Catalog(data),
            EvaluationSettings(["item_cold_start"], k_core=10),
        )


def test_user_cold_start_holds_out_whole_users_and_reveals_their_first_interactions(toy):
    inter = toy.interactions()
    split = split_user_cold_start(inter, 0.25, seed=3)
    held = set(split.held_out["user_id"])
    assert len(held) == round(0.25 * inter["user_id"].nunique())
    assert not held & set(split.train["user_id"])
    assert len(split.train) + len(split.held_out) == len(inter)
    assert split_user_cold_start(inter, 0.25, seed=3).held_out.equals(split.held_out)  # seeded
    revealed, test_split = split.reveal(3)
    for user, rows in split.held_out.groupby("user_id"):
        rows = rows.sort_values("timestamp")
        assert list(revealed[revealed["user_id"] == user]["item_id"]) == list(rows["item_id"][:3])
        assert list(test_split.test[test_split.test["user_id"] == user]["item_id"]) == list(rows["item_id"][3:])
    assert len(test_split.train) == len(split.train) + len(revealed)
    with pytest.raises(ValueError, match="n >= 1"):
        split.reveal(0)
    with pytest.raises(ValueError, match="fraction"):
        split_user_cold_start(inter, 1.0)


def test_a_k_core_view_ranks_only_its_own_items(toy):
    from recsys_pipeline.evaluation.protocols import k_core, view_catalog

    content = toy.features()
    inter = toy.interactions()
    counts = inter.groupby("item_id")["user_id"].nunique()
    core = set(k_core(inter, 3)["item_id"])
    viewed = view_catalog(content, inter, 3)
    assert set(viewed.item_ids) == core and len(core) < len(content.item_ids)
    assert viewed.item_ids == [i for i in content.item_ids if i in core]  # catalog order kept
    assert counts.reindex(viewed.item_ids).min() >= 3
    assert view_catalog(content, inter, 0) is content
