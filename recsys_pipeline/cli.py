"""``recsys``: the command line.

- ``recsys demo``: materialize every partition of the configured data (default: bundled MovieLens) and everything
  downstream through Dagster, on the instance under ``$RECSYS_HOME/dagster`` (the runs show in the UI), then print
  a summary.
- ``recsys recommend --user ID [-k N]``: that user's latest recommendations with titles.
- ``recsys serve [--host 127.0.0.1] [--port 8000]``: ``GET /recommendations/{user_id}?k=10`` over the published
  recommendations (``recsys_pipeline/serve.py``).
- ``recsys backfill --start D --end D [--downstream]``: re-ingest the UTC days ``start..end`` (inclusive) of
  raw_events and interactions (and the catalog) as one run, optionally with everything downstream in that run.
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
        failed_checks = [e for e in result.get_asset_check_evaluations() if not e.passed and e.blocking]
        if failed_checks:  # e.g. the model_evaluation gate: what follows (publishing) must not run
            reasons = "; ".join(f"{e.asset_check_key.name}: {e.description or 'failed'}" for e in failed_checks)
            raise SystemExit(f"asset check failed after {label} ({reasons}); stopped here, later steps such as "
                             f"recommendations were not run, nothing new was published (run {result.run_id})")
        raise SystemExit(f"step failed: {label} (run {result.run_id}); see `recsys ui` for the logs")
    print(f"    done in {seconds:.1f} s (run {result.run_id[:8]})", flush=True)
    return seconds


def _day(text: str | None, flag: str):
    """Parse a YYYY-MM-DD option (strictly: not ISO week or basic forms); None stays None. Raises ValueError naming
    the flag."""
    from datetime import datetime

    if text is None:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
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
    from recsys_pipeline.dagster_pools import free_slots_of_dead_steps

    for run_id in free_slots_of_dead_steps(instance):  # else a killed earlier run blocks every DuckDB step
        print(f"    run {run_id[:8]} was killed mid-step: marked failed, its duckdb pool slot freed", flush=True)
    job = defs.resolve_job_def("recsys_pipeline_job")
    key = dg.AssetKey
    downstream = ("text_embeddings", "image_embeddings", "audio_embeddings", "item_features", "recommender_model",
                  "model_evaluation", "recommendations")
    timings = {}
    with _steps(2 + len(downstream), "recsys demo") as bar:
        timings["item_catalog"] = _run(job, instance, [key("item_catalog")], "item_catalog")
        bar.update()
        timings["raw_events + interactions"] = _run_range(job, instance, first, last)
        bar.update()
        for name in downstream:
            timings[name] = _run(job, instance, [key(name)], name)
            bar.update()
    return timings


def _steps(total: int, desc: str):
    """A progress bar over pipeline steps on a terminal; nothing when output goes to a file or pipe."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=None, file=sys.stderr, leave=False)


def _run_range(job, instance, first: str, last: str, selection=None) -> float:
    """One run over the daily partitions ``first..last`` (inclusive) of raw_events and interactions, plus the
    unpartitioned assets in ``selection`` (asset keys); the single-run backfill policy makes the range one run."""
    import dagster as dg

    ingestion = [dg.AssetKey("raw_events"), dg.AssetKey("interactions")]
    extra = [k for k in (selection or []) if k not in ingestion]
    label = f"raw_events + interactions: daily partitions {first} .. {last} (one single-run backfill)"
    if extra:
        label += " with " + ", ".join(k.to_user_string() for k in extra)
    return _run(job, instance, ingestion + extra, label,
                tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last})


def backfill(args: argparse.Namespace) -> int:
    """Re-ingest ``--start..--end`` (inclusive UTC days) and the catalog as one run, optionally with everything
    downstream. Raises ValueError for a bad date, a reversed range or a day outside the partitions."""
    first, last = _day(args.start, "--start"), _day(args.end, "--end")
    if first > last:
        raise ValueError(f"--start {first} is after --end {last}")
    paths = _prepare_home(args.home)
    import dagster as dg

    from recsys_pipeline.assets.partitions import daily_partitions
    from recsys_pipeline.definitions import defs

    for flag, day in (("--start", first), ("--end", last)):
        if not daily_partitions.has_partition_key(day.isoformat()):
            raise ValueError(f"{flag} {day} is not a daily partition: they run from "
                             f"{daily_partitions.start.date()} to yesterday (UTC)")
    from recsys_pipeline.dagster_pools import free_slots_of_dead_steps

    instance = dg.DagsterInstance.get()
    for run_id in free_slots_of_dead_steps(instance):  # else a killed earlier run blocks every DuckDB step
        print(f"    run {run_id[:8]} was killed mid-step: marked failed, its duckdb pool slot freed", flush=True)
    job = defs.resolve_job_def("recsys_pipeline_job")
    # item_catalog too: interactions quarantines events of items the catalog does not know yet
    selection = list(job.asset_layer.executable_asset_keys) if args.downstream else [dg.AssetKey("item_catalog")]
    print(f"recsys backfill: home {paths.root}", flush=True)
    _run_range(job, instance, first.isoformat(), last.isoformat(), selection)
    return 0


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
                      "image_embeddings", "audio_embeddings", "media_failures", "item_features", "recommendations",
                      "evaluation_ranked_lists"):
            print(f"    {table:<24} {warehouse.row_count(con, table):>10,}")
        if warehouse.table_exists(con, "media_failures"):
            missing = con.execute("SELECT modality, reason, count(*) AS items FROM media_failures GROUP BY ALL "
                                  "ORDER BY modality, items DESC").df()
            print("\nItems without an image / audio vector, by reason (listed in media_failures):")
            print(missing.to_markdown(index=False) if len(missing) else "    none")
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
        if warehouse.table_exists(con, "evaluation_ablation"):
            from recsys_pipeline.runs import ablation_table

            print("\nModality ablation (same splits; with/without_image = test items with/without a poster):")
            print(ablation_table(con.execute("SELECT * FROM evaluation_ablation").df()))
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
    """A user's list from the published snapshot, not the DuckDB file: it answers while a run holds the lock.

    Exit codes: 0 printed, 1 unknown user, 2 nothing published yet.
    """
    from recsys_pipeline.snapshot import ITEMS, RECOMMENDATIONS, read_snapshot, snapshot_path

    paths = home_paths(args.home)
    try:
        recs = read_snapshot(paths, RECOMMENDATIONS)
    except FileNotFoundError:
        print(f"nothing published at {snapshot_path(paths)}: materialize `recommendations` or run `recsys demo` "
              "first", file=sys.stderr)
        return 2
    recs = recs[recs["user_id"].astype(str) == args.user].sort_values("rank").head(args.k)
    if recs.empty:
        print(f"unknown user {args.user!r}: no recommendations for this user_id", file=sys.stderr)
        return 1
    try:  # published before the list, so it names every listed item
        titles = read_snapshot(paths, ITEMS)[["item_id", "title"]]
    except FileNotFoundError:
        titles = recs[["item_id"]].assign(title=None)
    recs = recs.merge(titles, on="item_id", how="left").assign(score=lambda f: f["score"].round(4))
    version = f"champion v{recs['model_version'].iloc[0]}, " if "model_version" in recs.columns else ""
    print(f"Top {len(recs)} for user {args.user} ({version}model run {recs['model_run_id'].iloc[0]}, "
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


def serve(args: argparse.Namespace) -> int:
    """HTTP endpoint over the published snapshots (``recsys_pipeline.serve``); runs until interrupted."""
    from recsys_pipeline.serve import serve as run_server
    from recsys_pipeline.snapshot import snapshot_path

    paths = home_paths(args.home)
    if not snapshot_path(paths).exists():
        print(f"note: nothing published yet at {snapshot_path(paths)}; /recommendations answers 503 until "
              "`recommendations` is materialized", file=sys.stderr)
    print(f"recsys serve: http://{args.host}:{args.port}/recommendations/<user_id>?k=10 (home {paths.root})",
          flush=True)
    run_server(paths, args.host, args.port)
    return 0


def ui(args: argparse.Namespace) -> int:
    paths = _prepare_home(args.home)
    cmd = [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(args.port),
           "-m", "recsys_pipeline.definitions"]
    print(f"Dagster UI on http://127.0.0.1:{args.port} (instance {paths.dagster_home})", flush=True)
    return subprocess.call(cmd, cwd=Path.cwd())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1..65535, got {value}")
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
    p = sub.add_parser("backfill", help="re-ingest a range of UTC days as one run (a single-run backfill)")
    p.add_argument("--start", required=True, help="first UTC day, YYYY-MM-DD")
    p.add_argument("--end", required=True, help="last UTC day, YYYY-MM-DD (inclusive)")
    p.add_argument("--downstream", action="store_true",
                   help="also refresh catalog, embeddings, model, evaluation and recommendations in the same run")
    p.set_defaults(func=backfill)
    p = sub.add_parser("recommend", help="print a user's latest recommendations")
    p.add_argument("--user", required=True, help="user_id as in the interactions table")
    p.add_argument("-k", type=_positive_int, default=10, help="list length (1..the published K, default 10)")
    p.set_defaults(func=recommend)
    p = sub.add_parser("export", help="write interactions.parquet + item_content.npz for standalone training")
    p.add_argument("--out", required=True)
    p.set_defaults(func=export)
    p = sub.add_parser("serve", help="HTTP endpoint GET /recommendations/{user_id}?k=10 over the published table")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000)
    p.set_defaults(func=serve)
    p = sub.add_parser("ui", help="start the Dagster UI on 127.0.0.1")
    p.add_argument("--port", type=_port, default=3000)
    p.set_defaults(func=ui)
    args = parser.parse_args(argv)
    from recsys_pipeline.sources import SourceError
    from recsys_pipeline.warehouse import WarehouseLockedError

    try:
        return args.func(args)
    except (SourceError, ValueError, LookupError, WarehouseLockedError) as exc:  # configuration and data errors: a message, not a traceback
        print(f"recsys {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
