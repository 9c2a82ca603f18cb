"""Benchmark the full demo: wall time per asset, text-encoding items/s, training samples/s, peak memory.

Usage: ``.venv/bin/python benchmarks/pipeline.py [--home DIR] [--start YYYY-MM-DD --end YYYY-MM-DD]``
(default: a fresh temporary home, every partition of the bundled data). Prints its figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home")
    parser.add_argument("--start")
    parser.add_argument("--end")
    args = parser.parse_args()
    home = args.home or tempfile.mkdtemp(prefix="recsys-bench-")
    from recsys_pipeline.cli import run_demo

    started = time.perf_counter()
    timings = run_demo(home, args.start, args.end)
    total = time.perf_counter() - started

    import dagster as dg

    instance = dg.DagsterInstance.get()

    def meta(asset: str) -> dict:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        mat = event.asset_materialization if event else None
        return {k: v.value for k, v in (mat.metadata if mat else {}).items()}

    text, model = meta("text_embeddings"), meta("recommender_model")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("\n== benchmarks/pipeline.py ==")
    print(f"home: {home}   cores: {os.cpu_count()}   python: {sys.version.split()[0]}")
    for name, seconds in timings.items():
        print(f"wall_seconds[{name}] = {seconds:.1f}")
    print(f"wall_seconds[total] = {total:.1f}")
    print(f"text_items_encoded = {text.get('encoded')}   text_items_per_second = {text.get('items_per_second')}")
    print(f"train_samples_per_second = {model.get('samples_per_second')}   epochs = {model.get('epochs_trained')}"
          f"   train_seconds = {model.get('train_seconds')}")
    print(f"peak_rss_mib = {peak_mib:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
