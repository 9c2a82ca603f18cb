"""ModelConfig variants side by side: quality and fit time per protocol, over model seeds.

Usage: ``.venv/bin/python benchmarks/variants.py --home DIR --variant NAME='{"field": value}' [--variant ...]
[--seeds 1 2 3] [--protocols user_last_fraction item_cold_start] [--threads N]``; ``DIR`` is a home the demo
materialized (its warehouse's interactions and item features are read). Each variant is ``ModelConfig()`` with the
JSON overrides (``NAME={}`` is today's default). Splits are ``model_evaluation``'s (``EvaluationSettings``
defaults, split seed 0); each (seed, variant, protocol) fits our model on the train part (a validation split, if
the variant has one, carved as the protocol's) and evaluates it on the test part (``evaluation.evaluate``; the
cold-candidates ranking for ``item_cold_start``). A variant's ``"modalities": [...]`` key is not a ``ModelConfig``
field: it keeps only those modalities of the item features (e.g. ``["text"]``). Prints one line per fit and the
mean ± std over seeds of NDCG@10, Recall@20 and, when the items have images, Recall@20 on the test items with and
without one. Results: ``benchmarks/results/model_changes.md``.

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
    parser.add_argument("--k-core", type=int, default=0, help="evaluate on the k-core view (e.g. 10; 0 = all)")
    args = parser.parse_args()

    from recsys_pipeline.content.features import load_item_features
    from recsys_pipeline.data import warehouse
    from recsys_pipeline.evaluation.evaluate import evaluate, modality_groups
    from recsys_pipeline.evaluation.protocols import EvaluationSettings, make_split, validation_split
    from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
    from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

    with warehouse.session(os.path.join(args.home, "warehouse.duckdb"), read_only=True) as con:
        data = warehouse.read_interactions(con)
        features = load_item_features(con)
    settings = EvaluationSettings(protocols=tuple(args.protocols), k_core=args.k_core)
    splits = {p: make_split(data, p, settings) for p in settings.protocols}
    trainer = TrainerConfig(num_threads=args.threads)
    groups = modality_groups(features, "image")  # the same test items whatever a variant's modalities
    results: dict[tuple, list[tuple[float, ...]]] = {}
    for seed in args.seeds:
        for name, given in args.variant:
            overrides = dict(given)
            modalities = overrides.pop("modalities", None)
            items = features.with_modalities(modalities) if modalities is not None else features
            for protocol, split in splits.items():
                config = replace(ModelConfig(**overrides), seed=seed, val_split=validation_split(protocol))
                started = time.perf_counter()
                model = TwoTowerRecommender(config, trainer).fit(split.train, items)
                seconds = time.perf_counter() - started
                m = evaluate(model, split, settings.k, groups).metrics
                prefix = "cold_candidates_" if protocol == "item_cold_start" else ""
                figures = [m[f"{prefix}ndcg_at_10"], m[f"{prefix}recall_at_20"]]
                figures += [m[f"{prefix}{g}_recall_at_20"] for g in groups]
                results.setdefault((name, protocol), []).append((*figures, seconds))
                stats = model.train_stats
                by_group = "".join(f" {g} Recall@20 {v:.4f}" for g, v in zip(groups, figures[2:]))
                print(
                    f"seed {seed} {name} {protocol}: NDCG@10 {figures[0]:.4f} Recall@20 {figures[1]:.4f}{by_group} "
                    f"fit {seconds:.1f} s (epochs {stats['epochs_trained']}, best {stats['best_epoch']})",
                    flush=True,
                )

    def spread(values):
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0:.4f}"

    print(f"\ncores {os.cpu_count()}, load average {os.getloadavg()}, seeds {args.seeds}, threads {args.threads}")
    for (name, protocol), rows in results.items():
        ndcg, recall, *by_group, seconds = zip(*rows)
        groups_text = "".join(f", {g} Recall@20 {spread(v)}" for g, v in zip(groups, by_group))
        print(
            f"{name} {protocol}: NDCG@10 {spread(ndcg)}, Recall@20 {spread(recall)}{groups_text}, "
            f"fit {statistics.mean(seconds):.0f} s ({min(seconds):.0f}-{max(seconds):.0f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
