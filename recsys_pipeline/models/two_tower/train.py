"""Standalone training entry point (also launchable with ``torchrun`` for DDP).

    python -m recsys_pipeline.models.two_tower.train --interactions I.parquet --features F.npz --out DIR \
        [--accelerator cpu --devices 1 --strategy auto --precision 32-true --max-epochs 30]

Reads interactions (``user_id, item_id, timestamp[, value]``) and an :class:`ItemFeatures` ``.npz``, trains, and (on
global rank 0) writes the model directory (``TwoTowerRecommender.save``) plus ``train_stats.json``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import pandas as pd
from lightning.pytorch.utilities import rank_zero_only

from recsys_pipeline.content.features import ItemFeatures
from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender


def _devices(v: str):
    return int(v) if v.isdigit() else v


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interactions", required=True, help="parquet with user_id, item_id, timestamp[, value]")
    p.add_argument("--features", required=True, help="ItemFeatures .npz (ItemFeatures.to_npz)")
    p.add_argument("--out", required=True, help="output model directory")
    defaults = TrainerConfig()
    p.add_argument("--accelerator", default=defaults.accelerator, help="auto, cpu, gpu (default %(default)s)")
    p.add_argument("--devices", default=defaults.devices, type=_devices, help="auto, a count or a list")
    p.add_argument("--strategy", default=defaults.strategy, help="auto or ddp (default %(default)s)")
    p.add_argument("--precision", default=defaults.precision, help="default %(default)s")
    p.add_argument("--num-nodes", default=defaults.num_nodes, type=int, help="default %(default)s")
    p.add_argument("--num-threads", default=defaults.num_threads, type=int, help="torch threads (default: torch's)")
    p.add_argument("--max-epochs", default=None, type=int, help="override ModelConfig.max_epochs")
    p.add_argument("--config-json", default=None, help="JSON object of ModelConfig overrides")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    interactions = pd.read_parquet(args.interactions)
    features = ItemFeatures.from_npz(args.features)
    overrides = json.loads(args.config_json) if args.config_json else {}
    unknown = set(overrides) - {f.name for f in fields(ModelConfig)}
    if unknown:
        raise SystemExit(f"unknown ModelConfig fields: {sorted(unknown)}")
    if args.max_epochs is not None:
        overrides["max_epochs"] = args.max_epochs
    config = ModelConfig(**overrides)
    tc = TrainerConfig(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        precision=args.precision,
        num_nodes=args.num_nodes,
        num_threads=args.num_threads,
    )
    model = TwoTowerRecommender(config, tc).fit(interactions, features)
    stats = model.train_stats
    # the global rank Lightning set for this process (torchrun sets RANK; Lightning's own launcher only LOCAL_RANK
    # and NODE_RANK): only rank 0 writes, so ranks never race on the same files
    if rank_zero_only.rank == 0:
        out = Path(args.out)
        model.save(out)
        (out / "train_stats.json").write_text(json.dumps(stats, indent=2))
        print(json.dumps(stats))
    return stats


if __name__ == "__main__":
    main()
