"""Model assets and their check: recommender_model (Lightning + MLflow), model_evaluation (+ the champion gate),
recommendations; the blocking check ``model_beats_popularity``."""

import time
from dataclasses import fields
from datetime import UTC, date, datetime, timedelta

import dagster as dg

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
    """``cutoff_date``: train on interactions up to the end of this UTC day (YYYY-MM-DD); empty = all."""

    cutoff_date: str | None = None


class EvaluationConfig(dg.Config):
    """Evaluation protocols (``evaluation.protocols.EvaluationSettings``; its defaults) and the modality ablation:
    each protocol's model ranks again with only the variant's modalities visible (nothing trained; ``[]`` turns it
    off). The ablation that retrains per variant and fusion is ``benchmarks/ablation.py``."""

    protocols: list[str] = list(_EVALUATION_DEFAULTS.protocols)
    holdout_fraction: float = _EVALUATION_DEFAULTS.holdout_fraction
    cold_fraction: float = _EVALUATION_DEFAULTS.cold_fraction
    temporal_cutoff: str | None = None
    k: int = _EVALUATION_DEFAULTS.k
    seed: int = _EVALUATION_DEFAULTS.seed
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
        (a new version of the registered model)."""
        from recsys_pipeline.content.features import load_item_features
        from recsys_pipeline.registry.runs import train_and_log

        started = time.perf_counter()
        until = _day_end(config.cutoff_date, "cutoff_date")
        with warehouse_db.session(read_only=True) as con:
            data = warehouse.read_interactions(con, until)
            features = load_item_features(con)
        if data.empty:
            raise dg.Failure("no interactions to train on: materialize the interactions partitions first")
        result = train_and_log(
            data,
            features,
            training.build_model_config(),
            training.build_trainer_config(),
            mlflow.resolved_tracking_uri(),
            mlflow.experiment_id(),
            mlflow.registered_model_name,
            run_name="recommender_model",
            tags={"dagster.run_id": context.run.run_id},
        )
        stats = {k: v for k, v in result.stats.items() if isinstance(v, (int, float))}
        return dg.MaterializeResult(
            metadata={
                "seconds": round(time.perf_counter() - started, 2),
                "rows": len(data),  # interactions trained on
                "mlflow_run_id": result.run_id,
                "model_uri": result.model_uri,
                "registered_model": mlflow.registered_model_name,
                "model_version": result.model_version or "",
                "interactions": len(data),
                **stats,
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
        this same split; the decision and reason are in the metadata and the ``gate.*`` MLflow tags."""
        from recsys_pipeline.content.features import load_item_features
        from recsys_pipeline.evaluation.ablation import ablation_table
        from recsys_pipeline.registry.model_registry import latest_version
        from recsys_pipeline.registry.runs import evaluate_and_gate, metrics_table

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
        result = evaluate_and_gate(
            data,
            features,
            version,
            training.build_model_config(),
            training.build_trainer_config(),
            settings,
            mlflow.champion_policy(),
            tracking_uri,
            mlflow.experiment_id(),
            mlflow.registered_model_name,
            ablation_variants=config.ablation_variants,
            tags={"dagster.run_id": context.run.run_id},
        )
        evaluation, run_id = result.evaluation, result.evaluation.run_id
        # the tables of one evaluation change together
        with warehouse_db.session() as con, warehouse.transaction(con, "evaluation"):
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
        flat = {f"{r.protocol}.{r.model}.{r.metric}": float(r.value) for r in evaluation.metrics.itertuples()}
        ablation = result.ablation
        return dg.MaterializeResult(
            metadata={
                "seconds": round(time.perf_counter() - started, 2),
                "rows": len(evaluation.ranked),  # ranked-list rows saved
                "mlflow_run_id": run_id,
                "model_version": str(version),
                **result.gate.tags(),
                "metrics": dg.MetadataValue.md(metrics_table(evaluation.metrics)),
                "details": dg.MetadataValue.json(evaluation.details),
                **(
                    {
                        "ablation": dg.MetadataValue.md(ablation_table(ablation)),
                        "ablation_mlflow_run_id": str(ablation["mlflow_run_id"].iloc[0]) if len(ablation) else "",
                    }
                    if ablation is not None
                    else {}
                ),
                **{k: v for k, v in flat.items() if any(m in k for m in ("ndcg_at_10", "recall_at_20"))},
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
            preview = con.execute(
                "SELECT r.user_id, r.rank, c.title, round(r.score, 3) AS score FROM recommendations r "
                "JOIN item_catalog c USING (item_id) WHERE r.user_id = (SELECT min(user_id) FROM recommendations) "
                "ORDER BY r.rank LIMIT 10"
            ).df()
        publish(home.paths(), recs, items_snapshot(interactions, features, titles))
        return dg.MaterializeResult(
            metadata={
                "seconds": round(time.perf_counter() - started, 2),
                "rows": len(recs),
                "users": int(recs["user_id"].nunique()),
                "distinct_items": int(recs["item_id"].nunique()),
                "mlflow_run_id": champion.run_id,
                "model_version": str(champion.version),
                "cold_prior_users": int(recs.loc[recs["strategy"] != "personalized", "user_id"].nunique()),
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
