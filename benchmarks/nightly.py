"""The nightly path, simulated: the last ``--nights`` days of the bundled data, one partition per night.

Run: ``.venv/bin/python benchmarks/nightly.py [--nights 7] [--home DIR] [--results benchmarks/results/nightly.md]``.

First the whole graph runs on every day before the first simulated night (``recsys demo --end``), which makes the
first champion. Then, for each night's day D (oldest first), what ``nightly_retrain`` runs for yesterday's
partition: ``recsys backfill --start D --end D --downstream`` (the day's ``raw_events`` and ``interactions``, the
catalog, the embeddings (only new or changed items are encoded), a full retrain, the evaluation, the gate,
``recommendations``), as one Dagster run. Per night it prints the wall time per step (from the run's STEP_START /
STEP_SUCCESS events), the gate's decision, and the published lists' NDCG@10 / Recall@20 on day D+1's events (the
users with a published list; the popularity list over the interactions up to D, seen items excluded, on the same
users for reference). The last night has no next day. Posters are used as ``scripts/demo.sh`` uses them.

On the bundled data the last days hold few events (2018-09-18..24: 11, 1, 4, 0, 7, 2, 3 ratings): the next-day
figures are a handful of users each, reported with their counts; the wall times are the point.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from pipeline import commit, step_windows  # noqa: E402  (this folder is not a package)


def next_day_quality(paths, day: date) -> dict:
    """NDCG@10 / Recall@20 of the published lists and of popularity (interactions up to ``day``) on ``day + 1``."""
    from recsys_pipeline.data import warehouse
    from recsys_pipeline.data.sources import MovieLensSource
    from recsys_pipeline.evaluation.metrics import ranking_metrics
    from recsys_pipeline.models.popularity import PopularityRecommender
    from recsys_pipeline.serving.snapshot import read_snapshot

    start = datetime.combine(day + timedelta(days=1), datetime.min.time())
    truth = MovieLensSource().read_events(start, start + timedelta(days=1))[["user_id", "item_id"]].astype(str)
    published = read_snapshot(paths)
    listed = truth[truth["user_id"].isin(set(published["user_id"]))]
    out = {"next_day_events": len(truth), "users_with_list": int(listed["user_id"].nunique())}
    if listed.empty:
        return out
    from recsys_pipeline.content.features import load_item_features

    with warehouse.session(paths.warehouse, read_only=True) as con:
        seen = warehouse.read_interactions(con)
        features = load_item_features(con)
    popularity = PopularityRecommender().fit(seen, features)
    users = sorted(listed["user_id"].unique())
    k = int(published["rank"].max())
    pop_lists = popularity.recommend(users, k=k, exclude_seen=True, exclude=seen[["user_id", "item_id"]].astype(str))
    n_catalog = len(features.item_ids)
    ours = ranking_metrics(published[published["user_id"].isin(users)], listed, n_catalog, (10, 20))
    pop = ranking_metrics(pop_lists, listed, n_catalog, (10, 20))
    return {
        **out,
        "ndcg_at_10": ours["ndcg_at_10"],
        "recall_at_20": ours["recall_at_20"],
        "popularity_ndcg_at_10": pop["ndcg_at_10"],
        "popularity_recall_at_20": pop["recall_at_20"],
    }


def latest_metadata(instance, asset: str) -> dict:
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    mat = event.asset_materialization if event else None
    return {k: v.value for k, v in (mat.metadata if mat else {}).items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nights", type=int, default=7)
    parser.add_argument("--home")
    parser.add_argument("--results", help="write the Markdown table here (e.g. benchmarks/results/nightly.md)")
    parser.add_argument(
        "--warm-start",
        action="store_true",
        help="nights retrain from the champion's weights (RECSYS_WARM_START=1) instead of a full retrain",
    )
    args = parser.parse_args()
    posters = HERE.parents[1] / "shared" / "data" / "movielens-posters"
    if not os.environ.get("RECSYS_IMAGE_ROOT") and posters.is_dir():
        os.environ["RECSYS_IMAGE_ROOT"] = str(posters)
    from recsys_pipeline.cli import main as recsys
    from recsys_pipeline.settings import BUNDLED_LAST_DAY, HomePaths

    home = args.home or tempfile.mkdtemp(prefix="recsys-nightly-")
    first_night = BUNDLED_LAST_DAY - timedelta(days=args.nights - 1)
    started = time.perf_counter()
    recsys(["--home", home, "demo", "--end", str(first_night - timedelta(days=1))])
    initial = time.perf_counter() - started

    import dagster as dg

    paths = HomePaths.at(home)
    if args.warm_start:  # the initial run has no champion to start from: it trains in full either way
        os.environ["RECSYS_WARM_START"] = "1"
    mode = "warm-started retrain (RECSYS_WARM_START=1)" if args.warm_start else "full retrain"
    rows = []
    for n in range(args.nights):
        day = first_night + timedelta(days=n)
        load = os.getloadavg()[0]
        started = time.perf_counter()
        try:
            code = recsys(["--home", home, "backfill", "--start", str(day), "--end", str(day), "--downstream"])
        except SystemExit as exc:  # the popularity floor stopped the night: nothing new published; go on
            code = str(exc)
        wall = time.perf_counter() - started
        instance = dg.DagsterInstance.get()
        [run] = instance.get_runs(limit=1)
        steps = {name: end - start for name, (start, end) in step_windows(instance, run.run_id).items()}
        gate = latest_metadata(instance, "model_evaluation").get("gate.decision", "?")
        quality = next_day_quality(paths, day) if day < BUNDLED_LAST_DAY else {}
        rows.append({"day": str(day), "exit": code, "wall": wall, "load": load, "gate": gate, **steps, **quality})
        print(f"night {day}: {wall:.1f} s, gate {gate}, {quality}", flush=True)

    def cell(row, key, fmt="{:.1f}"):
        value = row.get(key)
        return fmt.format(value) if isinstance(value, (int, float)) else ""

    head = (
        "| night (day D) | wall s | ingest s | embeddings s | training s | evaluation s | publish s | gate | "
        "D+1 events / users | NDCG@10 | popularity NDCG@10 | Recall@20 | popularity Recall@20 | load |"
    )
    lines = [head, "|---" * 14 + "|"]
    for r in rows:
        ingest = sum(r.get(k, 0) for k in ("item_catalog", "raw_events", "interactions"))
        embed = sum(r.get(k, 0) for k in ("text_embeddings", "image_embeddings", "audio_embeddings", "item_features"))
        events = f"{r['next_day_events']} / {r['users_with_list']}" if "next_day_events" in r else ""
        lines.append(
            f"| {r['day']} | {r['wall']:.1f} | {ingest:.1f} | {embed:.1f} | {cell(r, 'recommender_model')} | "
            f"{cell(r, 'model_evaluation')} | {cell(r, 'recommendations')} | {r['gate']} | {events} | "
            f"{cell(r, 'ndcg_at_10', '{:.4f}')} | {cell(r, 'popularity_ndcg_at_10', '{:.4f}')} | "
            f"{cell(r, 'recall_at_20', '{:.4f}')} | {cell(r, 'popularity_recall_at_20', '{:.4f}')} | "
            f"{r['load']:.2f} |"
        )
    facts = [
        f"commit `{commit()}`, {os.cpu_count()} cores; every night: {mode}",
        f"initial run (every day before {first_night}): {initial:.1f} s",
        f"images: {os.environ.get('RECSYS_IMAGE_ROOT') or 'none'}",
    ]
    print("\n".join(["", *facts, "", *lines]))
    if args.results:
        Path(args.results).write_text(
            "# Nightly path, simulated\n\n"
            f"Command: `.venv/bin/python benchmarks/nightly.py --nights {args.nights}"
            f"{' --warm-start' if args.warm_start else ''}`\n\n"
            + "\n".join(f"- {fact}" for fact in facts)
            + "\n\n"
            + "\n".join(lines)
            + "\n\nwall s: the whole `recsys backfill --downstream` command for the day; the step columns add up "
            "the steps' own STEP_START..STEP_SUCCESS windows. load: 1-minute load average when the night started.\n"
        )
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
