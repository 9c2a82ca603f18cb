"""Warm-started retraining vs a full retrain on a simulated night with real volume of new data.

Usage: ``.venv/bin/python benchmarks/warm_start.py --home DIR [--new-fraction 0.02] [--seeds 1]
[--warm-epochs 2]``; ``DIR`` is a home the demo materialized. On the ``user_last_fraction`` split of
``model_evaluation`` (defaults, split seed 0), "yesterday's champion" is a full training on the train part minus
its newest ``--new-fraction`` of rows by time; "tonight" is either a full retrain on the whole train part or a warm
start from that champion (``fit(init=champion)``, ``--warm-epochs`` epochs). Both are evaluated on the same test
part. (The bundled data's last real days hold 0-11 events each, too few to tell the two apart:
``benchmarks/nightly.py`` measures their time, this their quality.) Prints NDCG@10, Recall@20 and fit seconds.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--new-fraction", type=float, default=0.02)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--warm-epochs", type=int, default=2)
    args = parser.parse_args()

    from recsys_pipeline.content.features import load_item_features
    from recsys_pipeline.data import warehouse
    from recsys_pipeline.evaluation.evaluate import evaluate
    from recsys_pipeline.evaluation.protocols import EvaluationSettings, make_split
    from recsys_pipeline.models.two_tower.config import ModelConfig
    from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

    with warehouse.session(os.path.join(args.home, "warehouse.duckdb"), read_only=True) as con:
        data = warehouse.read_interactions(con)
        features = load_item_features(con)
    settings = EvaluationSettings(protocols=("user_last_fraction",))
    split = make_split(data, "user_last_fraction", settings)
    train = split.train.sort_values("timestamp", kind="stable")
    cutoff = train["timestamp"].quantile(1 - args.new_fraction)
    older = train[train["timestamp"] < cutoff]
    new_users = train.loc[train["timestamp"] >= cutoff, "user_id"].nunique()
    print(
        f"train {len(train):,} rows; yesterday's champion on {len(older):,} (before {cutoff}); "
        f"new tonight {len(train) - len(older):,} rows of {new_users} users; "
        f"test {len(split.test):,} rows; cores {os.cpu_count()}",
        flush=True,
    )
    for seed in args.seeds:
        config = ModelConfig(seed=seed, warm_start_epochs=args.warm_epochs)
        champion = TwoTowerRecommender(config).fit(older, features)
        runs = {}
        for name, init in (("full retrain", None), (f"warm start, {args.warm_epochs} epochs", champion)):
            started = time.perf_counter()
            model = TwoTowerRecommender(replace(config, seed=seed + 100)).fit(train, features, init=init)
            seconds = time.perf_counter() - started
            m = evaluate(model, split, settings.k).metrics
            runs[name] = (m["ndcg_at_10"], m["recall_at_20"], m["cold_recall_at_20"], seconds)
        m = evaluate(champion, split, settings.k).metrics
        runs["yesterday's champion, not retrained"] = (m["ndcg_at_10"], m["recall_at_20"], m["cold_recall_at_20"], 0)
        for name, (ndcg, recall, cold, seconds) in runs.items():
            print(
                f"seed {seed} {name}: NDCG@10 {ndcg:.4f} Recall@20 {recall:.4f} cold Recall@20 {cold:.4f} "
                f"fit {seconds:.1f} s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
