"""The ``recsys`` command line (:data:`COMMANDS` lists the commands; ``recsys --help`` shows them).

- ``recsys demo``: two runs of ``recsys_pipeline_job`` on the configured data (default: bundled MovieLens), on
  the Dagster instance under ``$RECSYS_HOME/dagster`` (the runs show in the UI): ingestion over every daily
  partition as one run, then the content and the model group (encode, train, evaluate, gate, publish) for the last
  day; then a summary.
- ``recsys recommend --user ID [-k N] [--date D] [--explain]``: that user's published recommendations with titles
  (of the current published day, or of day D); ``--explain``: and the user's items that raise each most.
- ``recsys serve [--host 127.0.0.1] [--port 8000]``: ``GET /recommendations/{user_id}?k=10[&date=D]`` over the
  published recommendations (``serving.app``).
- ``recsys backfill --start D --end D [--downstream]``: re-ingest the UTC days ``start..end`` (inclusive) of
  raw_events and interactions (and the catalog) as one run; ``--downstream``: the content as of those days in the
  same run, then the model group as of each day, one run per day.
- ``recsys rollback --date D``: answer from the lists published for day D (a run of ``rollback_recommendations``).
- ``recsys tune [--trials N] [--protocol P] [--k-core N]``: the model's hyperparameter search (a run of
  ``model_tuning_job``); the next training uses its chosen params.
- ``recsys export --out DIR``: the inputs of standalone training.
- ``recsys ui``: the Dagster UI on 127.0.0.1.

``--home`` goes before or after the command."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from recsys_pipeline.settings import HomePaths, get_settings, library_environment

if TYPE_CHECKING:  # pandas is imported where a command needs it: `recsys --help` stays fast
    import pandas as pd

PIPELINE_JOB = "recsys_pipeline_job"
INTERRUPTED = 130  # exit code of a command stopped by SIGINT or SIGTERM: what a shell reports after Ctrl-C


def _quiet_libraries() -> None:
    """Keep the commands' output to their own lines: library info logs and deprecation chatter off."""
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import: import first, then override)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "mlflow", "alembic", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")
    warnings.filterwarnings("ignore", message=".*is currently in preview.*")
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    _mute_mlflow_notices()


def _mute_mlflow_notices() -> None:
    """Keep MLflow's notices off the terminal, its log records on it.

    MLflow prints notices such as "Successfully registered model 'recsys_ranker'." and "Created version '1' of
    model ..." with ``eprint``, which has no level to filter: it writes to the stream that
    ``mlflow.utils.logging_utils.MLFLOW_LOGGING_STREAM`` names at the time of the call. That name is pointed at a
    stream that drops everything; MLflow's log handler keeps the stream it was given at import, so its warnings and
    errors still reach stderr. (``disable_logging()`` would mute those too, and does not last: MLflow's autologging
    setup calls ``enable_logging()`` on its way out.)
    """
    from mlflow.utils import logging_utils

    logging_utils.MLFLOW_LOGGING_STREAM = _Dropped()


class _Dropped:
    """A text stream that writes nothing (``enabled``: what MLflow's enable / disable_logging set on it)."""

    enabled = False

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class _LinesAboveBars:
    """``sys.stdout`` on a terminal: a line printed while a tqdm progress bar is drawn (the text encoder's, on stderr,
    the same terminal) goes above the bar, never glued to its end: the bars are cleared, the line is written, the
    bars are drawn again below it (what ``tqdm.write`` does). Passes text on a line at a time; anything else is the
    wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream
        self._partial = ""

    def write(self, text: str) -> int:
        lines, newline, self._partial = (self._partial + text).rpartition("\n")
        if newline:
            self._emit(lines + newline)
        return len(text)

    def flush(self) -> None:
        if self._partial:  # a line without its end yet (print(..., end="", flush=True)): shown now
            self._emit(self._partial)
            self._partial = ""
        self._stream.flush()

    def _emit(self, text: str) -> None:
        bar_class = getattr(sys.modules.get("tqdm"), "tqdm", None)  # no bar is drawn unless something imported it
        if bar_class is None or not getattr(bar_class, "_instances", None):
            self._stream.write(text)
            return
        with bar_class.get_lock():
            bars = [b for b in bar_class._instances if not b.disable]
            for bar in bars:
                bar.clear(nolock=True)
            self._stream.write(text)
            self._stream.flush()
            for bar in bars:
                bar.refresh(nolock=True)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _paths(home: str | None) -> HomePaths:
    """The home of this command: ``--home``, else ``RECSYS_HOME``, else ``./.recsys`` (nothing is created).

    Raises:
        ValueError: the home exists and is not a folder.
    """
    paths = get_settings(**({"home": Path(home)} if home else {})).paths
    if paths.root.exists() and not paths.root.is_dir():
        raise ValueError(f"the home {paths.root} is a file, not a folder (--home or RECSYS_HOME)")
    return paths


def _prepare_home(home: str | None, in_process: bool = True) -> HomePaths:
    """Create the home and point this process (and the Dagster instance) at it; ``in_process``: this process runs
    the pipeline, so quiet its libraries first."""
    from recsys_pipeline import instance

    if in_process:
        _quiet_libraries()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    paths = _paths(home)
    for folder in (paths.root, paths.dagster_home):
        if folder.exists() and not os.access(folder, os.W_OK):  # else: SQLite's "unable to open database file"
            raise ValueError(
                f"the home {paths.root} is not writable ({folder}: a read-only file system or no permission); "
                "this command records its runs and tables there"
            )
    with _postgres_errors():
        return instance.prepare(paths)


def _definitions():
    from recsys_pipeline.definitions import build_definitions

    return build_definitions()


def _run(
    selection: list[str] | None,
    label: str,
    first: str | None = None,
    last: str | None = None,
    run_config: dict | None = None,
    origin: str = "demo",
    job_name: str = PIPELINE_JOB,
) -> dict[str, float]:
    """Execute ``selection`` (asset names; ``None`` = every asset) of ``job_name`` as ONE run on the home's
    instance, over the daily partitions ``first..last`` when given (``first == last``: that one partition), tagged
    with where it came from (``origin``: ``demo``, ``backfill`` or ``rollback``, run tag ``recsys/origin``). Prints
    a line per step; returns wall seconds per step. Raises SystemExit naming the failed step or blocking check."""
    import dagster as dg

    from recsys_pipeline.assets.metadata import ORIGIN_TAG, ORIGINS
    from recsys_pipeline.instance import HOST_TAG, free_slots_of_dead_steps, kill_orphaned_mlflow_runs

    if origin not in ORIGINS:
        raise ValueError(f"origin must be one of {ORIGINS}, got {origin!r}")
    _refuse_missing_paths()
    instance = _instance()
    for run_id in free_slots_of_dead_steps(instance):  # else a killed earlier run blocks every DuckDB step
        print(f"    run {run_id[:8]} was killed mid-step: marked failed, its duckdb pool slot freed", flush=True)
    for run_id in kill_orphaned_mlflow_runs(instance):
        print(f"    MLflow run {run_id[:8]} of a dead Dagster run marked KILLED", flush=True)
    job = _definitions().resolve_job_def(job_name)
    tags = {ORIGIN_TAG: origin, HOST_TAG: socket.gethostname()}  # this process runs it (dead-run judgement)
    partition = None
    if first is not None and first == last:
        partition = first  # one day: the run's partition (tag dagster/partition), as the UI and schedule launch it
    elif first is not None:
        tags |= {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
    print(f"==> {label}", flush=True)
    result = job.execute_in_process(
        instance=instance,
        asset_selection=None if selection is None else [dg.AssetKey(k) for k in selection],
        partition_key=partition,
        tags=tags,
        run_config={"loggers": {"step_lines": {}}, **(run_config or {})},
        raise_on_error=False,
    )
    seconds = {
        e.step_key: e.event_specific_data.duration_ms / 1000
        for e in result.all_events
        if e.event_type_value == "STEP_SUCCESS"
    }
    if not result.success:
        if _interrupted(result):  # Dagster caught the SIGINT / SIGTERM and failed the run: stop here, quietly
            raise KeyboardInterrupt
        failed = [e for e in result.all_events if e.is_step_failure]
        for event in failed:
            print(f"{event.step_key}: {_error_chain(event.step_failure_data.error)}", file=sys.stderr)
        failed_checks = [e for e in result.get_asset_check_evaluations() if not e.passed and e.blocking]
        if failed_checks:  # e.g. the model_evaluation gate: what follows (publishing) must not run
            reasons = "; ".join(f"{e.asset_check_key.name}: {e.description or 'failed'}" for e in failed_checks)
            raise SystemExit(
                f"asset check failed ({reasons}); stopped there, later steps such as recommendations "
                f"were not run, nothing new was published (run {result.run_id})"
            )
        steps = ", ".join(e.step_key for e in failed) or label
        raise SystemExit(f"step failed: {steps} (run {result.run_id}); `recsys ui` shows its logs and stack traces")
    print(f"    run {result.run_id[:8]} succeeded", flush=True)
    return seconds


def _instance():
    """The home's Dagster instance (``DAGSTER_HOME``, which :func:`_prepare_home` sets) for a run in this process,
    with Dagster's capture of the run's stdout and stderr off.

    That capture points both at files and echoes the files to the terminal through ``tail -F`` helper processes:
    a Ctrl-C reaches the helpers too (their tracebacks on the terminal), the echo may drop the last lines and mixes
    up the order of stdout and stderr, and a progress bar sees a file, not the terminal. Off, the run's output goes
    straight to the terminal; its events (errors with their tracebacks included) are stored as always, and the UI's
    raw stdout / stderr of a CLI run is empty.
    """
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef  # no public API takes overrides for the home's instance

    noop = {"module": "dagster._core.storage.noop_compute_log_manager", "class": "NoOpComputeLogManager"}
    with _postgres_errors():
        return dg.DagsterInstance.from_ref(
            InstanceRef.from_dir(os.environ["DAGSTER_HOME"], overrides={"compute_logs": noop})
        )


@contextlib.contextmanager
def _postgres_errors():
    """The postgres profile's server unreachable: exit with one line naming ``RECSYS_POSTGRES_URL`` (password
    masked), not a page of traceback."""
    try:  # the postgres profile's storage (an optional extra)
        from dagster_postgres.utils import DagsterPostgresException
    except ImportError:
        DagsterPostgresException = ()  # noqa: N806  (an except clause of nothing)
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except (DagsterPostgresException, OperationalError) as exc:
        if isinstance(exc, OperationalError) and get_settings().profile != "postgres":
            raise
        exc = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]  # the driver's first line
        url = _shown_uri(get_settings().postgres_url or "")
        raise SystemExit(f"recsys: the PostgreSQL server of RECSYS_POSTGRES_URL ({url}): {exc}") from None


def _interrupted(result) -> bool:
    """Whether a SIGINT or SIGTERM ended the in-process run ``result``. Dagster turns the signal into a failure of the
    running step (error source ``INTERRUPT``) or, between steps, of the run (reason ``UNEXPECTED_TERMINATION``)."""
    for event in result.all_events:
        if event.is_step_failure and getattr(event.step_failure_data.error_source, "value", None) == "INTERRUPT":
            return True
        if event.event_type_value == "RUN_FAILURE":
            reason = getattr(event.event_specific_data, "failure_reason", None)
            if getattr(reason, "value", reason) == "UNEXPECTED_TERMINATION":
                return True
    return False


def _day(text: str | None, flag: str):
    """Parse a YYYY-MM-DD option: four, two and two ASCII digits (as the HTTP API's ``date``: not ``2018-9-24``, nor
    ISO week or basic forms); None stays None. Raises ValueError naming the flag and, for a day that does not
    exist (``2018-02-30``), why."""
    import re
    from datetime import date

    if text is None:
        return None
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        raise ValueError(f"{flag} {text[:40]!r} is not a YYYY-MM-DD date")
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{flag} {text!r} is not a YYYY-MM-DD date ({exc})") from None


def _partition_range(first, last) -> tuple[str, str]:
    """``first..last`` (dates) as partition keys, checked against the code location's daily partitions (what
    ``recsys demo`` and ``recsys backfill`` both run over: to the last day of a static source, never past
    yesterday, UTC).

    Raises:
        ValueError: a reversed range, or a day that is not a partition.
    """
    from recsys_pipeline.assets.partitions import daily_partitions

    if first > last:
        raise ValueError(f"--start {first} is after --end {last}")
    partitions = daily_partitions(get_settings())
    for flag, day in (("--start", first), ("--end", last)):
        if not partitions.has_partition_key(day.isoformat()):
            raise ValueError(
                f"{flag} {day} is not a daily partition: they run from {partitions.start.date()} to "
                f"{partitions.get_last_partition_key()} (UTC; a growing source's run to yesterday)"
            )
    return first.isoformat(), last.isoformat()


def run_demo(home: str | None = None, start: str | None = None, end: str | None = None) -> dict[str, float]:
    """Materialize every asset of ``recsys_pipeline_job`` on the Dagster instance under the home, in two runs:
    ingestion over the partitions ``start..end`` (default: every day of the data) as one run, then the content
    (the catalog as of the last day: every item encoded) and the model group (train, evaluate, gate, publish) for
    the last day.

    Returns wall seconds per step. Raises SystemExit when a step fails, ValueError for a bad range.
    """
    from recsys_pipeline.automation import CONTENT_ASSETS, INGESTION_ASSETS, MODEL_ASSETS

    _refuse_missing_paths()  # the range reads the source: its path is checked first, in the words of every run
    first, last = _demo_range(start, end)  # a bad date or range is refused before the home is made
    paths = _prepare_home(home)
    print(f"recsys demo: home {paths.root}\n    data {first} .. {last} (UTC days)", flush=True)
    seconds = _run(
        list(INGESTION_ASSETS), f"{PIPELINE_JOB}: ingestion, daily partitions {first} .. {last} as one run", first, last
    )
    seconds |= _run(
        [*CONTENT_ASSETS, *MODEL_ASSETS],
        f"{PIPELINE_JOB}: content and model group as of {last} (encode, train, evaluate, gate, publish)",
        last,
        last,
    )
    return seconds


def _refuse_missing_paths() -> None:
    """Raise ValueError naming each path setting a run would read that names nothing
    (``Settings.missing_paths``): one line before the run, not a failed step inside it."""
    missing = get_settings().missing_paths()
    if missing:
        raise ValueError("; ".join(missing) + " (nothing was run)")


def _demo_range(start: str | None, end: str | None) -> tuple[str, str]:
    """The first and last partition (``YYYY-MM-DD``) ``recsys demo --start/--end`` runs: the source's first / last
    day where not given. Raises ValueError for a bad date or range."""
    from recsys_pipeline.resources import SourceResource

    first_day, last_day = _day(start, "--start"), _day(end, "--end")
    if first_day is None or last_day is None:
        source = SourceResource().build()
        first_day, last_day = first_day or source.first_date(), last_day or source.last_date()
    return _partition_range(first_day, last_day)


def _days_between(first: str, last: str) -> list[str]:
    """The UTC days ``first..last`` (inclusive, ``YYYY-MM-DD``)."""
    from datetime import date, timedelta

    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


def backfill(args: argparse.Namespace) -> int:
    """Re-ingest ``--start..--end`` (inclusive UTC days) and the catalog as of those days as one run; with
    ``--downstream`` the content in that run too, then the model group as of each day, one run per day (a day whose
    gate stops publishing is reported, and the next days still run); one day with ``--downstream`` is one run of
    every asset, what ``nightly_retrain`` runs. Returns 0, or 1 when a day's run failed.
    Raises ValueError for a bad date, a reversed range or a day outside the partitions."""
    from recsys_pipeline.automation import DAILY_RANGE_ASSETS, INGESTION_ASSETS, MODEL_ASSETS

    first, last = _partition_range(_day(args.start, "--start"), _day(args.end, "--end"))
    paths = _prepare_home(args.home)
    print(f"recsys backfill: home {paths.root}", flush=True)
    if args.downstream and first == last:  # one day and everything downstream: one run, as nightly_retrain runs it
        _run(
            None,
            f"every asset: the daily partition {first} (one run, as nightly_retrain)",
            first,
            last,
            origin="backfill",
        )
        return 0
    # item_catalog too: interactions quarantines events of items the catalog does not know yet
    selection = DAILY_RANGE_ASSETS if args.downstream else INGESTION_ASSETS
    _run(
        list(selection),
        f"{', '.join(selection)}: daily partitions {first} .. {last} (one single-run backfill)",
        first,
        last,
        origin="backfill",
    )
    if not args.downstream:
        return 0
    days = _days_between(first, last)
    failed = []
    for n, day in enumerate(days, 1):
        try:
            _run(
                list(MODEL_ASSETS),
                f"model group as of {day} ({n} of {len(days)}): train, evaluate, gate, publish",
                day,
                day,
                origin="backfill",
            )
        except SystemExit as exc:  # one day's failure (e.g. gated out) does not stop the other days
            print(f"    {day}: {exc}", file=sys.stderr, flush=True)
            failed.append(day)
    if failed:
        print(f"recsys backfill: {len(failed)} of {len(days)} days failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def rollback(args: argparse.Namespace) -> int:
    """Answer from the lists published for ``--date`` (a run of ``rollback_recommendations`` on the home's
    instance, tagged ``recsys/origin=rollback``). Exit codes: 0 done, 1 no lists published for that day.
    Raises ValueError for a malformed date."""
    from recsys_pipeline.automation import ROLLBACK_JOB
    from recsys_pipeline.serving.snapshot import current_day, describe_days, published_days

    day = _day(args.date, "--date")
    paths = _paths(args.home)
    days = published_days(paths)
    if day not in days:
        shown = describe_days(days)
        print(f"recsys rollback: no published recommendations of {day}; published days: {shown}", file=sys.stderr)
        return 1
    before = current_day(paths)
    _prepare_home(args.home)
    _run(
        None,
        f"{ROLLBACK_JOB}: answer from the lists of {day} (now: {before or 'none'})",
        run_config={"ops": {"publish_day": {"config": {"date": day.isoformat()}}}},
        origin="rollback",
        job_name=ROLLBACK_JOB,
    )
    print(f"recsys rollback: `recsys recommend` and `recsys serve` answer from {day} (was {before or 'none'})")
    return 0


def tune(args: argparse.Namespace) -> int:
    """Run ``model_tuning`` (a run of ``model_tuning_job`` on the home's instance, tagged ``recsys/origin=tune``)
    and print the trials and the chosen params. Exit code 0; a failed search exits naming the step."""
    from recsys_pipeline.automation import TUNING_JOB
    from recsys_pipeline.data import warehouse

    paths = _prepare_home(args.home)
    config = {"n_trials": args.trials, "protocol": args.protocol, "k_core": args.k_core}
    _run(
        None,
        f"{TUNING_JOB}: {args.trials} trials on the validation split of {args.protocol}",
        run_config={"ops": {"model_tuning": {"config": config}}},
        origin="tune",
        job_name=TUNING_JOB,
    )
    with warehouse.session(paths.warehouse, read_only=True) as con:
        trials = warehouse.read_frame(
            con, "SELECT trial, value, seconds, chosen, params FROM model_tuning ORDER BY trial"
        )
        params, about = warehouse.read_tuned_params(con)
    print(_markdown(trials.round({"value": 4, "seconds": 1})))
    print(
        f"chosen: trial {int(trials.loc[trials['chosen'], 'trial'].item())}, validation {about['metric']} "
        f"{about['value']:.4f} (trial 0, as configured: {about['default_value']:.4f}); the next recommender_model "
        f"trains with {params}"
    )
    return 0


def demo(args: argparse.Namespace) -> int:
    timings = run_demo(args.home, args.start, args.end)
    _summary(_paths(args.home), timings, args.user, _demo_range(args.start, args.end)[1])
    return 0


SUMMARY_WIDTH = 100  # columns: every line of the demo's summary fits (but a path longer than that)
TITLE_CHARS = 60  # a longer title is cut, with "…"
BECAUSE_TITLE_CHARS = 28  # each of the (up to 3) titles of an explanation: a line of them stays within 100 columns
SUMMARY_TABLES = (
    "raw_events",
    "interactions",
    "quarantine",
    "item_catalog",
    "text_embeddings",
    "image_embeddings",
    "audio_embeddings",
    "media_failures",
    "item_features",
    "recommendations",
    "evaluation_ranked_lists",
)
# metric -> column label of the summary's tables, in this order
WARM_FIGURES = {  # the summary's 100 columns hold five figures (Recall@10 is in evaluation_metrics and MLflow)
    "ndcg_at_10": "NDCG@10",
    "recall_at_20": "Recall@20",
    "coverage": "coverage",
    "cold_share_at_20": "new share",  # item_cold_mixed: new items' share of the top-20 slots
}
COLD_FIGURES = {
    "cold_candidates_ndcg_at_10": "NDCG@10",
    "cold_candidates_recall_at_20": "Recall@20",
    "cold_candidates_random_recall_at_20": "random Recall@20",
}
ABLATION_FIGURES = {
    "ndcg_at_10": "NDCG@10",
    "recall_at_20": "Recall@20",
    "with_image_recall_at_20": "with image",
    "without_image_recall_at_20": "without image",
}
COLD_START = "item_cold_start"


def _markdown(frame: pd.DataFrame) -> str:
    """``frame`` as a Markdown table, empty cells where a figure is missing (not ``nan``)."""
    return frame.astype(object).where(frame.notna(), None).to_markdown(index=False, missingval="")


def _figures(long: pd.DataFrame, index: list[str], figures: dict[str, str]) -> pd.DataFrame:
    """One row per ``index`` of the long ``(*index, metric, value)`` frame, in order of first appearance of each
    ``index`` column; one column per metric of ``figures`` (labelled, in that order, rounded to 4 places). Metrics
    that no row has are left out."""
    rows = long[long["metric"].isin(list(figures))]
    if rows.empty:  # e.g. no protocol of this kind was evaluated
        return rows[index].iloc[:0]
    wide = rows.pivot_table(index=index, columns="metric", values="value", aggfunc="first").reset_index()
    first_seen = {c: {v: i for i, v in enumerate(rows[c].unique())} for c in index}
    wide = wide.sort_values(index, key=lambda c: c.map(first_seen[c.name]), kind="stable")
    kept = [m for m in figures if m in wide.columns and wide[m].notna().any()]
    return wide[[*index, *kept]].round(4).rename(columns=figures)


ABLATION_SHOWN = ("evaluation model", "masked at inference", "trained")  # statuses with figures of their own


def ablation_summary(ablation: pd.DataFrame) -> str:
    """The modality ablation (long :data:`~recsys_pipeline.evaluation.ablation.ABLATION_COLUMNS`) as one compact
    table: a row per protocol and variant, :data:`ABLATION_FIGURES` (for item cold start, those of the ranking of
    the held-out items only). A variant that repeats an earlier one (``same as ...``) or was skipped is a note
    under the table, not a row."""
    import pandas as pd

    shown = ablation["status"].isin(ABLATION_SHOWN)
    notes = [
        f"{r.variant}: {r.status}" for r in ablation.loc[~shown, ["variant", "status"]].drop_duplicates().itertuples()
    ]
    figures = ablation[shown]
    cold = figures["protocol"] == COLD_START
    held_out = figures[cold & figures["metric"].str.startswith("cold_candidates_")]
    figures = pd.concat(
        [figures[~cold], held_out.assign(metric=held_out["metric"].str.removeprefix("cold_candidates_"))]
    )
    table = _figures(figures, ["protocol", "variant"], ABLATION_FIGURES)
    return "\n".join([_markdown(table) if len(table) else "(no ablation figures)", *notes])


def format_summary(
    *,
    rows: dict[str, int],
    media_failures: pd.DataFrame,
    timings: dict[str, float],
    metrics: pd.DataFrame,
    ablation: pd.DataFrame | None,
    user: str,
    recommendations: pd.DataFrame,
    liked: pd.DataFrame,
    mlflow_uri: str,
) -> str:
    """The text ``recsys demo`` prints after its run; every line fits :data:`SUMMARY_WIDTH` columns, except the one
    holding ``mlflow_uri`` when that alone is longer.

    Args:
        rows: table -> row count.
        media_failures: ``modality, reason, items``.
        timings: step -> wall seconds.
        metrics: the ``evaluation_metrics`` table (``protocol, model, metric, value``).
        ablation: the ``evaluation_ablation`` table, or ``None`` when the run made none.
        user: the example user; ``recommendations`` (``rank, title, score``) and ``liked`` (``title, value``) are
            that user's.
        mlflow_uri: the MLflow tracking URI of the home.
    """
    out = ["", "Rows per table:"]
    out += [f"    {table:<24} {count:>10,}" for table, count in rows.items()]
    out += ["", "Items without an image / audio vector, by reason (listed in media_failures):"]
    out.append(_markdown(media_failures) if len(media_failures) else "    none")
    out += ["", "Wall time per step (s):"]
    width = max([28, *map(len, timings)])  # asset check steps have long keys
    out += [f"    {name:<{width}} {seconds:8.1f}" for name, seconds in timings.items()]
    out.append(f"    {'total':<{width}} {sum(timings.values()):8.1f}")
    warm = metrics[metrics["protocol"] != COLD_START]
    if len(warm):
        out += ["", "Evaluation, ranking all unseen items (ours vs. popularity, same split):"]
        out.append(_markdown(_figures(warm, ["protocol", "model"], WARM_FIGURES)))
    cold = metrics[metrics["protocol"] == COLD_START]
    if len(cold):
        out += ["", "Item cold start, ranking only the held-out items (random: a random order's expected Recall@20):"]
        out.append(_markdown(_figures(cold, ["protocol", "model"], COLD_FIGURES)))
    if ablation is not None and len(ablation):
        out += [
            "",
            "Modality ablation (modalities hidden at inference, same splits; item_cold_start: ranking only the",
            "held-out items; with / without image: Recall@20 on the test items with / without an image):",
            ablation_summary(ablation),
        ]
    clipped = {"title": lambda f: f["title"].map(lambda t: _clip(t, TITLE_CHARS))}
    out += ["", f"User {user}: top-10 recommendations", _markdown(recommendations.assign(**clipped))]
    out += [
        "",
        f"User {user}: titles with their highest interaction value (the rating, for MovieLens)",
        _markdown(liked.assign(**clipped)),
    ]
    mlflow = f"    .venv/bin/mlflow ui --backend-store-uri {mlflow_uri}   # MLflow"
    if len(mlflow) > SUMMARY_WIDTH:  # a long home: the URI on a line of its own, still one shell command
        mlflow = f"    .venv/bin/mlflow ui --backend-store-uri \\\n        {mlflow_uri}"
    out += ["", "Next:", f"    .venv/bin/recsys recommend --user {user}", "    .venv/bin/recsys ui   # Dagster", mlflow]
    return "\n".join(out)


def _clip(text, chars: int):
    """``text`` cut to ``chars`` characters, the last one ``…``; anything that is not a string as it is."""
    if not isinstance(text, str) or len(text) <= chars:
        return text
    return text[: chars - 1] + "…"


def _summary(paths: HomePaths, timings: dict[str, float], user: str | None, day: str) -> None:
    """Print :func:`format_summary` of the home's warehouse after a demo run (``user``: default the smallest id):
    the evaluation and lists of the partition ``day`` (``YYYY-MM-DD``, the demo's last day)."""
    import pandas as pd

    from recsys_pipeline.data import warehouse

    with warehouse.session(paths.warehouse, read_only=True) as con:
        rows = {table: warehouse.row_count(con, table) for table in SUMMARY_TABLES}
        if warehouse.table_exists(con, "media_failures"):
            missing = con.execute(
                "SELECT modality, reason, count(*) AS items FROM media_failures GROUP BY ALL "
                "ORDER BY modality, items DESC"
            ).df()
        else:
            missing = pd.DataFrame(columns=["modality", "reason", "items"])
        metrics = con.execute(
            "SELECT protocol, model, metric, value FROM evaluation_metrics WHERE partition_date = ?", [day]
        ).df()
        ablation = None
        if warehouse.table_exists(con, "evaluation_ablation"):
            ablation = con.execute("SELECT * FROM evaluation_ablation WHERE partition_date = ?", [day]).df()
        if user is None:
            user = con.execute("SELECT min(user_id) FROM recommendations WHERE partition_date = ?", [day]).fetchall()[
                0
            ][0]
        recs = con.execute(
            "SELECT r.rank, c.title, round(r.score, 3) AS score FROM recommendations r JOIN item_catalog c "
            "USING (item_id) WHERE r.partition_date = ? AND r.user_id = ? ORDER BY r.rank LIMIT 10",
            [day, user],
        ).df()
        liked = con.execute(
            "SELECT c.title, max(i.value) AS value FROM interactions i JOIN item_catalog c USING (item_id) "
            "WHERE i.user_id = ? GROUP BY c.title ORDER BY value DESC, c.title LIMIT 10",
            [user],
        ).df()
    print(f"\nThe model group of {day}:")
    print(
        format_summary(
            rows=rows,
            media_failures=missing,
            timings=timings,
            metrics=metrics,
            ablation=ablation,
            user=user,
            recommendations=recs,
            liked=liked,
            mlflow_uri=_shown_uri(get_settings().mlflow_tracking_uri(paths)),
        )
    )


def _shown_uri(uri: str) -> str:
    """``uri`` as printed: a password replaced by ``***``, quoted for the shell when it has a query (postgres)."""
    shown = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", uri)
    shown = re.sub(r"([?&]password=)[^&]*", r"\1***", shown)  # libpq also takes it as a query parameter
    return f"'{shown}'" if "?" in shown else shown


def recommend(args: argparse.Namespace) -> int:
    """A user's list from the published snapshot (of the current published day, or of ``--date``), not the DuckDB
    file: it answers while a run holds the lock.

    Exit codes: 0 printed, 1 unknown user or no lists published for ``--date``, 2 nothing published yet (or a
    malformed date).
    """
    from recsys_pipeline.serving.snapshot import (
        ITEMS,
        RECOMMENDATIONS,
        describe_days,
        echoed_id,
        published_days,
        read_snapshot,
    )

    paths = _paths(args.home)
    day = _day(args.date, "--date")
    days = published_days(paths) if day is not None else []
    if day is not None and day not in days:
        print(f"no recommendations published for {day}; published days: {describe_days(days)}", file=sys.stderr)
        return 1
    try:
        recs = read_snapshot(paths, RECOMMENDATIONS, day)
    except FileNotFoundError:
        print(
            f"nothing published at {paths.published}: materialize `recommendations` or run `recsys demo` first",
            file=sys.stderr,
        )
        return 2
    recs = recs[recs["user_id"].astype(str) == args.user].sort_values("rank").head(args.k)
    if recs.empty:
        print(f"unknown user {echoed_id(args.user)!r}: no recommendations for this user_id", file=sys.stderr)
        return 1
    try:  # published before the list, so it names every listed item
        titles = read_snapshot(paths, ITEMS, day)[["item_id", "title"]]
    except FileNotFoundError:
        titles = recs[["item_id"]].assign(title=None)
    recs = recs.merge(titles, on="item_id", how="left").assign(
        score=lambda f: f["score"].round(4), title=lambda f: f["title"].map(lambda t: _clip(t, TITLE_CHARS))
    )
    why: list[str] = []
    if args.explain:
        if "explanation" not in recs.columns or recs["explanation"].isna().all():
            print("these lists were published without explanations", file=sys.stderr)
        else:  # one line per rank under the table: as a column they made rows of ~185 columns
            by_id = dict(zip(titles["item_id"].astype(str), titles["title"]))
            why = [f"{r:>4}  {_because(text, by_id)}" for r, text in zip(recs["rank"], recs["explanation"])]
    version = f"champion v{recs['model_version'].iloc[0]}, " if "model_version" in recs.columns else ""
    of_day = f" of {recs['partition_date'].iloc[0]}" if "partition_date" in recs.columns else ""
    print(
        f"Top {len(recs)}{of_day} for user {args.user} ({version}model run {recs['model_run_id'].iloc[0]}, "
        f"produced {recs['produced_on'].iloc[0]}):"
    )
    print(recs[["rank", "item_id", "title", "score"]].to_markdown(index=False))
    if why:
        print("Because you liked (the user's items that raise each most; a new item: its content's shares):")
        print("\n".join(why))
    if len(recs) < args.k:  # the lists were published shorter: say so rather than print fewer rows silently
        print(
            f"-k {args.k}: {len(recs)} published for this user (`recommendations` publishes the top "
            "`k` of its config, 20 by default)",
            file=sys.stderr,
        )
    return 0


def _because(stored, titles: dict[str, str]) -> str:
    """``"Title A; Title B"`` of a stored explanation (``serving.publish.explanation_json``), plus the modality
    shares of an item no item of the user raises (e.g. ``"(content: text 0.8, image 0.2)"``)."""
    import json

    if not isinstance(stored, str):  # None / NaN: not explained
        return ""
    why = json.loads(stored)
    named = "; ".join(_clip(str(titles.get(i, i)), BECAUSE_TITLE_CHARS) for i in why.get("because", []))
    if named:
        return named
    shares = ", ".join(f"{m} {w:.2f}" for m, w in why.get("modalities", {}).items())
    return f"(content: {shares})" if shares else ""


def export(args: argparse.Namespace) -> int:
    """Write the training inputs for ``python -m recsys_pipeline.models.two_tower.train`` (e.g. under torchrun)."""
    import shlex

    from recsys_pipeline.content.features import load_item_features
    from recsys_pipeline.data import warehouse

    paths = _paths(args.home)
    if not args.out.strip():
        raise ValueError("--out is empty: name the folder to write to (nothing was written)")
    out = Path(args.out)
    if not Path(paths.warehouse).is_file():
        raise ValueError(
            f"no warehouse at {paths.warehouse}: run `recsys demo` (or the pipeline) first (nothing was written)"
        )
    targets = {"interactions": out / "interactions.parquet", "features": out / "item_features.npz"}
    for target in targets.values():
        if target.exists() and not target.is_file():
            raise ValueError(f"--out {out}: {target.name} exists and is not a file (nothing was written)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out}: {exc.strerror or exc} (nothing was written)") from exc
    with warehouse.session(paths.warehouse, read_only=True) as con:
        data = warehouse.read_interactions(con)
        features = load_item_features(con)
    # both written beside their targets first, then moved into place: a failed write leaves the folder as it was
    staged = {k: t.with_name(f".{t.stem}.{os.getpid()}.tmp{t.suffix}") for k, t in targets.items()}
    try:
        data.to_parquet(staged["interactions"], index=False)
        features.to_npz(staged["features"])
        for key, target in targets.items():
            os.replace(staged[key], target)
    except OSError as exc:
        raise ValueError(f"--out {out}: {exc.strerror or exc} (nothing was written)") from exc
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    torchrun = Path(sys.executable).parent / "torchrun"  # the venv's: not on PATH unless it is activated
    command = [
        str(torchrun), "--nproc-per-node", "2", "-m", "recsys_pipeline.models.two_tower.train",
        "--interactions", str(targets["interactions"]), "--features", str(targets["features"]),
        "--out", str(out / "model"), "--strategy", "ddp", "--devices", "2",
    ]  # fmt: skip
    print(
        f"wrote {len(data):,} interactions and {len(features.item_ids):,} items to {out}\ntrain: {shlex.join(command)}"
    )
    return 0


def serve(args: argparse.Namespace) -> int:
    """HTTP endpoint over the published snapshots (``serving.app``); runs until interrupted."""
    from recsys_pipeline.serving.app import serve as run_server
    from recsys_pipeline.serving.snapshot import snapshot_path

    paths = _paths(args.home)
    if not snapshot_path(paths).exists():
        print(
            f"note: nothing published yet at {paths.published}; /recommendations answers 503 until "
            "`recommendations` is materialized",
            file=sys.stderr,
        )
    if args.host not in ("127.0.0.1", "localhost", "::1") and not get_settings().api_key:
        print(
            f"warning: serving on {args.host} without RECSYS_API_KEY: anyone who can reach this port reads every "
            "user's list (set RECSYS_API_KEY to require the X-API-Key header)",
            file=sys.stderr,
        )
    base = f"http://{args.host}:{args.port}"
    print(
        f"recsys serve: {base}/recommendations/<user_id>?k=10 (home {paths.root})\n"
        f"    OpenAPI schema: {base}/openapi.json (no /docs page: it would load Swagger UI from the internet)",
        flush=True,
    )
    with _reraising_interrupts():  # uvicorn shuts down on SIGINT / SIGTERM, then returns as if nothing happened
        run_server(paths, args.host, args.port)
    return 0


@contextlib.contextmanager
def _reraising_interrupts():
    """Raise KeyboardInterrupt on leaving the block if a SIGINT or SIGTERM arrived in it, even if the code inside
    swallowed it (``uvicorn.run`` does, after its graceful shutdown, which re-sends the signal to these handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def note(signum: int, frame) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    if received:
        raise KeyboardInterrupt


# Warnings `dagster dev` prints at every start that say nothing about this project, as (start of the message,
# category) for PYTHONWARNINGS. Its categories (dagster_shared's SupersessionWarning, BetaWarning) cannot be named
# there (PYTHONWARNINGS is read before site-packages is importable), so their builtin bases are, next to the message.
UI_KNOWN_WARNINGS = (
    ("Function `dev_command` is superseded", "FutureWarning"),  # "Use 'dg dev' instead": dg is not installed
    ("Parameter `backfill_policy` of function `asset` is currently in beta", "Warning"),  # the single-run backfills
    # the model_beats_popularity check has one result per day (a partitioned check: "preview" in Dagster 1.13)
    ("Specifying a partitions_def on an AssetCheckSpec is currently in preview", "Warning"),
    # the whole-graph job holds single-run (ingestion, content) and one-day-per-run (model) assets
    ("Asset job recsys_pipeline_job materializes assets with varying BackfillPolicies", "UserWarning"),
)


def ui_environment(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` plus :data:`UI_KNOWN_WARNINGS` as ``ignore`` filters in ``PYTHONWARNINGS`` (inherited by
    ``dagster dev`` and the webserver, daemon and code-server processes it starts), before any filters already
    there, which therefore win."""
    known = ",".join(f"ignore:{message}:{category}" for message, category in UI_KNOWN_WARNINGS)
    return {**environ, "PYTHONWARNINGS": ",".join(filter(None, [known, environ.get("PYTHONWARNINGS")]))}


def ui(args: argparse.Namespace) -> int:
    """``dagster dev`` (webserver and daemon) on 127.0.0.1 over the home's instance; runs until interrupted.

    ``dagster dev`` runs in a process group of its own, so a Ctrl-C reaches it once, forwarded by this process to
    the group, the same way as a SIGTERM sent to ``recsys`` alone; it then stops its webserver and daemon. A second
    interrupt while it does so, or a shutdown longer than 60 s, kills the whole group. Started as a background job
    of a script, a process inherits SIGINT ignored (POSIX): ``dagster dev`` gets it back, or it would never stop.
    """
    paths = _prepare_home(args.home, in_process=False)
    cmd = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-h",
        "127.0.0.1",
        "-p",
        str(args.port),
        "-m",
        "recsys_pipeline.definitions",
    ]
    print(f"Dagster UI on http://127.0.0.1:{args.port} (instance {paths.dagster_home})", flush=True)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # exec keeps an ignored signal ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
    child = subprocess.Popen(cmd, cwd=Path.cwd(), env=ui_environment(os.environ), process_group=0)
    try:
        return child.wait()
    except KeyboardInterrupt:
        _signal_group(child, signal.SIGINT)
        try:
            child.wait(timeout=60)
        except BaseException:  # a second interrupt, or a hung shutdown
            _signal_group(child, signal.SIGKILL)
            child.wait()
        raise


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to ``child``'s process group (``dagster dev`` and the servers it started)."""
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(child.pid, signum)


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1..65535, got {value}")
    return value


DESCRIPTION = "recsys: run, inspect and serve the multimodal recommender pipeline (Dagster, DuckDB, MLflow)."
EPILOG = (
    "--home works before or after the command. Every file the product writes goes under the home: "
    "warehouse.duckdb, mlflow.db, mlartifacts/, dagster/, published/. "
    "'recsys COMMAND --help' lists a command's options."
)
# name -> one line, shown in `recsys --help` and as the description of `recsys NAME --help`
COMMANDS = {
    "demo": "run the whole pipeline once (default data: the bundled MovieLens) and print a summary",
    "backfill": "re-ingest a range of UTC days as one Dagster run; --downstream: also retrain as of each day",
    "recommend": "print a user's published recommendations with titles (the current day, or --date)",
    "rollback": "answer from the recommendations published for an earlier day (a Dagster run)",
    "tune": "search the model's hyperparameters on the data (a Dagster run); the next training uses the best",
    "export": "write the interactions and item features for standalone training (e.g. under torchrun)",
    "serve": "serve the published recommendations over HTTP: GET /recommendations/{user_id}?k=10",
    "ui": "start the Dagster UI (webserver and daemon) on 127.0.0.1",
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Argparse's "(default: X)" after an option's help, only where X says something: not for ``None`` (the help
    text says what unset means), a flag's ``False``, or a help that already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _global_options(parser: argparse.ArgumentParser, after_command: bool) -> None:
    """``--home``, on the top-level parser and on every command's (so it may follow the command). After the command
    its default is SUPPRESS: an unset ``--home`` there does not overwrite one given before the command."""
    parser.add_argument(
        "--home",
        metavar="DIR",
        default=argparse.SUPPRESS if after_command else None,
        help="the home folder (default: $RECSYS_HOME, else ./.recsys)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``recsys`` argument parser: one sub-parser per entry of :data:`COMMANDS`, each with ``func``."""
    parser = argparse.ArgumentParser(
        prog="recsys", description=DESCRIPTION, epilog=EPILOG, formatter_class=_HelpFormatter
    )
    _global_options(parser, after_command=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=COMMANDS[name], description=COMMANDS[name], formatter_class=_HelpFormatter)
        _global_options(p, after_command=True)
        p.set_defaults(func=func)
        return p

    p = command("demo", demo)
    p.add_argument("--start", metavar="YYYY-MM-DD", help="first UTC day (default: the first day of the data)")
    p.add_argument("--end", metavar="YYYY-MM-DD", help="last UTC day, inclusive (default: the last day of the data)")
    p.add_argument("--user", metavar="ID", help="user_id of the example lists (default: the smallest user_id)")
    p = command("backfill", backfill)
    p.add_argument("--start", metavar="YYYY-MM-DD", required=True, help="first UTC day")
    p.add_argument("--end", metavar="YYYY-MM-DD", required=True, help="last UTC day, inclusive")
    p.add_argument(
        "--downstream",
        action="store_true",
        help="also the content as of those days in the same run, then the model group (train, evaluate, gate, "
        "publish) as of each day, one run per day",
    )
    p = command("recommend", recommend)
    p.add_argument("--user", metavar="ID", required=True, help="user_id as in the interactions table")
    p.add_argument("-k", metavar="N", type=_positive_int, default=10, help="list length, at most the published K")
    p.add_argument(
        "--explain", action="store_true", help="add why: the user's items that raise each recommendation most"
    )
    p.add_argument(
        "--date",
        metavar="YYYY-MM-DD",
        help="the lists of that UTC day (default: the current published day); a day without lists: exit code 1",
    )
    p = command("rollback", rollback)
    p.add_argument(
        "--date", metavar="YYYY-MM-DD", required=True, help="a published UTC day: readers answer from its lists"
    )
    p = command("tune", tune)
    p.add_argument("--trials", type=_positive_int, default=10, help="trials in all, the configured model first")
    p.add_argument(
        "--protocol",
        default="user_last_fraction",
        choices=["user_last_fraction", "user_random_fraction", "item_cold_start", "item_cold_mixed"],
        help="whose validation split judges the trials",
    )
    p.add_argument(
        "--k-core", type=_non_negative_int, default=0, help="data view: 0 = every interaction, N = the N-core"
    )
    p = command("export", export)
    p.add_argument(
        "--out", metavar="DIR", required=True, help="folder for interactions.parquet and item_features.npz (created)"
    )
    p = command("serve", serve)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind; 127.0.0.1 is this machine only, set RECSYS_API_KEY before binding any other",
    )
    p.add_argument("--port", type=_port, default=8000, help="TCP port")
    p = command("ui", ui)
    p.add_argument("--port", type=_port, default=3000, help="TCP port of the Dagster webserver")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``recsys`` with ``argv`` (default: the process's arguments); returns the exit code (argparse exits 2 on
    bad arguments)."""
    args = build_parser().parse_args(argv)
    with contextlib.suppress(Exception):  # an invalid setting: the command itself reports it
        library_environment(_paths(getattr(args, "home", None)))
    handles_signals = threading.current_thread() is threading.main_thread()  # signal.signal works only there
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if handles_signals else None
    stdout = sys.stdout
    if stdout.isatty():
        sys.stdout = _LinesAboveBars(stdout)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: whatever was running has cleaned up on the way out
        print("recsys: interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED
    except BrokenPipeError:  # `recsys recommend ... | head`: the reader has what it wanted
        _quiet_closed_stdout()
        return 0
    finally:
        if sys.stdout is not stdout:
            with contextlib.suppress(BrokenPipeError):
                sys.stdout.flush()
            sys.stdout = stdout
        if handles_signals:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; configuration and data errors become one message and exit code 2."""
    from recsys_pipeline.data.sources import SourceError
    from recsys_pipeline.data.warehouse import WarehouseLockedError

    try:
        return args.func(args)
    except (SourceError, ValueError, LookupError, WarehouseLockedError) as exc:  # a message, not a traceback
        print(f"recsys {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _error_chain(error) -> str:
    """A Dagster step's error as its messages, outermost first (``caused by:`` per cause), without the stacks:
    the cause a user acts on (a missing file, a bad setting) in a few lines; the run's log keeps the stacks."""
    lines = []
    while error is not None and len(lines) < 10:
        lines.append(error.message.strip())
        error = error.cause or error.context
    return "\n    caused by: ".join(lines)


def _quiet_closed_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush at exit does not fail again on the closed
    pipe (the recipe of Python's ``signal`` documentation, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _raise_interrupt(signum: int, frame) -> None:
    """SIGTERM handler: the same path as Ctrl-C (``with`` blocks and ``finally`` run, one line, exit code 130)."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
