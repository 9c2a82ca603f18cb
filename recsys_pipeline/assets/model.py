"""Model assets and their check: recommender_model (Lightning + MLflow), model_evaluation (+ the champion gate),
recommendations; the blocking check ``model_beats_popularity``."""

import time
from dataclasses import fields
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from recsys_pipeline.assets.metadata import figure, frame_table, key_value_table, mlflow_tags, table_metadata
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
    """``cutoff_date``: train on interactions up to the end of this UTC day (YYYY-MM-DD); empty = all.
    ``warm_start``: start from the champion's weights and train ``model.warm_start_epochs`` epochs on every
    interaction (the new ones, and the older ones as replay) instead of a full retrain; a full retrain when there is
    no champion yet or its architecture differs from the configured one (the metadata says which). Unset: the
    ``training`` resource's ``warm_start`` (``RECSYS_WARM_START``, default off)."""

    cutoff_date: str | None = None
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


def _champion_to_start_from(wanted: bool, tracking_uri: str, name: str, features):
    """``(model, note)``: the champion to warm start from (``None`` for a full retrain) and what happened, in
    words, for the materialization."""
    if not wanted:
        return None, "off (full retrain)"
    from recsys_pipeline.registry.model_registry import champion_uri, champion_version, load_version

    try:
        version = champion_version(tracking_uri, name).version
    except LookupError:
        return None, "no champion yet: full retrain"
    return load_version(tracking_uri, champion_uri(name), features), f"from champion version {version}"


class RecommendationsConfig(dg.Config):
    """``k``: list length per user."""

    k: int = 20


def model_assets() -> list[dg.AssetsDefinition]:
    """``recommender_model``, ``model_evaluation`` and ``recommendations``."""

    @dg.asset(pool=DUCKDB_POOL, group_name="model", kinds={"pytorch", "mlflow"}, deps=["interactions", "item_features"])
    def recommender_model(
        context: dg.AssetExecutionContext,
        config: TrainConfig,
        warehouse_db: WarehouseResource,
        mlflow: MLflowResource,
        training: TrainingResource,
    ):
        """The ranker trained with Lightning on the interactions up to the cutoff; tracked and registered in MLflow
        (a new version of the registered model). The materialization links to the training run and the version;
        training figures beyond the headline ones are in its ``training`` table."""
        from recsys_pipeline.content.features import load_item_features
        from recsys_pipeline.registry.runs import train_and_log

        started = time.perf_counter()
        until = _day_end(config.cutoff_date, "cutoff_date")
        with warehouse_db.session(read_only=True) as con:
            data = warehouse.read_interactions(con, until)
            features = load_item_features(con)
        if data.empty:
            raise dg.Failure("no interactions to train on: materialize the interactions partitions first")
        tracking_uri, experiment_id = mlflow.resolved_tracking_uri(), mlflow.experiment_id()
        warm_start = training.warm_start_default() if config.warm_start is None else config.warm_start
        init, warm_note = _champion_to_start_from(warm_start, tracking_uri, mlflow.registered_model_name, features)
        result = train_and_log(
            data,
            features,
            training.build_model_config(),
            training.build_trainer_config(),
            tracking_uri,
            experiment_id,
            mlflow.registered_model_name,
            run_name="recommender_model",
            tags=mlflow_tags(context),
            data_source=str(warehouse_db.file()),
            init=init,
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
                **_mlflow_links(
                    tracking_uri, result.run_id, mlflow.registered_model_name, result.model_version, experiment_id
                ),
                "interactions": len(data),  # trained on
                "epochs_trained": int(stats["epochs_trained"]),
                "train_seconds": round(float(stats["train_seconds"]), 2),
                "samples_per_second": round(float(stats["samples_per_second"]), 1),
                "training": key_value_table(
                    {
                        "best validation NDCG@10": (
                            stats["best_val_ndcg_at_10"]
                            if stats["n_val_users"]
                            else "no validation split (val_fraction 0): every epoch on every interaction"
                        ),
                        "best epoch (0-based)": stats["best_epoch"] if stats["n_val_users"] else "",
                        "refit on every interaction": stats["refit"],
                        "warm start": warm_note,
                        "interactions in the last fit": stats["n_train_interactions"],
                        "validation users": stats["n_val_users"],
                        "items with a trained history embedding": stats["history_items_trained"],
                        "users": int(data["user_id"].nunique()),
                        "model uri": result.model_uri,
                    }
                ),
            }
        )

    @dg.asset(
        pool=DUCKDB_POOL,
        group_name="model",
        kinds={"pytorch", "mlflow", "duckdb"},
        deps=[recommender_model, "interactions", "item_features"],
    )
    def model_evaluation(
        context: dg.AssetExecutionContext,
        config: EvaluationConfig,
        warehouse_db: WarehouseResource,
        mlflow: MLflowResource,
        training: TrainingResource,
    ):
        """Offline evaluation of the newest model version's config next to a popularity baseline (ranked lists and
        ground truth saved for recomputation), the modality ablation, then the champion / challenger gate: that
        version takes the ``champion`` alias only if it clears the popularity floor (the verdict of the blocking
        check ``model_beats_popularity`` on the same figures) and beats the champion on ``mlflow.champion_metric`` on
        this same split; the decision and reason are in the metadata and the ``gate.*`` MLflow tags. The
        materialization reports the ``evaluation_metrics`` table, the figures each protocol is judged by (``figures``:
        ours, popularity, random order) and the ablation's (``ablation``), and links to the evaluation run (the
        ablation runs are its children) and the version."""
        from recsys_pipeline.content.features import load_item_features
        from recsys_pipeline.registry.model_registry import latest_version
        from recsys_pipeline.registry.runs import evaluate_and_gate
        from recsys_pipeline.registry.tracking import judged_figures

        started = time.perf_counter()
        settings = config.settings()
        tracking_uri = mlflow.resolved_tracking_uri()
        with warehouse_db.session(read_only=True) as con:
            data = warehouse.read_interactions(con)
            features = load_item_features(con)
        try:
            version = latest_version(tracking_uri, mlflow.registered_model_name).version
        except LookupError as exc:
            raise dg.Failure(str(exc)) from exc
        experiment_id = mlflow.experiment_id()
        result = evaluate_and_gate(
            data,
            features,
            version,
            training.build_model_config(),
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
        with warehouse_db.session() as con:
            with warehouse.transaction(con, "evaluation"):  # the tables of one evaluation change together
                if result.ablation is not None:
                    warehouse.replace_table(con, EVALUATION_ABLATION, result.ablation, own_transaction=False)
                warehouse.replace_table(
                    con, EVALUATION_METRICS, evaluation.metrics.assign(mlflow_run_id=run_id), own_transaction=False
                )
                warehouse.replace_table(
                    con, EVALUATION_RANKED_LISTS, evaluation.ranked.assign(mlflow_run_id=run_id), own_transaction=False
                )
                warehouse.replace_table(
                    con, EVALUATION_GROUND_TRUTH, evaluation.truth.assign(mlflow_run_id=run_id), own_transaction=False
                )
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
        pool=DUCKDB_POOL,
        group_name="model",
        kinds={"duckdb"},
        deps=[recommender_model, model_evaluation, "interactions", "item_features"],
    )
    def recommendations(
        config: RecommendationsConfig, home: HomeResource, warehouse_db: WarehouseResource, mlflow: MLflowResource
    ):
        """Top-K over the whole catalog for every known user by the ``champion`` model version (never a
        challenger), seen items excluded; keyed by the model's MLflow run id and version and the UTC date produced.
        The table is replaced atomically; the lists and the items snapshot (titles + popularity fallback) are
        published for ``recsys recommend`` / ``recsys serve``."""
        from recsys_pipeline.content.features import load_item_features
        from recsys_pipeline.registry.model_registry import champion_version, load_version
        from recsys_pipeline.serving.publish import items_snapshot, publish, rank_all_users

        started = time.perf_counter()
        tracking_uri = mlflow.resolved_tracking_uri()
        try:
            champion = champion_version(tracking_uri, mlflow.registered_model_name)
        except LookupError as exc:
            raise dg.Failure(str(exc)) from exc
        with warehouse_db.session(read_only=True) as con:
            interactions = con.execute("SELECT DISTINCT user_id, item_id FROM interactions").df()
            features = load_item_features(con)
            titles = con.execute("SELECT item_id, title FROM item_catalog").df()
        model = load_version(tracking_uri, f"models:/{mlflow.registered_model_name}/{champion.version}", features)
        recs = rank_all_users(
            model, interactions, config.k, champion.run_id, champion.version, datetime.now(UTC).date()
        )
        with warehouse_db.session() as con:
            warehouse.replace_table(con, RECOMMENDATIONS, recs)
            table = table_metadata(con, RECOMMENDATIONS)
            preview = con.execute(
                "SELECT r.user_id, r.rank, c.title, round(r.score, 3) AS score FROM recommendations r "
                "JOIN item_catalog c USING (item_id) WHERE r.user_id = (SELECT min(user_id) FROM recommendations) "
                "ORDER BY r.rank LIMIT 10"
            ).df()
        publish(home.paths(), recs, items_snapshot(interactions, features, titles))
        name = mlflow.registered_model_name
        return dg.MaterializeResult(
            metadata={
                **table,
                "seconds": round(time.perf_counter() - started, 2),
                "users": int(recs["user_id"].nunique()),
                "distinct_items": int(recs["item_id"].nunique()),
                "cold_prior_users": int(recs.loc[recs["strategy"] != "personalized", "user_id"].nunique()),
                "model_version": str(champion.version),
                **_mlflow_links(tracking_uri, champion.run_id, name, str(champion.version)),  # the champion's training
                "preview": dg.MetadataValue.md(preview.to_markdown(index=False)),
            }
        )

    return [recommender_model, model_evaluation, recommendations]


def model_checks() -> list[dg.AssetChecksDefinition]:
    """The blocking gate on ``model_evaluation``."""

    @dg.asset_check(
        asset="model_evaluation",
        blocking=True,
        description="Gate: our NDCG@10 is at least the popularity baseline's on every evaluated protocol; otherwise "
        "recommendations are not published in this run.",
    )
    def model_beats_popularity(warehouse_db: WarehouseResource) -> dg.AssetCheckResult:
        from recsys_pipeline.registry.gate import ndcg_against_popularity

        with warehouse_db.session(read_only=True) as con:
            if not warehouse.table_exists(con, "evaluation_metrics"):
                return dg.AssetCheckResult(passed=False, metadata={"reason": "no evaluation_metrics table"})
            metrics = con.execute("SELECT protocol, model, metric, value FROM evaluation_metrics").df()
        verdict = ndcg_against_popularity(metrics)
        return dg.AssetCheckResult(
            passed=verdict["passed"],
            description=verdict["reason"],
            metadata={"reason": verdict["reason"], "ndcg_at_10": dg.MetadataValue.json(verdict["protocols"])},
        )

    return [model_beats_popularity]
