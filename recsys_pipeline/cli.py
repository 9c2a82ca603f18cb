"""``recsys``: the command line.

- ``recsys demo``: materialize every partition of the configured data (default: bundled MovieLens) and everything
  downstream through Dagster, on the instance under ``$RECSYS_HOME/dagster`` (the runs show in the UI), then print
  a summary.
- ``recsys recommend --user ID [-k N]``: that user's latest recommendations with titles.
- ``recsys ui``: the Dagster UI on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from recsys_pipeline.settings import home_paths


def _quiet_libraries() -> None:
    """Keep the demo's output to its own progress lines: library info logs and deprecation chatter off."""
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import: import first, then override)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "mlflow", "alembic", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")
    warnings.filterwarnings("ignore", message=".*deprecated.*")


def _prepare_home(home: str | None):
    _quiet_libraries()
    paths = home_paths(home).ensure()
    os.environ["RECSYS_HOME"] = str(paths.root)
    os.environ["DAGSTER_HOME"] = str(paths.dagster_home)
    # One planned event per asset for a single-run backfill instead of one per partition (Dagster's switch);
    # the cost: partitions of a failed run are not marked failed, the run is.
    os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return paths


def _run(job, instance, selection, label: str, tags: dict | None = None, run_config: dict | None = None) -> float:
    """Execute ``selection`` of ``job`` in process on ``instance``; raises SystemExit on failure."""
    print(f"==> {label}", flush=True)
    started = time.perf_counter()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    result = job.execute_in_process(
        instance=instance, asset_selection=selection, tags=tags or {}, run_config={**quiet, **(run_config or {})},
        raise_on_error=False,
    )
    seconds = time.perf_counter() - started
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure:
                print(event.step_failure_data.error.to_string(), file=sys.stderr)
        raise SystemExit(f"step failed: {label} (run {result.run_id}); see `recsys ui` for the logs")
    print(f"    done in {seconds:.1f} s (run {result.run_id[:8]})", flush=True)
    return seconds


def _day(text: str | None, flag: str):
    """Parse a YYYY-MM-DD option; None stays None. Raises ValueError naming the flag."""
    from datetime import date

    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{flag} {text!r} is not a YYYY-MM-DD date") from None


def run_demo(home: str | None = None, start: str | None = None, end: str | None = None) -> dict[str, float]:
    """Materialize item_catalog, the partitions ``start..end`` (default: all days of the data) of raw_events and
    interactions as one single-run backfill, then everything downstream, on the Dagster instance under the home.

    Returns wall seconds per step. Raises SystemExit when a step fails.
    """
    paths = _prepare_home(home)
    import dagster as dg

    from recsys_pipeline.definitions import defs
    from recsys_pipeline.resources import source_from_env

    source = source_from_env().build()
    first, last = _day(start, "--start") or source.first_date(), _day(end, "--end") or source.last_date()
    if first > last:
        raise ValueError(f"--start {first} is after --end {last}")
    first, last = first.isoformat(), last.isoformat()
    print(f"recsys demo: home {paths.root}\n    data {first} .. {last} (UTC days)", flush=True)
    instance = dg.DagsterInstance.get()
    job = defs.resolve_job_def("recsys_pipeline_job")
    key = dg.AssetKey
    timings = {}
    timings["item_catalog"] = _run(job, instance, [key("item_catalog")], "item_catalog")
    timings["raw_events + interactions"] = _run(
        job, instance, [key("raw_events"), key("interactions")],
        f"raw_events + interactions: daily partitions {first} .. {last} (one single-run backfill)",
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
    )
    for name in ("text_embeddings", "item_features", "recommender_model", "model_evaluation", "recommendations"):
        timings[name] = _run(job, instance, [key(name)], name)
    return timings


def demo(args: argparse.Namespace) -> int:
    timings = run_demo(args.home, args.start, args.end)
    _summary(home_paths(args.home), timings, args.user)
    return 0


def _summary(paths, timings: dict[str, float], user: str | None) -> None:
    from recsys_pipeline import warehouse
    from recsys_pipeline.runs import metrics_table

    with warehouse.session(paths.warehouse, read_only=True) as con:
        print("\nRows per table:")
        for table in ("raw_events", "interactions", "quarantine", "item_catalog", "text_embeddings",
                      "item_features", "recommendations", "evaluation_ranked_lists"):
            print(f"    {table:<24} {warehouse.row_count(con, table):>10,}")
        print("\nWall time per step (s):")
        for name, seconds in timings.items():
            print(f"    {name:<28} {seconds:8.1f}")
        print(f"    {'total':<28} {sum(timings.values()):8.1f}")
        metrics = con.execute("SELECT protocol, model, metric, value FROM evaluation_metrics").df()
        warm = metrics[(metrics["protocol"] != "item_cold_start")
                       & metrics["metric"].isin(["recall_at_10", "recall_at_20", "ndcg_at_10", "coverage"])]
        cold = metrics[(metrics["protocol"] == "item_cold_start") & metrics["metric"].isin(
            ["cold_candidates_recall_at_20", "cold_candidates_ndcg_at_10", "cold_candidates_random_recall_at_20"])]
        print("\nEvaluation, ranking all unseen items (ours vs. popularity, same split):")
        print(metrics_table(warm))
        print("\nItem cold start: ranking only the held-out items (random = expected Recall@20 of a random order):")
        print(metrics_table(cold))
        if user is None:
            user = con.execute("SELECT min(user_id) FROM recommendations").fetchall()[0][0]
        recs = con.execute(
            "SELECT r.rank, c.title, round(r.score, 3) AS score FROM recommendations r JOIN item_catalog c "
            "USING (item_id) WHERE r.user_id = ? ORDER BY r.rank LIMIT 10", [user]
        ).df()
        liked = con.execute(
            "SELECT c.title, max(i.value) AS value FROM interactions i JOIN item_catalog c USING (item_id) "
            "WHERE i.user_id = ? GROUP BY c.title ORDER BY value DESC, c.title LIMIT 10", [user]
        ).df()
    print(f"\nUser {user}: top-10 recommendations")
    print(recs.to_markdown(index=False))
    print(f"\nUser {user}: titles with their highest interaction value (the rating, for MovieLens)")
    print(liked.to_markdown(index=False))
    print(f"\nNext: `recsys recommend --user {user}`, `recsys ui` (Dagster), "
          f"`.venv/bin/mlflow ui --backend-store-uri {paths.mlflow_tracking_uri}` (MLflow)")


def recommend(args: argparse.Namespace) -> int:
    from recsys_pipeline import warehouse

    paths = home_paths(args.home)
    if not paths.warehouse.exists():
        print(f"no warehouse at {paths.warehouse}: run `recsys demo` first", file=sys.stderr)
        return 2
    with warehouse.session(paths.warehouse, read_only=True) as con:
        if not warehouse.table_exists(con, "recommendations"):
            print("no recommendations yet: materialize `recommendations` (or run `recsys demo`)", file=sys.stderr)
            return 2
        recs = con.execute(
            "SELECT r.rank, r.item_id, c.title, round(r.score, 4) AS score, r.model_run_id, "
            "CAST(r.produced_on AS DATE) AS produced_on "
            "FROM recommendations r LEFT JOIN item_catalog c USING (item_id) WHERE r.user_id = ? "
            "ORDER BY r.rank LIMIT ?", [args.user, args.k]
        ).df()
    if recs.empty:
        print(f"unknown user {args.user!r}: no recommendations for this user_id", file=sys.stderr)
        return 1
    print(f"Top {len(recs)} for user {args.user} (model run {recs['model_run_id'].iloc[0]}, "
          f"produced {recs['produced_on'].iloc[0]}):")
    print(recs[["rank", "item_id", "title", "score"]].to_markdown(index=False))
    return 0


def export(args: argparse.Namespace) -> int:
    """Write the training inputs for ``python -m recsys_pipeline.model.train`` (e.g. under torchrun)."""
    from recsys_pipeline import warehouse
    from recsys_pipeline.features import load_item_content

    paths = home_paths(args.home)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with warehouse.session(paths.warehouse, read_only=True) as con:
        data = warehouse.read_interactions(con)
        content = load_item_content(con)
    data.to_parquet(out / "interactions.parquet", index=False)
    content.to_npz(out / "item_content.npz")
    print(f"wrote {len(data):,} interactions and {len(content.item_ids):,} items to {out}\n"
          f"train: torchrun --nproc-per-node 2 -m recsys_pipeline.model.train --interactions "
          f"{out / 'interactions.parquet'} --content {out / 'item_content.npz'} --out {out / 'model'} "
          f"--strategy ddp --devices 2")
    return 0


def ui(args: argparse.Namespace) -> int:
    paths = _prepare_home(args.home)
    cmd = [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(args.port),
           "-m", "recsys_pipeline.definitions"]
    print(f"Dagster UI on http://127.0.0.1:{args.port} (instance {paths.dagster_home})", flush=True)
    return subprocess.call(cmd, cwd=Path.cwd())


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", help="project home (default: $RECSYS_HOME or ./.recsys); goes before the command")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="materialize every partition and everything downstream, print a summary")
    p.add_argument("--start", help="first UTC day (default: first day of the data)")
    p.add_argument("--end", help="last UTC day (default: last day of the data)")
    p.add_argument("--user", help="user for the printed example (default: the first)")
    p.set_defaults(func=demo)
    p = sub.add_parser("recommend", help="print a user's latest recommendations")
    p.add_argument("--user", required=True, help="user_id as in the interactions table")
    p.add_argument("-k", type=_positive_int, default=10, help="list length (1..the published K, default 10)")
    p.set_defaults(func=recommend)
    p = sub.add_parser("export", help="write interactions.parquet + item_content.npz for standalone training")
    p.add_argument("--out", required=True)
    p.set_defaults(func=export)
    p = sub.add_parser("ui", help="start the Dagster UI on 127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=ui)
    args = parser.parse_args(argv)
    from recsys_pipeline.sources import SourceError

    try:
        return args.func(args)
    except (SourceError, ValueError, LookupError) as exc:  # configuration and data errors: a message, not a traceback
        print(f"recsys {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
