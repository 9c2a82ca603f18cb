"""Model assets and their check: recommender_model (Lightning + MLflow), model_evaluation (+ the champion gate),
recommendations; the blocking check ``model_beats_popularity``."""

import json
import time
from dataclasses import fields
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from recsys_pipeline.assets.metadata import figure, frame_table, key_value_table, mlflow_tags, table_metadata
from recsys_pipeline.assets.partitions import day_end, interactions_up_to, one_day
from recsys_pipeline.data import warehouse
from recsys_pipeline.data.schema import (
    EVALUATION_ABLATION,
    EVALUATION_GROUND_TRUTH,
    EVALUATION_METRICS,
    EVALUATION_RANKED_LISTS,
    RECOMMENDATIONS,
)
from recsys_pipeline.evaluation.ablation import MASKED_VARIANTS
from recsys_pipeline.evaluation.protocols import EvaluationSettings
from recsys_pipeline.instance import DUCKDB_POOL
from recsys_pipeline.resources import HomeResource, MLflowResource, TrainingResource, WarehouseResource
from recsys_pipeline.settings import Settings

_EVALUATION_DEFAULTS = EvaluationSettings()


def _day_end(day: str | None, name: str) -> datetime | None:
    """The end (next midnight, naive UTC) of the UTC day ``day``; ``None`` when not given."""
    if not day:
        return None
    try:
        return datetime.combine(date.fromisoformat(day), datetime.min.time()) + timedelta(days=1)
    except ValueError as exc:
        raise dg.Failure(f"{name}={day!r} is not a YYYY-MM-DD date") from exc


class TrainConfig(dg.Config):
    """``warm_start``: start from the champion of the day's weights and train ``model.warm_start_epochs`` epochs on
    every interaction (the new ones, and the older ones as replay) instead of a full retrain; a full retrain when
    there is no champion yet or its architecture differs from the configured one (the metadata says which). Unset:
    the ``training`` resource's ``warm_start`` (``RECSYS_WARM_START``, default off). The day trained as of is the
    run's partition."""

    warm_start: bool | None = None


class EvaluationConfig(dg.Config):
    """Evaluation protocols (``evaluation.protocols.EvaluationSettings``; its defaults) and the modality ablation:
    each protocol's model ranks again with only the variant's modalities visible (nothing trained; ``[]`` turns it
    off). The ablation that retrains per variant and fusion is ``benchmarks/ablation.py``."""

    protocols: list[str] = list(_EVALUATION_DEFAULTS.protocols)
    holdout_fraction: float = _EVALUATION_DEFAULTS.holdout_fraction
    random_fraction: float = _EVALUATION_DEFAULTS.random_fraction
    cold_fraction: float = _EVALUATION_DEFAULTS.cold_fraction
    temporal_cutoff: str | None = None
    k: int = _EVALUATION_DEFAULTS.k
    seed: int = _EVALUATION_DEFAULTS.seed
    k_core: int = _EVALUATION_DEFAULTS.k_core  # 10: evaluate on the 10-core view (dense users and items)
    ablation_variants: list[str] = list(MASKED_VARIANTS)

    def settings(self) -> EvaluationSettings:
        """The protocol settings (``temporal_cutoff``: the start of that UTC day).

        Raises:
            dagster.Failure: an invalid value (the message names it).
        """
        cutoff = _day_end(self.temporal_cutoff, "temporal_cutoff")
        values = {f.name: getattr(self, f.name) for f in fields(EvaluationSettings) if f.name != "temporal_cutoff"}
        try:
            return EvaluationSettings(**values, temporal_cutoff=cutoff - timedelta(days=1) if cutoff else None)
        except ValueError as exc:
            raise dg.Failure(f"model_evaluation config: {exc}") from exc


def _mlflow_links(tracking_uri: str, run_id: str, name: str, version: str | None, experiment_id: str | None = None):
    """``mlflow_run`` and ``mlflow_model_version``: the MLflow UI pages of the run and of the registered version."""
    from recsys_pipeline.registry import tracking

    links = {"mlflow_run": dg.MetadataValue.url(tracking.run_url(tracking_uri, run_id, experiment_id))}
    if version:
        links["mlflow_model_version"] = dg.MetadataValue.url(tracking.model_version_url(tracking_uri, name, version))
    return links


def _champion_to_start_from(wanted: bool, tracking_uri: str, name: str, day: date, features):
    """``(model, note)``: the champion of ``day`` to warm start from (``None`` for a full retrain) and what
    happened, in words, for the materialization."""
    if not wanted:
        return None, "off (full retrain)"
    from recsys_pipeline.registry.model_registry import champion_for_day, load_version

    try:
        version = champion_for_day(tracking_uri, name, day.isoformat()).version
    except LookupError:
        return None, f"no champion of {day} or before: full retrain"
    return load_version(tracking_uri, f"models:/{name}/{version}", features), f"from champion version {version}"


class RecommendationsConfig(dg.Config):
    """``k``: list length per user."""

    k: int = 20


def _training_window(day: date, window_days: int | None) -> tuple[datetime | None, datetime]:
    """``(since, until)`` of the model of ``day``: naive UTC, ``until`` the end of ``day``, ``since`` the start of
    the first day of the window (``None``: every day before)."""
    until = day_end(day)
    return (until - timedelta(days=window_days) if window_days else None), until


def _model_config(training: TrainingResource, tuned: dict):
    """``training``'s ``ModelConfig`` over ``model_tuning``'s chosen params; a clear failure when those no longer
    fit (a field renamed or removed since the search, a value now out of range).

    Raises:
        dagster.Failure: naming the fix (materialize model_tuning again).
    """
    try:
        return training.build_model_config(tuned)
    except (TypeError, ValueError) as exc:
        if not tuned:
            raise
        raise dg.Failure(
            f"model_tuning's chosen params {tuned} do not fit this ModelConfig ({exc}): materialize model_tuning "
            "again (recsys tune), or drop its table"
        ) from exc


def _tuning_tags(tuning: dict) -> dict[str, str]:
    """MLflow tags naming the search a model's params came from (none without a search)."""
    if not tuning:
        return {}
    return {"tuning.mlflow_run_id": tuning["mlflow_run_id"], "tuning.protocol": tuning["protocol"]}


def _tuning_note(tuned: dict, tuning: dict, config) -> str:
    """Where the model's hyperparameters came from, in words, for the materialization."""
    if not tuning:
        return "ModelConfig defaults and the training resource (no model_tuning search yet)"
    chosen = ", ".join(f"{k}={getattr(config, k)}" for k in tuned)
    return (
        f"model_tuning of {tuning['tuned_at']} on {tuning['protocol']} (validation {tuning['metric']} "
        f"{tuning['value']:.4f}, defaults {tuning['default_value']:.4f}, {tuning['trials']} trials): {chosen}; "
        "a field set in the training resource wins"
    )


def _days(since: datetime | None, until: datetime) -> str:
    """The UTC days ``[since, until)`` in words, for a materialization."""
    last = (until - timedelta(days=1)).date()
    return f"every day up to {last}" if since is None else f"{since.date()} .. {last}"


def model_assets(partitions: dg.DailyPartitionsDefinition, settings: Settings) -> list[dg.AssetsDefinition]:
    """``recommender_model``, ``model_evaluation`` and ``recommendations`` on the daily ``partitions``, one run per
    day: day D is trained and evaluated on the interactions up to the end of D
    (``settings.training_window_days`` days ending with D when set) and the catalog as of D."""
    window_days = settings.training_window_days
    history = dg.AssetDep("interactions", partition_mapping=interactions_up_to(settings))
    # No backfill policy: Dagster's default for a partitioned asset, one run per day, each tagged with its day
    # (dagster/partition). BackfillPolicy.multi_run(1) launches the same runs but tags each as a one-day range, and
    # Dagster 1.13 then records the day's model_beats_popularity result without its partition: a gated-out day would
    # not show on the check's partitions.
    daily = dict(pool=DUCKDB_POOL, group_name="model", partitions_def=partitions)

    # model_tuning's table is read when it exists, not declared as a dependency: a search is optional, and an
    # upstream asset never materialized makes the UI ask "Are you sure?" before every training
    @dg.asset(**daily, kinds={"pytorch", "mlflow"}, deps=[history, "item_features"])
    def recommender_model(
        context: dg.AssetExecutionContext,
        config: TrainConfig,
        warehouse_db: WarehouseResource,
        mlflow: MLflowResource,
        training: TrainingResource,
    ):
        """The ranker of day D: trained with Lightning on the interactions up to the end of D (UTC; the
        ``RECSYS_TRAINING_WINDOW_DAYS`` days ending with D when set) and the items added by D; tracked and
        registered in MLflow as a new version tagged ``partition_date`` = D. Hyperparameters: ``ModelConfig``'s
        defaults, then the chosen trial of the latest ``model_tuning`` search if one ran, then what the ``training``
        resource sets. The materialization links to the training run and the version; training figures beyond the
        headline ones are in its ``training`` table."""
        from recsys_pipeline.content.features import load_item_features
        from recsys_pipeline.registry.model_registry import PARTITION_DATE_TAG
        from recsys_pipeline.registry.runs import train_and_log

        started = time.perf_counter()
        day = one_day(context)
        since, until = _training_window(day, window_days)
        with warehouse_db.session(read_only=True) as con:
            data = warehouse.read_interactions(con, until, since)
            try:
                features = load_item_features(con, until)
                tuned, tuning = warehouse.read_tuned_params(con)
            except ValueError as exc:
                raise dg.Failure(str(exc)) from exc
        if data.empty:
            raise dg.Failure(
                f"no interactions to train on ({_days(since, until)}): materialize the interactions partitions first"
            )
        tracking_uri, experiment_id = mlflow.resolved_tracking_uri(), mlflow.experiment_id()
        warm_start = training.warm_start_default() if config.warm_start is None else config.warm_start
        name = mlflow.registered_model_name
        init, warm_note = _champion_to_start_from(warm_start, tracking_uri, name, day, features)
        model_config = _model_config(training, tuned)
        result = train_and_log(
            data,
            features,
            model_config,
            training.build_trainer_config(),
            tracking_uri,
            experiment_id,
            name,
            run_name="recommender_model",
            tags={**mlflow_tags(context), PARTITION_DATE_TAG: day.isoformat(), **_tuning_tags(tuning)},
            data_source=str(warehouse_db.file()),
            init=init,
            version_tags={PARTITION_DATE_TAG: day.isoformat()},
        )
        stats = result.stats
        if init is not None and not stats.get("warm_start"):
            warm_note = (
                "cannot warm start from the champion (another architecture, or saved before warm starts): full retrain"
            )
        return dg.MaterializeResult(
            metadata={
                "seconds": round(time.perf_counter() - started, 2),
                "model_version": result.model_version or "",
                **_mlflow_links(tracking_uri, result.run_id, name, result.model_version, experiment_id),
                "interactions": len(data),  # trained on
                "epochs_trained": int(stats["epochs_trained"]),
                "train_seconds": round(float(stats["train_seconds"]), 2),
                "samples_per_second": round(float(stats["samples_per_second"]), 1),
                "training": key_value_table(
                    {
                        "partition (UTC day trained as of)": day.isoformat(),
                        "interactions of": _days(since, until),
                        "best validation NDCG@10": (
                            stats["best_val_ndcg_at_10"]
                            if stats["n_val_users"]
                            else "no validation split (val_fraction 0): every epoch on every interaction"
                        ),
                        "best epoch (0-based)": stats["best_epoch"] if stats["n_val_users"] else "",
                        "refit on every interaction": stats["refit"],
                        "warm start": warm_note,
                        "hyperparameters": _tuning_note(tuned, tuning, model_config),
                        "interactions in the last fit": stats["n_train_interactions"],
                        "validation users": stats["n_val_users"],
                        "items with a trained history embedding": stats["history_items_trained"],
                        "catalog items (added by that day)": len(features.item_ids),
                        "users": int(data["user_id"].nunique()),
                        "model uri": result.model_uri,
                    }
                ),
            }
        )

    @dg.asset(
        **daily,
        kinds={"pytorch", "mlflow", "duckdb"},
        deps=[recommender_model, history, "item_features"],
    )
    def model_evaluation(
        context: dg.AssetExecutionContext,
        config: EvaluationConfig,
        home: HomeResource,
        warehouse_db: WarehouseResource,
        mlflow: MLflowResource,
        training: TrainingResource,
    ):
        """Offline evaluation of the model of day D (the newest version tagged ``partition_date`` = D) on the data
        it was trained on, next to a popularity baseline (ranked lists and ground truth saved for recomputation, by
        day), the modality ablation, then the champion / challenger gate: that version is promoted only if it
        clears the popularity floor (the verdict of the blocking check ``model_beats_popularity`` on the same
        figures) and beats the champion of its day on ``mlflow.champion_metric`` on this same split; the
        ``champion`` alias moves to it unless it holds a later day's version. The decision and reason are in the
        metadata and the ``gate.*`` MLflow tags. The materialization reports the ``evaluation_metrics`` table, the
        figures each protocol is judged by (``figures``: ours, popularity, random order) and the ablation's
        (``ablation``), and links to the evaluation run (the ablation runs are its children) and the version."""
        from recsys_pipeline.content.features import load_item_features
        from recsys_pipeline.registry.model_registry import version_for_partition
        from recsys_pipeline.registry.runs import evaluate_and_gate
        from recsys_pipeline.registry.tracking import judged_figures

        started = time.perf_counter()
        day = one_day(context)
        settings = config.settings()
        tracking_uri = mlflow.resolved_tracking_uri()
        since, until = _training_window(day, window_days)
        with warehouse_db.session(read_only=True) as con:
            data = warehouse.read_interactions(con, until, since)
            try:
                features = load_item_features(con, until)
                tuned, _ = warehouse.read_tuned_params(con)
            except ValueError as exc:
                raise dg.Failure(str(exc)) from exc
        try:
            version = version_for_partition(tracking_uri, mlflow.registered_model_name, day.isoformat()).version
        except LookupError as exc:
            raise dg.Failure(str(exc)) from exc
        experiment_id = mlflow.experiment_id()
        result = evaluate_and_gate(
            data,
            features,
            version,
            _model_config(training, tuned),
            training.build_trainer_config(),
            settings,
            mlflow.champion_policy(),
            tracking_uri,
            experiment_id,
            mlflow.registered_model_name,
            ablation_variants=config.ablation_variants,
            tags=mlflow_tags(context),
            data_source=str(warehouse_db.file()),
        )
        evaluation, run_id = result.evaluation, result.evaluation.run_id
        keep = home.resolved_retention_days()
        tables = [(EVALUATION_METRICS, evaluation.metrics), (EVALUATION_RANKED_LISTS, evaluation.ranked)]
        tables += [(EVALUATION_GROUND_TRUTH, evaluation.truth)]
        if result.ablation is not None:
            tables.append((EVALUATION_ABLATION, result.ablation))
        with warehouse_db.session() as con:
            with warehouse.transaction(con, "evaluation"):  # the tables of one evaluation change together
                for table, frame in tables:
                    rows = frame.assign(partition_date=day)
                    if table is not EVALUATION_ABLATION:
                        rows = rows.assign(mlflow_run_id=run_id)
                    warehouse.replace_partition(con, table, day, rows, keep_days=keep, own_transaction=False)
            table = table_metadata(con, EVALUATION_METRICS)  # every figure; the ranked lists are beside it
        gate, ablation = result.gate, result.ablation
        figures = judged_figures(evaluation.metrics, settings.k).dropna(axis=1, how="all")
        return dg.MaterializeResult(
            metadata={
                **table,
                "seconds": round(time.perf_counter() - started, 2),
                "model_version": str(version),
                "gate.decision": gate.decision,
                "gate.reason": gate.reason,
                "gate.value": figure(gate.value),  # of gate.metric, the champion_metric of the mlflow resource
                **_mlflow_links(tracking_uri, run_id, mlflow.registered_model_name, str(version), experiment_id),
                "figures": frame_table(figures),
                **(
                    {"ablation": frame_table(judged_figures(ablation, settings.k, by="variant").drop(columns="random"))}
                    if ablation is not None
                    else {}
                ),
            }
        )

    # model_evaluation upstream: its blocking check halts publishing in the same run.
    @dg.asset(
        **daily,
        kinds={"duckdb"},
        deps=[recommender_model, model_evaluation, history, "item_features"],
    )
    def recommendations(
        context: dg.AssetExecutionContext,
        config: RecommendationsConfig,
        home: HomeResource,
        warehouse_db: WarehouseResource,
        mlflow: MLflowResource,
    ):
        """The lists of day D: top-K over the catalog as of D for every user with interactions up to the end of D,
        by the champion of day D (the newest version its gate promoted among those of D or earlier days; never a
        challenger), seen items excluded; each row keyed by the day, the model's MLflow run, version and day, and the
        UTC date it was produced. The table keeps every day: D's rows are replaced atomically, days before D -
        (retention - 1) are deleted (``RECSYS_RETENTION_DAYS``, default 30). The lists and the items snapshot
        (titles + popularity fallback) are published as day D (``published/days/D``); the current day readers
        answer from moves to D unless a later day is published (``recsys rollback`` moves it back)."""
        from recsys_pipeline.content.features import load_item_features
        from recsys_pipeline.registry.model_registry import PARTITION_DATE_TAG, champion_for_day, load_version
        from recsys_pipeline.serving.publish import items_snapshot, publish_day, rank_all_users

        started = time.perf_counter()
        day = one_day(context)
        until = day_end(day)
        tracking_uri, name = mlflow.resolved_tracking_uri(), mlflow.registered_model_name
        try:
            champion = champion_for_day(tracking_uri, name, day.isoformat())
        except LookupError as exc:
            raise dg.Failure(str(exc)) from exc
        with warehouse_db.session(read_only=True) as con:
            interactions = con.execute(  # timestamps: users with events newer than the champion are folded in
                "SELECT user_id, item_id, max(timestamp) AS timestamp FROM interactions WHERE timestamp < ? "
                "GROUP BY user_id, item_id",
                [until],
            ).df()
            try:
                features = load_item_features(con, until)
            except ValueError as exc:
                raise dg.Failure(str(exc)) from exc
            titles = con.execute("SELECT item_id, title FROM item_catalog").df()
        if interactions.empty:
            raise dg.Failure(f"no interactions up to {day}: nobody to recommend to")
        model = load_version(tracking_uri, f"models:/{name}/{champion.version}", features)
        model_day = champion.tags.get(PARTITION_DATE_TAG)
        recs = rank_all_users(
            model,
            interactions,
            config.k,
            champion.run_id,
            champion.version,
            datetime.now(UTC).date(),
            partition_date=day,
            model_partition_date=date.fromisoformat(model_day) if model_day else None,
        )
        keep = home.resolved_retention_days()
        with warehouse_db.session() as con:
            written = warehouse.replace_partition(con, RECOMMENDATIONS, day, recs, keep_days=keep)
            table = table_metadata(con, RECOMMENDATIONS, partition_rows=written["rows"])
            days_held = len(warehouse.partition_days(con, RECOMMENDATIONS.name))
            preview = con.execute(
                "SELECT r.user_id, r.rank, c.title, round(r.score, 3) AS score, r.explanation FROM recommendations r "
                "JOIN item_catalog c USING (item_id) WHERE r.partition_date = ? AND r.user_id = "
                "(SELECT min(user_id) FROM recommendations WHERE partition_date = ?) ORDER BY r.rank LIMIT 10",
                [day, day],
            ).df()
        by_id = dict(zip(titles["item_id"].astype(str), titles["title"]))
        preview["because you liked"] = preview.pop("explanation").map(lambda text: _because_titles(text, by_id))
        published = publish_day(
            home.paths(), day, recs, items_snapshot(interactions, features, titles), keep, model=model
        )
        return dg.MaterializeResult(
            metadata={
                **table,  # row_count: every day held; partition_row_count: this day's lists
                "seconds": round(time.perf_counter() - started, 2),
                "model_version": str(champion.version),
                "days_deleted": written["days_deleted"],  # by retention (RECSYS_RETENTION_DAYS)
                "published_current_day": published["current"].isoformat(),
                **_mlflow_links(tracking_uri, champion.run_id, name, str(champion.version)),  # the champion's training
                "details": key_value_table(
                    {
                        "model day (champion of this day)": model_day or "(unknown: registered before days)",
                        "users": int(recs["user_id"].nunique()),
                        "distinct items": int(recs["item_id"].nunique()),
                        "users folded in (interactions newer than the champion)": int(
                            recs.loc[recs["strategy"] != "personalized", "user_id"].nunique()
                        ),
                        "days held (table)": days_held,
                        "rows deleted by retention": written["rows_deleted"],
                        "retention (days)": keep,
                        "published days deleted": ", ".join(str(d) for d in published["removed"]) or "none",
                        "current published day moved here": published["moved"],
                    }
                ),
                "preview": dg.MetadataValue.md(preview.to_markdown(index=False)),
            }
        )

    return [recommender_model, model_evaluation, recommendations]


def _because_titles(stored, titles: dict[str, str]) -> str:
    """``"Title A; Title B"``: the titles of a stored explanation's ``because`` (``""`` when not explained)."""
    if not isinstance(stored, str):
        return ""
    return "; ".join(str(titles.get(i, i)) for i in json.loads(stored).get("because", []))


def model_checks(partitions: dg.DailyPartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    """The blocking gate on ``model_evaluation``, one result per day."""

    @dg.asset_check(
        asset="model_evaluation",
        blocking=True,
        partitions_def=partitions,
        description="Gate: our NDCG@10 is at least the popularity baseline's on every evaluated protocol of the "
        "day's evaluation; otherwise that day's recommendations are not published in this run (the day is gated "
        "out: the check fails for that partition).",
    )
    def model_beats_popularity(context: dg.AssetCheckExecutionContext, warehouse_db: WarehouseResource):
        from recsys_pipeline.registry.gate import ndcg_against_popularity

        partitioned = context.has_partition_key or context.has_partition_key_range
        days = sorted({date.fromisoformat(k) for k in context.partition_keys}) if partitioned else []
        with warehouse_db.session(read_only=True) as con:
            if not warehouse.table_exists(con, "evaluation_metrics"):
                return dg.AssetCheckResult(passed=False, metadata={"reason": "no evaluation_metrics table"})
            days = days or warehouse.partition_days(con, "evaluation_metrics")[-1:]  # unpartitioned: the newest
            metrics = con.execute(
                "SELECT partition_date, protocol, model, metric, value FROM evaluation_metrics "
                "WHERE list_contains(?, partition_date)",
                [days],
            ).df()
        verdict = ndcg_against_popularity(metrics)
        return dg.AssetCheckResult(
            passed=verdict["passed"],
            description=verdict["reason"],
            metadata={
                "reason": verdict["reason"],
                "ndcg_at_10": dg.MetadataValue.json(verdict["protocols"]),
                "days": ", ".join(str(d) for d in days),
            },
        )

    return [model_beats_popularity]
