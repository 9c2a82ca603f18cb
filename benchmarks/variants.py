"""ModelConfig variants side by side: quality and fit time per protocol, over model seeds.

Usage: ``.venv/bin/python benchmarks/variants.py --home DIR --variant NAME='{"field": value}' [--variant ...]
[--seeds 1 2 3] [--protocols user_last_fraction item_cold_start] [--threads N]``; ``DIR`` is a home the demo
materialized (its warehouse's interactions and item features are read). Each variant is ``ModelConfig()`` with the
JSON overrides (``NAME={}`` is today's default). Splits are ``model_evaluation``'s (``EvaluationSettings``
defaults, split seed 0); each (seed, variant, protocol) fits our model on the train part (a validation split, if
the variant has one, carved as the protocol's) and evaluates it on the test part (``evaluation.evaluate``; the
cold-candidates ranking for ``item_cold_start``). Prints one line per fit and the mean ± std over seeds.
Results: ``benchmarks/results/model_changes.md``.

Example (the refit comparison of 2026-12-04)::

    benchmarks/variants.py --home H --variant 'refit from scratch={"val_fraction": 0.1, "max_epochs": 20}' \
        --variant 'refit on, 1 epoch={"val_fraction": 0.1, "max_epochs": 20, "refit_epochs": 1}'
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _variant(text: str) -> tuple[str, dict]:
    name, sep, overrides = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--variant wants NAME=JSON, got {text!r}")
    try:
        values = json.loads(overrides)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--variant {name}: {exc}") from exc
    if not isinstance(values, dict):
        raise argparse.ArgumentTypeError(f"--variant {name}: the overrides must be a JSON object")
    return name, values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--variant", type=_variant, action="append", required=True, help="NAME=JSON overrides")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--protocols", nargs="+", default=["user_last_fraction", "item_cold_start"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads per fit (default: torch's)")
    args = parser.parse_args()

    from recsys_pipeline.content.features import load_item_features
    from recsys_pipeline.data import warehouse
    from recsys_pipeline.evaluation.evaluate import evaluate
    from recsys_pipeline.evaluation.protocols import EvaluationSettings, make_split, validation_split
    from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
    from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

    with warehouse.session(os.path.join(args.home, "warehouse.duckdb"), read_only=True) as con:
        data = warehouse.read_interactions(con)
        features = load_item_features(con)
    settings = EvaluationSettings(protocols=tuple(args.protocols))
    splits = {p: make_split(data, p, settings) for p in settings.protocols}
    trainer = TrainerConfig(num_threads=args.threads)
    results: dict[tuple, list[tuple[float, float, float]]] = {}
    for seed in args.seeds:
        for name, overrides in args.variant:
            for protocol, split in splits.items():
                config = replace(ModelConfig(**overrides), seed=seed, val_split=validation_split(protocol))
                started = time.perf_counter()
                model = TwoTowerRecommender(config, trainer).fit(split.train, features)
                seconds = time.perf_counter() - started
                m = evaluate(model, split, settings.k).metrics
                prefix = "cold_candidates_" if protocol == "item_cold_start" else ""
                ndcg, recall = m[f"{prefix}ndcg_at_10"], m[f"{prefix}recall_at_20"]
                results.setdefault((name, protocol), []).append((ndcg, recall, seconds))
                stats = model.train_stats
                print(
                    f"seed {seed} {name} {protocol}: NDCG@10 {ndcg:.4f} Recall@20 {recall:.4f} fit {seconds:.1f} s "
                    f"(epochs {stats['epochs_trained']}, best {stats['best_epoch']})",
                    flush=True,
                )

    def spread(values):
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0:.4f}"

    print(f"\ncores {os.cpu_count()}, load average {os.getloadavg()}, seeds {args.seeds}, threads {args.threads}")
    for (name, protocol), rows in results.items():
        ndcg, recall, seconds = zip(*rows)
        print(
            f"{name} {protocol}: NDCG@10 {spread(ndcg)}, Recall@20 {spread(recall)}, "
            f"fit {statistics.mean(seconds):.0f} s ({min(seconds):.0f}-{max(seconds):.0f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
