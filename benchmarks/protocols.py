"""Ours against popularity on each evaluation protocol, with the early-stopping validation carved the same way as
the protocol's test part (the default, ``evaluation.protocols.validation_split``) or always by time
(``--val-split last``, what every protocol used before ``user_random_fraction``), over seeds.

The seed is the split's (``EvaluationSettings.seed``) and the model's (``ModelConfig.seed``). Same splits, same
metric code (``evaluation.evaluate``) for both models. Asserts nothing; prints a Markdown table (mean ± std over
the seeds) and, with ``--out``, writes it with the command, commit, cores and time taken.

Data: as ``benchmarks/ablation.py`` (a materialized ``--home``, else the bundled ratings with text vectors only).

Usage: ``nice .venv/bin/python benchmarks/protocols.py [--home DIR] [--protocols user_random_fraction
user_last_fraction] [--seeds 0 1 2] [--val-split same|last] [--out benchmarks/results/protocols.md]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ablation import _data  # noqa: E402  (this folder is not a package)
from pipeline import commit  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", default=os.environ.get("RECSYS_HOME", ".recsys"))
    parser.add_argument("--protocols", nargs="+", default=["user_random_fraction", "user_last_fraction"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--val-split", choices=["same", "last"], default="same")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", help="write the Markdown table here")
    args = parser.parse_args()

    import pandas as pd

    from recsys_pipeline.evaluation.evaluate import evaluate_protocols
    from recsys_pipeline.evaluation.protocols import EvaluationSettings
    from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
    from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender
    from recsys_pipeline.registry.tracking import judged_metrics

    interactions, features, source = _data(Path(args.home))
    trainer = TrainerConfig(num_threads=args.threads)
    started, frames = time.perf_counter(), []
    for seed in args.seeds:
        config = ModelConfig(seed=seed)
        settings = EvaluationSettings(protocols=tuple(args.protocols), seed=seed)

        def make_model(val_split, config=config):
            chosen = val_split if args.val_split == "same" else args.val_split
            return TwoTowerRecommender(replace(config, val_split=chosen), trainer)

        result = evaluate_protocols(make_model, interactions, features, settings)
        epochs = {p: d["epochs"] for p, d in result.details.items()}
        print(f"seed {seed}: {time.perf_counter() - started:.0f} s, epochs {epochs}", flush=True)
        frames.append(result.metrics.assign(seed=seed))
    metrics = pd.concat(frames, ignore_index=True)
    judged = [(p, m) for p in args.protocols for m in judged_metrics(p, settings.k) if m != "coverage"]
    rows = []
    for protocol, metric in judged:
        row = {"protocol": protocol, "metric": metric}
        for model in ("ours", "popularity"):
            values = metrics[(metrics.protocol == protocol) & (metrics.metric == metric) & (metrics.model == model)]
            row[model] = f"{values.value.mean():.4f} ± {values.value.std(ddof=0):.4f}"
        rows.append(row)
    table = pd.DataFrame(rows).to_markdown(index=False)
    seconds = time.perf_counter() - started
    facts = (
        f"data: {source}; {len(interactions):,} interactions, modalities {features.modality_names}\n"
        f"validation: {'carved as each protocol carves its test part' if args.val_split == 'same' else 'by time'}; "
        f"seeds {args.seeds}; default ModelConfig\n"
        f"commit `{commit()}`, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, {seconds:.0f} s\n"
        f"command: `{' '.join(['.venv/bin/python', 'benchmarks/protocols.py', *sys.argv[1:]])}`"
    )
    print(f"\n{table}\n\n{facts}")
    if args.out:
        Path(args.out).write_text(f"# Ours vs popularity per protocol\n\n{table}\n\n" + facts.replace("\n", "  \n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
