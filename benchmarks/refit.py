"""Refit from scratch vs on from the best weights (``ModelConfig.refit_epochs``): quality and fit time per protocol.

Usage: ``.venv/bin/python benchmarks/refit.py --home DIR [--seeds 1 2 3] [--refit-epochs 0 1]
[--protocols user_last_fraction item_cold_start]``; ``DIR`` is a home the demo materialized (its warehouse's
interactions and item features are read). Splits are ``model_evaluation``'s (``EvaluationSettings`` defaults,
split seed 0); each (seed, refit_epochs, protocol) fits our model on the train part with the validation carved as
the protocol's and evaluates it on the test part (``evaluation.evaluate``). Prints one line per fit and the
mean ± std over seeds. Results: ``benchmarks/results/model_changes.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--refit-epochs", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--protocols", nargs="+", default=["user_last_fraction", "item_cold_start"])
    args = parser.parse_args()

    from recsys_pipeline.content.features import load_item_features
    from recsys_pipeline.data import warehouse
    from recsys_pipeline.evaluation.evaluate import evaluate
    from recsys_pipeline.evaluation.protocols import EvaluationSettings, make_split, validation_split
    from recsys_pipeline.models.two_tower.config import ModelConfig
    from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

    with warehouse.session(os.path.join(args.home, "warehouse.duckdb"), read_only=True) as con:
        data = warehouse.read_interactions(con)
        features = load_item_features(con)
    settings = EvaluationSettings(protocols=tuple(args.protocols))
    splits = {p: make_split(data, p, settings) for p in settings.protocols}
    results: dict[tuple, list[tuple[float, float, float]]] = {}
    for seed in args.seeds:
        for refit_epochs in args.refit_epochs:
            for protocol, split in splits.items():
                config = ModelConfig(seed=seed, refit_epochs=refit_epochs, val_split=validation_split(protocol))
                started = time.perf_counter()
                model = TwoTowerRecommender(config).fit(split.train, features)
                seconds = time.perf_counter() - started
                m = evaluate(model, split, settings.k).metrics
                prefix = "cold_candidates_" if protocol == "item_cold_start" else ""
                ndcg, recall = m[f"{prefix}ndcg_at_10"], m[f"{prefix}recall_at_20"]
                results.setdefault((refit_epochs, protocol), []).append((ndcg, recall, seconds))
                stats = model.train_stats
                print(
                    f"seed {seed} refit_epochs {refit_epochs} {protocol}: NDCG@10 {ndcg:.4f} Recall@20 {recall:.4f} "
                    f"fit {seconds:.1f} s (epochs {stats['epochs_trained']}, best {stats['best_epoch']})",
                    flush=True,
                )

    def spread(values):
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0:.4f}"

    print(f"\ncores {os.cpu_count()}, load average {os.getloadavg()}, seeds {args.seeds}")
    for (refit_epochs, protocol), rows in results.items():
        ndcg, recall, seconds = zip(*rows)
        print(
            f"refit_epochs {refit_epochs} {protocol}: NDCG@10 {spread(ndcg)}, Recall@20 {spread(recall)}, "
            f"fit {statistics.mean(seconds):.0f} s ({min(seconds):.0f}-{max(seconds):.0f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
