"""Jobs, the nightly schedule and the landing-folder sensor (what runs without anyone clicking).

- ``recsys_pipeline_job``: the whole graph; every asset is on the same daily partitions. Run for one day it
  ingests that day, brings the catalog as of that day up to date (embeddings of new or changed items only), trains
  the model of that day, evaluates and gates it and publishes that day's lists. A range of days as one run suits
  ingestion and content (:data:`DAILY_RANGE_ASSETS`, what ``recsys demo`` and ``recsys backfill`` run as one run);
  the model group runs one day per run (:data:`MODEL_ASSETS`; a backfill launches one run per day).
- ``nightly_retrain``: 02:00 UTC (``RECSYS_NIGHTLY_HOUR_UTC`` moves it) runs that job for yesterday's partition:
  yesterday's partition of every stage, in one run.
- ``landing_events``: watches the ``daily_files`` source folder and ingests a day (``item_catalog``,
  ``raw_events``, ``interactions``) when its file appears or changes.
- ``model_tuning_job`` / ``weekly_model_tuning`` (Sundays 03:00 UTC): the two-tower model's hyperparameter search
  (``model_tuning``), outside the nightly job; the next ``recommender_model`` trains with its chosen params.
- ``text_encoder_adaptation_job``: fine-tunes the text encoder on the interactions (``text_encoder_adaptation``),
  on demand; ``text_embeddings`` reads it when the ``text_encoder`` resource's mode is ``adapted``.
- ``rollback_recommendations``: points the published lists (what ``recsys serve`` / ``recsys recommend`` answer
  from by default) at another published day (``recsys rollback --date D``), recorded as a run and as an
  observation of that day's ``recommendations`` partition.

Schedule and sensor start stopped: nothing runs unless someone turns them on (UI, Automation tab).

Where a run came from is its tag :data:`ORIGIN_TAG` (``recsys/origin``): ``schedule`` or ``sensor`` here; the
``recsys`` commands set ``demo`` / ``backfill`` (:data:`ORIGIN_DEMO`, :data:`ORIGIN_BACKFILL`); a run launched from
the UI has none. The MLflow runs of a run repeat it as ``recsys.origin``.
"""

import hashlib
import json
import time
from pathlib import Path

import dagster as dg

from recsys_pipeline.assets.metadata import (
    ORIGIN_BACKFILL,
    ORIGIN_DEMO,
    ORIGIN_ROLLBACK,
    ORIGIN_SCHEDULE,
    ORIGIN_SENSOR,
    ORIGIN_TAG,
    ORIGINS,
)
from recsys_pipeline.data.sources import SourceError
from recsys_pipeline.resources import HomeResource, SourceResource
from recsys_pipeline.settings import Settings

# A file modified more recently than this is probably still being written: it waits for a later tick.
SETTLE_SECONDS = 30.0
PIPELINE_JOB = "recsys_pipeline_job"
INGEST_JOB = "ingest_events_job"
ROLLBACK_JOB = "rollback_recommendations"
TUNING_JOB = "model_tuning_job"
TUNING_ASSETS = ("model_tuning",)  # not partitioned, not nightly: on demand or weekly
ADAPTATION_JOB = "text_encoder_adaptation_job"
ON_DEMAND_ASSETS = (*TUNING_ASSETS, "text_encoder_adaptation")  # never in the pipeline job
INGESTION_ASSETS = ("item_catalog", "raw_events", "interactions")
CONTENT_ASSETS = ("text_embeddings", "image_embeddings", "audio_embeddings", "item_features")
# a range of days as one run (BackfillPolicy.single_run): the demo's and `recsys backfill`'s first run
DAILY_RANGE_ASSETS = (*INGESTION_ASSETS, *CONTENT_ASSETS)
# one day per run (no backfill policy: a backfill launches one run per day): a model is trained as of one day
MODEL_ASSETS = ("recommender_model", "model_evaluation", "recommendations")
__all__ = [
    "PIPELINE_JOB",
    "INGEST_JOB",
    "ROLLBACK_JOB",
    "TUNING_JOB",
    "INGESTION_ASSETS",
    "CONTENT_ASSETS",
    "DAILY_RANGE_ASSETS",
    "MODEL_ASSETS",
    "ORIGIN_TAG",
    "ORIGINS",
    "ORIGIN_SCHEDULE",
    "ORIGIN_SENSOR",
    "ORIGIN_DEMO",
    "ORIGIN_BACKFILL",
    "ORIGIN_ROLLBACK",
    "jobs",
    "schedules",
    "sensors",
]


def jobs() -> list:
    """``recsys_pipeline_job`` (every daily asset), ``ingest_events_job`` (one day of events), both partitioned
    like their assets (Dagster infers it), ``model_tuning_job``, ``text_encoder_adaptation_job`` and
    ``rollback_recommendations`` (no partitions: its config names the day)."""
    return [
        dg.define_asset_job(
            PIPELINE_JOB,
            selection=dg.AssetSelection.all() - dg.AssetSelection.assets(*ON_DEMAND_ASSETS),
            description="The whole graph for a day: ingest it, the catalog as of it (embeddings of new items), "
            "train the model of that day, evaluate, gate, publish that day's lists. A range of days as one run: "
            "ingestion and content only (the model group runs one day per run).",
        ),
        dg.define_asset_job(
            INGEST_JOB,
            selection=dg.AssetSelection.assets(*INGESTION_ASSETS),
            description="One day of events: the catalog as of that day (so new items are known), raw_events and "
            "interactions.",
        ),
        dg.define_asset_job(
            TUNING_JOB,
            selection=dg.AssetSelection.assets(*TUNING_ASSETS),
            description="The two-tower model's hyperparameter search on every interaction (model_tuning): the "
            "next recommender_model trains with its chosen params.",
        ),
        dg.define_asset_job(
            ADAPTATION_JOB,
            selection=dg.AssetSelection.assets("text_encoder_adaptation"),
            description="Fine-tune the text encoder on every interaction (text_encoder_adaptation); text_embeddings "
            "reads it with the text_encoder resource's mode 'adapted'.",
        ),
        rollback_job(),
    ]


class RollbackConfig(dg.Config):
    """``date``: the UTC day (YYYY-MM-DD) whose published lists readers answer from after the run."""

    date: str


def rollback_job() -> dg.JobDefinition:
    """``rollback_recommendations``: one op that moves the current published day (``published/current.json``)
    to ``date``, a day whose lists were published (``recsys rollback --date D`` runs it; from the UI: Launchpad,
    config ``ops: {publish_day: {config: {date: ...}}}``)."""

    @dg.op(
        description="Answer from the published lists of `date`: move the current published day there, and record "
        "it as an observation of that day's recommendations partition."
    )
    def publish_day(context: dg.OpExecutionContext, config: RollbackConfig, home: HomeResource) -> None:
        from datetime import date

        from recsys_pipeline.serving.publish import make_current

        try:
            day = date.fromisoformat(config.date)
        except ValueError as exc:
            raise dg.Failure(f"date={config.date!r} is not a YYYY-MM-DD date") from exc
        try:
            previous = make_current(home.paths(), day, run_id=context.run_id)
        except LookupError as exc:
            raise dg.Failure(str(exc)) from exc
        context.log.info(f"published lists now answer from {day} (before: {previous or 'none'})")
        context.log_event(
            dg.AssetObservation(
                asset_key="recommendations",
                partition=day.isoformat(),
                metadata={
                    "published_current_day": day.isoformat(),
                    "previous_current_day": previous.isoformat() if previous else "",
                    "rollback_run": context.run_id,
                },
            )
        )

    @dg.job(
        name=ROLLBACK_JOB,
        description="Roll the published recommendations back (or forward) to a published day: `recsys rollback "
        "--date D`, or config ops.publish_day.config.date.",
        tags={ORIGIN_TAG: ORIGIN_ROLLBACK},
    )
    def rollback_recommendations():
        publish_day()

    return rollback_recommendations


def schedules(pipeline_job, settings: Settings) -> list:
    """``nightly_retrain``: ``pipeline_job`` for yesterday's partition at ``RECSYS_NIGHTLY_HOUR_UTC``;
    ``weekly_model_tuning``: ``model_tuning_job`` on Sundays at 03:00 UTC. Both stopped."""
    return [
        dg.ScheduleDefinition(
            name="weekly_model_tuning",
            job_name=TUNING_JOB,
            cron_schedule="0 3 * * 0",
            execution_timezone="UTC",
            description="The model's hyperparameter search, weekly (each trial is a full training).",
            default_status=dg.DefaultScheduleStatus.STOPPED,
            tags={ORIGIN_TAG: ORIGIN_SCHEDULE},
        ),
        dg.build_schedule_from_partitioned_job(
            pipeline_job,
            hour_of_day=settings.nightly_hour_utc,
            minute_of_hour=0,
            name="nightly_retrain",
            description="Yesterday's partition and everything downstream: new items encoded, retrain, evaluate, "
            "publish.",
            default_status=dg.DefaultScheduleStatus.STOPPED,
            tags={ORIGIN_TAG: ORIGIN_SCHEDULE},
        ),
    ]


def _signature(paths: list[Path]) -> str:
    """Name, mtime (ns) and size of a day's files: changes when a file is added, replaced or rewritten."""
    return "|".join(f"{p.name}@{p.stat().st_mtime_ns}:{p.stat().st_size}" for p in sorted(paths))


def sensors(partitions: dg.DailyPartitionsDefinition) -> list:
    """``landing_events``: ingests a day of the ``daily_files`` folder when its files appear or change (stopped)."""

    @dg.sensor(
        job_name=INGEST_JOB,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="A new or changed YYYY-MM-DD.csv|parquet|jsonl in the landing folder ingests that day.",
    )
    def landing_events(context: dg.SensorEvaluationContext, source: SourceResource):
        """One ``RunRequest`` per day whose files are new or changed since the last request.

        The cursor is JSON ``{"requested": {day: signature}, "skipped": {day: signature}, "rejected": {name:
        reason}}``; the run key is the day plus a hash of its files' names, mtimes and sizes, so an unchanged file
        never runs twice and a rewritten one runs again. Entries that cannot be ingested (``DailyFileSource.scan``:
        an impossible or future date, an empty file, an unreadable or other name) never stop the other days: each
        is logged once per reason, and their count is in the tick (the skip reason, or the
        ``recsys/landing_rejections`` tag of the run requests); the ingestion run records them in
        ``landing_rejections``. Days before the first partition are skipped with one log line per file state and
        looked at again on later ticks. Files younger than ``SETTLE_SECONDS`` wait for a later tick.
        """
        kind = source.resolved_kind()
        if kind != "daily_files":
            return dg.SkipReason(f"source kind is {kind!r}: no landing folder to watch (use daily_files)")
        try:
            scan = source.build().scan()
        except SourceError as exc:
            return dg.SkipReason(str(exc))
        cursor = json.loads(context.cursor) if context.cursor else {}
        requested, skipped = cursor.get("requested", {}), cursor.get("skipped", {})
        rejected = {r.name: r.reason for r in scan.rejections}
        for r in scan.rejections:
            if cursor.get("rejected", {}).get(r.name) != r.reason:
                context.log.warning(f"rejected landing file {r.name}: {r.reason}: {r.detail}")
        counts = scan.reason_counts()
        now = time.time()
        requests = []
        for day, paths in sorted(scan.files.items()):
            key, signature = day.isoformat(), _signature(paths)
            if requested.get(key) == signature:
                continue
            if any(now - p.stat().st_mtime < SETTLE_SECONDS for p in paths):
                context.log.info(
                    f"{key}: {[p.name for p in paths]} modified in the last {SETTLE_SECONDS:.0f} s; next tick"
                )
                continue
            if not partitions.has_partition_key(key):
                if skipped.get(key) != signature:
                    context.log.info(
                        f"skipping {', '.join(p.name for p in paths)}: {key} is not a partition "
                        f"(partitions run from {partitions.start.date()} to yesterday, UTC)"
                    )
                    skipped[key] = signature
                continue
            skipped.pop(key, None)
            requested[key] = signature
            digest = hashlib.sha256(signature.encode()).hexdigest()[:16]
            tags = {
                ORIGIN_TAG: ORIGIN_SENSOR,
                "recsys/landing_files": signature[:200],
                "recsys/landing_rejections": str(len(scan.rejections)),
            }
            requests.append(dg.RunRequest(run_key=f"{key}:{digest}", partition_key=key, tags=tags))
        state = json.dumps({"requested": requested, "skipped": skipped, "rejected": rejected}, sort_keys=True)
        if requests:
            return dg.SensorResult(run_requests=requests, cursor=state)
        reason = "no new or changed day"
        if scan.rejections:
            reason += f"; {len(scan.rejections)} landing file(s) rejected: " + ", ".join(
                f"{k} {v}" for k, v in sorted(counts.items())
            )
        return dg.SensorResult(skip_reason=reason, cursor=state)

    return [landing_events]
