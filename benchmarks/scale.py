"""How the pipeline's cost grows with data: ml-latest-small tiled ``--factor`` times, run through the same assets.

Run: ``.venv/bin/python benchmarks/scale.py --factor 1 10 [--items-factor 1] [--max-epochs 3]``.

For each factor F a GroupLens-layout release is written to a temporary folder: F copies of the bundled ratings,
copy ``c`` with user ids ``userId + c * 1,000,000`` and the same timestamps (so every event keeps its day and the
8,215 daily partitions stay the same). Items are shared by all copies, or with ``--items-factor M`` copied M times
with their content (titles, genres, tags; copy ``j`` has ids ``movieId + j * 10,000,000``), users of copy ``c``
rating copy ``c mod M``. Each factor then runs ``benchmarks/pipeline.py --section demo`` (the two in-process
Dagster runs of ``recsys demo``: ingestion of every day, then content and the model group for the last day) on a
home of its own, in a child process, without posters (image cost
does not grow with events), with training capped at ``--max-epochs`` epochs (``RECSYS_MAX_EPOCHS``; per-epoch time
is the figure that must grow linearly; with 1 epoch the model stays below the popularity floor and the gate stops
the run before ``recommendations``). A factor whose run stopped early is reported with the reason.

It prints, per step and factor, wall seconds, rows/s (the rows the step's materialization reports) and peak RSS,
then the growth exponent per step: the least-squares slope of log(wall seconds) on log(factor) (1.0 = linear).
With ``--results`` it writes the table as Markdown (``benchmarks/results/scale.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from pipeline import commit  # noqa: E402  (this folder is not a package)

from recsys_pipeline.settings import BUNDLED_MOVIELENS_DIR  # noqa: E402

USER_STRIDE, ITEM_STRIDE = 1_000_000, 10_000_000


def tiled_release(dest: Path, factor: int, items_factor: int = 1) -> int:
    """Write ``factor`` copies of the bundled ratings (and ``items_factor`` copies of the catalog) to ``dest``;
    returns the number of ratings written."""
    dest.mkdir(parents=True, exist_ok=True)
    ratings = pd.read_csv(BUNDLED_MOVIELENS_DIR / "ratings.csv")
    movies = pd.read_csv(BUNDLED_MOVIELENS_DIR / "movies.csv", dtype=str, keep_default_na=False)
    tags = pd.read_csv(BUNDLED_MOVIELENS_DIR / "tags.csv", dtype=str, keep_default_na=False)
    with open(dest / "ratings.csv", "w") as out:
        out.write("userId,movieId,rating,timestamp\n")
        for c in range(factor):
            copy = ratings.assign(
                userId=ratings["userId"] + c * USER_STRIDE,
                movieId=ratings["movieId"] + (c % items_factor) * ITEM_STRIDE,
            )
            copy.to_csv(out, header=False, index=False)
    shift = lambda ids, j: (ids.astype(int) + j * ITEM_STRIDE).astype(str)  # noqa: E731
    pd.concat([movies.assign(movieId=shift(movies["movieId"], j)) for j in range(items_factor)]).to_csv(
        dest / "movies.csv", index=False
    )
    pd.concat([tags.assign(movieId=shift(tags["movieId"], j)) for j in range(items_factor)]).to_csv(
        dest / "tags.csv", index=False
    )
    return len(ratings) * factor


def run_factor(factor: int, items_factor: int, max_epochs: int, work: Path, reuse: bool = False) -> dict:
    data = work / f"ml-x{factor}"
    figures = work / f"x{factor}.json"
    if reuse and figures.exists():  # re-render an earlier run's figures
        return {"events": len(pd.read_csv(data / "ratings.csv", usecols=[0])), **json.loads(figures.read_text())}
    events = tiled_release(data, factor, items_factor)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")},
        "RECSYS_MOVIELENS_PATH": str(data),
        "RECSYS_MAX_EPOCHS": str(max_epochs),
    }
    command = [sys.executable, str(HERE / "pipeline.py"), "--section", "demo", "--home", str(work / f"home-x{factor}")]
    command += ["--results", "", "--json", str(figures), "--no-posters"]
    print(f"== factor {factor}: {events:,} events -> {' '.join(command)}", flush=True)
    subprocess.run(command, env=env)  # exit 1 when the run stopped early: its figures say so
    return {"events": events, **json.loads(figures.read_text())}


def slope(factors: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) on log(factor); ``nan`` with fewer than two factors."""
    if len(factors) < 2 or min(seconds) <= 0:
        return float("nan")
    return float(np.polyfit(np.log(factors), np.log(seconds), 1)[0])


def epoch_seconds(training: dict) -> float:
    """Training seconds per epoch: early-stopping epochs plus the refit's ``best_epoch + 1`` epochs."""
    epochs = int(training.get("epochs_trained") or 0)
    if training.get("refit") and training.get("best_epoch") is not None:
        epochs += int(training["best_epoch"]) + 1
    return float(training["train_seconds"]) / max(epochs, 1)


def table(results: dict[int, dict]) -> list[str]:
    factors = sorted(results)
    steps = list(results[factors[0]]["steps"])
    head = "| step | " + " | ".join(f"x{f} s | x{f} rows/s | x{f} peak MiB" for f in factors) + " | growth exponent |"
    lines = [head, "|---" * (2 + 3 * len(factors)) + "|"]
    for step in steps:
        cells, walls = [], []
        for f in factors:
            fig = results[f]["steps"].get(step, {})
            seconds, rows = fig.get("seconds", float("nan")), results[f]["rows"].get(step)
            walls.append(seconds)
            rate = f"{rows / seconds:,.0f}" if rows and seconds > 0 else ""
            cells += [f"{seconds:.1f}", rate, f"{fig.get('peak_rss_mib', float('nan')):.0f}"]
        lines.append(f"| {step} | " + " | ".join(cells) + f" | {slope(factors, walls):.2f} |")
    per_epoch = [epoch_seconds(results[f]["training"]) for f in factors]
    lines.append(
        "| training s per epoch | "
        + "".join(f"{s:.1f} |  |  | " for s in per_epoch)
        + f"{slope(factors, per_epoch):.2f} |"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--factor", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--items-factor", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--results", help="write the Markdown table here (e.g. benchmarks/results/scale.md)")
    parser.add_argument("--work", help="keep the releases and homes here (default: a temporary folder, removed)")
    parser.add_argument("--reuse", action="store_true", help="with --work: reuse the figures of factors already run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recsys-scale-") as tmp:
        work = Path(args.work or tmp)
        results = {f: run_factor(f, args.items_factor, args.max_epochs, work, args.reuse) for f in sorted(args.factor)}
    lines = table(results)
    facts = [
        f"commit `{commit()}`, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end",
        "events: " + ", ".join(f"x{f} {r['events']:,}" for f, r in sorted(results.items())),
        f"items factor {args.items_factor}; training capped at {args.max_epochs} epoch(s) (RECSYS_MAX_EPOCHS); "
        "no posters",
    ]
    facts += [f"x{f} stopped: {r['stopped']}" for f, r in sorted(results.items()) if r.get("stopped")]
    print("\n".join(["", *facts, "", *lines]))
    if args.results:
        factors = " ".join(str(f) for f in sorted(args.factor))
        Path(args.results).write_text(
            "# Scale: cost per step as the event log grows\n\n"
            f"Command: `.venv/bin/python benchmarks/scale.py --factor {factors} --items-factor {args.items_factor} "
            f"--max-epochs {args.max_epochs}`\n\n"
            + "\n".join(f"- {fact}" for fact in facts)
            + "\n\n"
            + "\n".join(lines)
            + "\n\nrows/s: the rows the step's materialization reports (events for ingestion, interactions for "
            "training, list rows for recommendations) over its wall time. Growth exponent: least-squares slope of "
            "log(wall s) on log(factor); 1.0 is linear.\n"
        )
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
