"""Warm-started retraining vs a full retrain on a simulated night with real volume of new data.

Usage: ``.venv/bin/python benchmarks/warm_start.py --home DIR [--new-fraction 0.02] [--nights 1] [--seeds 1]
[--warm-epochs 2]``; ``DIR`` is a home the demo materialized. On the ``user_last_fraction`` split of
``model_evaluation`` (defaults, split seed 0), "yesterday's champion" is a full training on the train part minus
its newest ``nights x new-fraction`` of rows by time; then either a full retrain on the whole train part, or
``--nights`` warm starts in a chain (``fit(init=...)``, ``--warm-epochs`` epochs each), night ``n`` from night
``n - 1``'s model with the next ``--new-fraction`` of rows added, as nightly retraining would. Both end on the same
rows and are evaluated on the same test part (the chain also after every night). (The bundled data's last real
days hold 0-11 events each, too few to tell the two apart: ``benchmarks/nightly.py`` measures their time, this
their quality.) Prints NDCG@10, Recall@20 and fit seconds.
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
    parser.add_argument("--nights", type=int, default=1, help="warm starts in a chain, one per night")
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
    # night n (1..N) adds the rows between the (1 - (N - n + 1) f) and (1 - (N - n) f) quantiles of time
    cutoffs = [train["timestamp"].quantile(1 - (args.nights - n) * args.new_fraction) for n in range(args.nights)]
    older = train[train["timestamp"] < cutoffs[0]]
    print(
        f"train {len(train):,} rows; yesterday's champion on {len(older):,} (before {cutoffs[0]}); "
        f"{args.nights} night(s) of about {args.new_fraction:.0%} of the rows each "
        f"({len(train) - len(older):,} rows of {train.loc[train['timestamp'] >= cutoffs[0], 'user_id'].nunique()} "
        f"users in all); test {len(split.test):,} rows; cores {os.cpu_count()}",
        flush=True,
    )

    def figures(model) -> tuple[float, float, float]:
        m = evaluate(model, split, settings.k).metrics
        return m["ndcg_at_10"], m["recall_at_20"], m["cold_recall_at_20"]

    for seed in args.seeds:
        config = ModelConfig(seed=seed, warm_start_epochs=args.warm_epochs)
        champion = TwoTowerRecommender(config).fit(older, features)
        runs = {}
        started = time.perf_counter()
        full = TwoTowerRecommender(replace(config, seed=seed + 100)).fit(train, features)
        runs["full retrain"] = (*figures(full), time.perf_counter() - started)
        model, warm_seconds = champion, 0.0
        for night in range(1, args.nights + 1):  # a chain of warm starts, each from the night before
            end = cutoffs[night] if night < args.nights else None
            rows = train if end is None else train[train["timestamp"] < end]
            started = time.perf_counter()
            model = TwoTowerRecommender(replace(config, seed=seed + 100 + night)).fit(rows, features, init=model)
            warm_seconds += time.perf_counter() - started
            if args.nights > 1:
                ndcg, recall, _ = figures(model)
                print(f"seed {seed} night {night}: warm-started chain NDCG@10 {ndcg:.4f} Recall@20 {recall:.4f}")
        chain = f", a chain of {args.nights}" if args.nights > 1 else ""
        runs[f"warm start, {args.warm_epochs} epochs{chain}"] = (*figures(model), warm_seconds)
        runs["yesterday's champion, not retrained"] = (*figures(champion), 0)
        for name, (ndcg, recall, cold, seconds) in runs.items():
            print(
                f"seed {seed} {name}: NDCG@10 {ndcg:.4f} Recall@20 {recall:.4f} cold Recall@20 {cold:.4f} "
                f"fit {seconds:.1f} s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
