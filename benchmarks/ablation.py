"""The retraining modality ablation, next to the per-run one (modalities hidden at inference) on the same splits.

``model_evaluation`` runs the cheap form every time: each protocol's model ranks again with some modalities hidden
(``evaluation.ablation.masked_ablation``, nothing trained). This benchmark answers the other question, "would a
model *built* without the posters (or with concatenation instead of attention) do better", by training each
variant of ``ABLATION_VARIANTS`` from scratch (``retrained_ablation``), and prints both tables so the proxy can be
checked against the real thing. Asserts nothing.

Data: the interactions and item features of a materialized home (``--home``, default ``$RECSYS_HOME`` or
``.recsys``: run ``recsys demo`` first for text + posters); without one, the bundled ratings with text vectors only.

Usage: ``nice .venv/bin/python benchmarks/ablation.py [--home DIR] [--protocols user_last_fraction item_cold_start]
[--variants text text_image all all_concat] [--threads 1]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _data(home: Path):
    from recsys_pipeline.content.features import load_item_features
    from recsys_pipeline.data import warehouse

    db = home / "warehouse.duckdb"
    if db.exists():
        with warehouse.session(db, read_only=True) as con:
            return warehouse.read_interactions(con), load_item_features(con), f"home {home}"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import quality

    catalog = quality.load_catalog()
    features = quality.build_content(catalog, quality.text_vectors(catalog["text"].tolist()))
    return quality.load_interactions(), features, "bundled ratings, text vectors only (no home)"


def main() -> int:
    from recsys_pipeline.evaluation.ablation import ABLATION_VARIANTS, MASKED_VARIANTS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", default=os.environ.get("RECSYS_HOME", ".recsys"))
    parser.add_argument("--protocols", nargs="+", default=["user_last_fraction", "item_cold_start"])
    parser.add_argument("--variants", nargs="+", default=list(ABLATION_VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from functools import partial

    from recsys_pipeline.evaluation.ablation import ablation_table, masked_ablation, retrained_ablation
    from recsys_pipeline.evaluation.evaluate import evaluate_protocols, modality_groups
    from recsys_pipeline.evaluation.protocols import EvaluationSettings
    from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
    from recsys_pipeline.models.two_tower.recommender import two_tower_for_split

    interactions, features, source = _data(Path(args.home))
    settings = EvaluationSettings(protocols=tuple(args.protocols))
    config, trainer = ModelConfig(), TrainerConfig(num_threads=args.threads)
    print(f"data: {source}; {len(interactions)} interactions, modalities {features.modality_names}")
    print(f"cores: {os.cpu_count()}   load average: {os.getloadavg()}   config: {config}", flush=True)
    started = time.perf_counter()
    evaluation = evaluate_protocols(
        partial(two_tower_for_split, config, trainer),
        interactions,
        features,
        settings,
        modality_groups(features),
    )
    masked_variants = [v for v in args.variants if v in MASKED_VARIANTS]
    masked = masked_ablation(evaluation, features, settings.k, masked_variants)
    masked_seconds = time.perf_counter() - started
    started = time.perf_counter()
    retrained = retrained_ablation(config, trainer, interactions, features, settings, args.variants, evaluation.metrics)
    retrained_seconds = time.perf_counter() - started
    print(f"\n== modalities hidden at inference ({masked_seconds:.0f} s, including the evaluation's training) ==")
    print(ablation_table(masked))
    print(f"\n== each variant retrained ({retrained_seconds:.0f} s) ==")
    print(ablation_table(retrained))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
