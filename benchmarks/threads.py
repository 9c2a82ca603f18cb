"""Training speed on a CPU that another busy process shares: OpenMP's wait policy.

Usage: ``.venv/bin/python benchmarks/threads.py [--rounds 2] [--interactions 30000] [--epochs 2]``.

Each fit runs in its own process (OpenMP reads ``OMP_WAIT_POLICY`` when torch loads it): the default
``TwoTowerRecommender`` on the earliest ``--interactions`` ratings of the bundled data (random 384-d text vectors:
the encoder is not what is timed), ``--epochs`` epochs, ``torch.set_num_threads(os.cpu_count())``. Every setting
is timed on an idle CPU, then beside one busy process (a Python loop on one core, as a benchmark or another run
would be). Settings: ``OMP_WAIT_POLICY=ACTIVE`` (waiting threads spin: what torch's OpenMP does by default),
``PASSIVE`` (they sleep: what ``settings.library_environment`` sets unless the variable is given), and one thread.
Prints one line per fit and the median wall seconds per setting and CPU state.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FIT = """
import os, sys, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, sys.argv[4])
import numpy as np
from quality import build_content, load_catalog, load_interactions
from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender
n, epochs, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
events = load_interactions().sort_values("timestamp").head(n)
catalog = load_catalog()
content = build_content(catalog, np.random.default_rng(0).normal(size=(len(catalog), 384)).astype(np.float32))
started = time.perf_counter()
TwoTowerRecommender(ModelConfig(seed=0, max_epochs=epochs), TrainerConfig(num_threads=threads)).fit(events, content)
print(f"FIT {time.perf_counter() - started:.2f}")
"""


def _busy(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


def fit_seconds(args, policy: str | None, threads: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run(
        [sys.executable, "-c", FIT, str(args.interactions), str(args.epochs), str(threads), HERE],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.rsplit("FIT ", 1)[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--interactions", type=int, default=30_000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    settings = [("ACTIVE", cores), ("PASSIVE", cores), ("ACTIVE", 1)]
    rows = []
    for busy in (False, True):
        stop = multiprocessing.Event()
        hog = multiprocessing.Process(target=_busy, args=(stop,)) if busy else None
        if hog:
            hog.start()
            time.sleep(1)
        try:
            for policy, threads in settings:
                times = []
                for _ in range(args.rounds):
                    times.append(fit_seconds(args, policy, threads))
                    print(
                        f"{'busy' if busy else 'idle'} CPU, OMP_WAIT_POLICY={policy}, {threads} thread(s): "
                        f"{times[-1]:.1f} s",
                        flush=True,
                    )
                rows.append((busy, policy, threads, statistics.median(times)))
        finally:
            if hog:
                stop.set()
                hog.join()
    print(f"\nmedian fit seconds, {args.interactions:,} interactions, {args.epochs} epochs, {cores} cores:")
    print("| CPU | OMP_WAIT_POLICY | threads | seconds |\n|---|---|---|---|")
    for busy, policy, threads, seconds in rows:
        print(f"| {'one other busy process' if busy else 'idle'} | {policy} | {threads} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
