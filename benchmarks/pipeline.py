"""Benchmark the pipeline: the full demo, and the hot paths one by one. Prints its figures; asserts nothing.

Usage: ``.venv/bin/python benchmarks/pipeline.py [--section demo|events|text|scoring|training|all] [--threads N]
[--n-texts N] [--partitions N] [--home DIR] [--start YYYY-MM-DD --end YYYY-MM-DD]``

* ``demo``: the full demo (fresh temporary home by default), as ``recsys demo`` runs it (two in-process Dagster
  runs: ingestion of every day, then content and the model group for the last day): wall time and peak RSS per step
  and for the whole demo, text items/s, training samples/s; written to
  ``--results`` (default ``benchmarks/results/pipeline.md``) with the commit, cores and load average. Peak RSS of
  a step is the highest resident set size of this process and its children (the evaluation's fit processes)
  sampled every 20 ms (``/proc``, Linux) between its STEP_START and STEP_SUCCESS events. Posters are used as
  ``scripts/demo.sh`` uses them (``RECSYS_IMAGE_ROOT``, else ``../shared/data/movielens-posters`` when present).
* ``events``: Dagster's bookkeeping alone: one single-run range of ``--partitions`` daily partitions of two empty
  assets, on Dagster's default SQLite event log and on the home's ``BatchedSqliteEventLogStorage``: seconds and
  events/s (the cost ingestion pays per partition, whatever the rows).
* ``text``: items/s of the project's ``TextEncoder`` (length-sorted batches, dynamic padding, ``--threads``) vs
  ``sentence-transformers``' ``encode`` on the same catalog texts and model, same thread count, in the same run,
  plus the min cosine between the two embeddings of each text.
* ``scoring``: users/s of ``TrainedRecommender.recommend`` (top-20, seen items masked) for every user x every
  catalog item of ml-latest-small (weights untrained: speed does not depend on their values).
* ``training``: ``train_recommender`` with the default ``ModelConfig`` on the warm train split of
  ml-latest-small: samples/s, epochs trained and the early-stopping (best) epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "pipeline.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home")
    parser.add_argument("--start")
    parser.add_argument("--end")
    parser.add_argument("--section", default="demo", choices=["demo", "events", "text", "scoring", "training", "all"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for text/scoring/training sections")
    parser.add_argument("--n-texts", type=int, default=None, help="encode only the first N catalog texts")
    parser.add_argument("--partitions", type=int, default=8215, help="daily partitions for --section events")
    parser.add_argument("--results", default=str(RESULTS), help="where --section demo writes its table ('' = nowhere)")
    parser.add_argument("--no-posters", action="store_true", help="--section demo: no item images")
    parser.add_argument("--json", help="--section demo: also write the figures as JSON here (benchmarks/scale.py)")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}   load average: {os.getloadavg()}   threads: {args.threads}", flush=True)
    if args.section in ("events", "all"):
        bench_events(args.partitions)
    if args.section in ("text", "all"):
        bench_text(args.threads, args.n_texts)
    if args.section in ("scoring", "all"):
        bench_scoring(args.threads)
    if args.section in ("training", "all"):
        bench_training(args.threads)
    if args.section not in ("demo", "all"):
        return 0
    posters = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-posters"
    if args.no_posters:
        os.environ.pop("RECSYS_IMAGE_ROOT", None)
    elif not os.environ.get("RECSYS_IMAGE_ROOT") and posters.is_dir():  # as scripts/demo.sh does
        os.environ["RECSYS_IMAGE_ROOT"] = str(posters)
    print(f"images: {os.environ.get('RECSYS_IMAGE_ROOT') or 'none (no RECSYS_IMAGE_ROOT)'}", flush=True)
    load_before = os.getloadavg()
    home = args.home or tempfile.mkdtemp(prefix="recsys-bench-")
    from recsys_pipeline.cli import run_demo

    sampler = RssSampler()
    sampler.start()
    started = time.perf_counter()
    stopped = None
    try:
        run_demo(home, args.start, args.end)
    except SystemExit as exc:  # e.g. the popularity gate stopped the run: report the steps that ran
        stopped = str(exc)
    total = time.perf_counter() - started
    sampler.stop()

    import dagster as dg

    instance = dg.DagsterInstance.get()
    runs = list(reversed(instance.get_runs(limit=2)))  # the demo's two runs, oldest first: ingestion, then the rest
    steps = {name: window for run in runs for name, window in step_windows(instance, run.run_id).items()}

    def meta(asset: str) -> dict:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        mat = event.asset_materialization if event else None
        return {k: v.value for k, v in (mat.metadata if mat else {}).items()}

    text, model = meta("text_embeddings"), meta("recommender_model")
    rows = [(name, end - start, sampler.peak(start, end)) for name, (start, end) in steps.items()]
    rows.append(("whole demo (both runs)", total, sampler.peak()))
    lines = [
        "| step | wall s | peak RSS MiB |",
        "|---|---|---|",
        *(f"| {name} | {seconds:.1f} | {peak:.0f} |" for name, seconds, peak in rows),
    ]
    facts = [
        f"commit `{commit()}`, {os.cpu_count()} cores, load average before {load_before[0]:.2f} / {load_before[1]:.2f}"
        f" / {load_before[2]:.2f} (1/5/15 min), after {os.getloadavg()[0]:.2f}; python {sys.version.split()[0]}",
        f"text: {text.get('encoded')} items encoded at {_num(text.get('items_per_second'))} items/s; training: "
        f"{_num(model.get('samples_per_second'))} samples/s, {model.get('epochs_trained')} epochs"
        f"{' before early stopping (then the refit)' if model.get('refit') else ' on every interaction'}, "
        f"{_num(model.get('train_seconds'))} s",
    ]
    if stopped:
        facts.append(f"the run stopped: {stopped}")
    print("\n== benchmarks/pipeline.py --section demo ==")
    print("\n".join([*facts, "", *lines]))
    if args.json:
        figures = {
            "steps": {name: {"seconds": s, "peak_rss_mib": p} for name, s, p in rows},
            "rows": {k: v for run in runs for k, v in _run_rows(instance, run.run_id, meta, steps).items() if v},
            "training": _training_figures(model),
            "stopped": stopped,
        }
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    if args.results:
        command = "`.venv/bin/python benchmarks/pipeline.py --section demo" + (
            f" --start {args.start} --end {args.end}`" if args.start else "`"
        )
        Path(args.results).write_text(
            "# Pipeline wall time and memory per step\n\n"
            f"Command: {command} (a fresh home; the two in-process Dagster runs of `recsys demo`: ingestion of "
            "every day, then content and the model group for the last day).\n\n"
            + "\n".join(f"- {fact}" for fact in facts)
            + "\n\n"
            + "\n".join(lines)
            + "\n\nThe whole demo's wall time includes what runs outside the steps (runs' start, the code location, "
            "Dagster's bookkeeping between steps). Peak RSS is the process's and its children's together, "
            "sampled every 20 ms.\n"
        )
        print(f"wrote {args.results}")
    return 1 if stopped else 0


def _run_rows(instance, run_id: str, meta, steps) -> dict:
    """Per step, the rows its materializations in the run report: the sum of each day's
    ``dagster/partition_row_count`` (ingestion: every partition's materialization carries its own day's), else
    the table's ``dagster/row_count``, else the interactions it trained on (``recommender_model`` writes no table);
    ``None`` when it reports none."""
    import dagster as dg

    per_partition: dict[str, int] = {}
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    for record in records:
        mat = record.event_log_entry.asset_materialization
        if mat is not None and "dagster/partition_row_count" in mat.metadata:
            asset = mat.asset_key.to_user_string()
            per_partition[asset] = per_partition.get(asset, 0) + mat.metadata["dagster/partition_row_count"].value
    out = {}
    for asset in steps:
        metadata = meta(asset)
        out[asset] = per_partition.get(asset, metadata.get("dagster/row_count", metadata.get("interactions")))
    return out


def _training_figures(metadata: dict) -> dict:
    """``train_seconds, epochs_trained, samples_per_second`` (headline entries of ``recommender_model``) and
    ``best_epoch, refit`` (rows of its ``training`` table)."""
    out = {k: metadata.get(k) for k in ("train_seconds", "epochs_trained", "samples_per_second")}
    table = metadata.get("training")
    rows = {r.data["what"]: r.data["value"] for r in getattr(table, "records", [])}
    best, refit = rows.get("best epoch (0-based)"), rows.get("refit on every interaction")
    out["best_epoch"] = int(float(best)) if best not in (None, "") else None
    out["refit"] = str(refit) == "True"
    return out


def _num(value) -> str:
    return f"{value:,.0f}" if isinstance(value, (int, float)) else str(value)


class RssSampler(threading.Thread):
    """Samples this process's resident set size (MiB) every ``interval`` seconds, with ``time.perf_counter`` time
    stamps mapped to wall-clock time (the event log's clock)."""

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (unix time, MiB)
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append((time.time(), rss_mib()))
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()

    def peak(self, start: float = float("-inf"), end: float = float("inf")) -> float:
        """Highest sample in ``[start, end]`` (unix seconds); the nearest earlier sample if none falls inside."""
        inside = [mib for t, mib in self.samples if start <= t <= end]
        if inside:
            return max(inside)
        before = [mib for t, mib in self.samples if t < start]
        return before[-1] if before else float("nan")


def _vmrss_kib(pid: int | str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:  # the process ended between listing and reading
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += children
            todo += children
    return out


def rss_mib() -> float:
    """Current VmRSS in MiB of this process plus its descendants (``model_evaluation`` fits its protocols' models
    in spawned processes): ``/proc/<pid>/status`` and ``/proc/<pid>/task/*/children``."""
    if not Path("/proc/self/status").exists():
        return float("nan")
    me = os.getpid()
    return sum(_vmrss_kib(pid) for pid in [me, *_descendants(me)]) / 1024


def step_windows(instance, run_id: str) -> dict[str, tuple[float, float]]:
    """``step_key -> (start, end)`` unix seconds of the run's successful steps, in execution order."""
    starts, windows = {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = entry.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            windows[event.step_key] = (starts.get(event.step_key, entry.timestamp), entry.timestamp)
    return windows


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def _quality():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import quality

    return quality


def bench_events(n_partitions: int) -> None:
    import datetime as dt

    import dagster as dg

    from recsys_pipeline.instance import EVENT_BATCH_SIZE

    start = dt.date(1996, 3, 29)
    parts = dg.DailyPartitionsDefinition(
        start_date=start.isoformat(), end_date=(start + dt.timedelta(days=n_partitions)).isoformat()
    )

    @dg.asset(partitions_def=parts, backfill_policy=dg.BackfillPolicy.single_run())
    def events_a() -> None:
        return None

    @dg.asset(partitions_def=parts, backfill_policy=dg.BackfillPolicy.single_run(), deps=[events_a])
    def events_b() -> None:
        return None

    job = dg.Definitions(assets=[events_a, events_b], jobs=[dg.define_asset_job("events")]).resolve_job_def("events")
    keys = parts.get_partition_keys()
    tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
    storage = "event_log_storage:\n  module: recsys_pipeline.instance\n  class: BatchedSqliteEventLogStorage\n"
    for name, yaml_extra, batch in (("dagster default", "", "0"), ("batched", storage, str(EVENT_BATCH_SIZE))):
        home = tempfile.mkdtemp(prefix="recsys-events-")
        with open(os.path.join(home, "dagster.yaml"), "w") as f:
            f.write("telemetry:\n  enabled: false\n" + yaml_extra)
        os.environ.update(
            DAGSTER_HOME=home, DAGSTER_EVENT_BATCH_SIZE=batch, DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS="1"
        )
        from recsys_pipeline.instance import relax_sqlite_sync

        relax_sqlite_sync()  # as the home's instance does
        with dg.DagsterInstance.get() as instance:
            t0 = time.perf_counter()
            quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # the demo prints no event lines
            assert job.execute_in_process(instance=instance, tags=tags, run_config=quiet).success
            seconds = time.perf_counter() - t0
        n_events = 2 * len(keys)
        print(
            f"events[{name}]: {len(keys)} partitions x 2 assets, {seconds:.1f} s, "
            f"{n_events / seconds:.0f} materializations/s, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )


def bench_text(threads: int, n_texts: int | None) -> None:
    import numpy as np
    import torch

    from recsys_pipeline.content.text import TextEncoder, default_text_model_path

    texts = _quality().load_catalog()["text"].tolist()[:n_texts]
    torch.set_num_threads(threads)
    enc = TextEncoder(num_threads=threads, device="cpu")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(default_text_model_path(), device="cpu")
    enc.encode(texts[:64]), st.encode(texts[:64])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    ours = enc.encode(texts)
    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    ref = st.encode(texts, batch_size=enc.batch_size, normalize_embeddings=True, convert_to_numpy=True)
    t_st, c_st = time.perf_counter() - t0, time.process_time() - c0
    cos = (ours * ref).sum(axis=1)
    print(
        f"text: {len(texts)} texts, batch {enc.batch_size}, max_length {enc.max_length}, load {os.getloadavg()[0]:.1f}"
    )
    print(f"text_items_per_second[TextEncoder] = {len(texts) / t_ours:.1f}   ({t_ours:.1f}s)")
    print(f"text_items_per_second[sentence-transformers encode] = {len(texts) / t_st:.1f}   ({t_st:.1f}s)")
    print(
        f"text_items_per_cpu_second: TextEncoder {len(texts) / c_ours:.1f}   "
        f"sentence-transformers {len(texts) / c_st:.1f}"
    )
    print(f"text_cosine_vs_sentence_transformers: min {float(np.min(cos)):.6f} mean {float(np.mean(cos)):.6f}")


def bench_scoring(threads: int, repeats: int = 5) -> None:
    import torch

    from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
    from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

    q = _quality()
    torch.set_num_threads(threads)
    inter = q.load_interactions()
    catalog = q.load_catalog()
    content = q.build_content(catalog, q.text_vectors(catalog["text"].tolist()))
    users = sorted(inter["user_id"].unique())
    # scoring cost does not depend on how well the weights are trained: one epoch is enough to have a model
    model = TwoTowerRecommender(ModelConfig(max_epochs=1, refit=False), TrainerConfig(num_threads=threads)).fit(
        inter, content
    )
    model.recommend(users[:8], k=20)  # warm-up (item vectors cached after this)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        out = model.recommend(users, k=20)  # seen items (every interaction) excluded
    dt = (time.perf_counter() - t0) / repeats
    cpu = (time.process_time() - c0) / repeats
    print(
        f"scoring: {len(users)} users x {len(content)} items, top-20, {len(inter)} seen pairs masked,"
        f" load {os.getloadavg()[0]:.1f}"
    )
    print(f"scoring_users_per_second = {len(users) / dt:.0f}   ({dt * 1000:.0f} ms per pass, {len(out)} rows)")
    print(f"scoring_users_per_cpu_second = {len(users) / cpu:.0f}   (CPU time: comparable under contention)")


def bench_training(threads: int) -> None:
    from recsys_pipeline.evaluation.protocols import split_user_last_fraction
    from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
    from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

    q = _quality()
    inter = q.load_interactions()
    catalog = q.load_catalog()
    content = q.build_content(catalog, q.text_vectors(catalog["text"].tolist()))
    train = split_user_last_fraction(inter, 0.2, 5).train
    s = TwoTowerRecommender(ModelConfig(), TrainerConfig(num_threads=threads)).fit(train, content).train_stats
    print(f"training: {s['n_train_interactions']} interactions, load {os.getloadavg()[0]:.1f}, config {ModelConfig()}")
    print(
        f"train_samples_per_second = {s['samples_per_second']:.0f}   epochs_trained = {s['epochs_trained']}"
        f"   best_epoch = {s['best_epoch']}   train_seconds = {s['train_seconds']:.1f}"
        f"   best_val_ndcg_at_10 = {s['best_val_ndcg_at_10']:.4f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
