"""Model assets: recommender_model (Lightning + MLflow), model_evaluation, recommendations."""


from datetime import date, datetime, timedelta, timezone
from typing import Optional

import dagster as dg
import pandas as pd

from recsys_pipeline import warehouse
from recsys_pipeline.assets.content import item_features
from recsys_pipeline.assets.ingestion import interactions
from recsys_pipeline.features import load_item_content
from recsys_pipeline.resources import MLflowResource, TrainingResource, WarehouseResource

MODEL_RUNS_COLUMNS = ["run_id", "model_uri", "model_version", "trained_at", "cutoff_utc", "interactions"]


def _cutoff(day: Optional[str]) -> datetime | None:
    if not day:
        return None
    try:
        return datetime.combine(date.fromisoformat(day), datetime.min.time()) + timedelta(days=1)
    except ValueError as exc:
        raise dg.Failure(f"cutoff_date={day!r} is not a YYYY-MM-DD date") from exc


class TrainConfig(dg.Config):
    """``cutoff_date``: train on interactions up to the end of this UTC day (YYYY-MM-DD); empty = all."""

    cutoff_date: Optional[str] = None


@dg.asset(group_name="model", kinds={"pytorch", "mlflow"}, deps=[interactions, item_features])
def recommender_model(
    context: dg.AssetExecutionContext,
    config: TrainConfig,
    warehouse_db: WarehouseResource,
    mlflow: MLflowResource,
    training: TrainingResource,
):
    """The ranker trained with Lightning on the interactions up to the cutoff; tracked and registered in MLflow."""
    from recsys_pipeline.runs import train_and_log

    until = _cutoff(config.cutoff_date)
    with warehouse_db.session(read_only=True) as con:
        data = warehouse.read_interactions(con, until)
        content = load_item_content(con)
    if data.empty:
        raise dg.Failure("no interactions to train on: materialize the interactions partitions first")
    result = train_and_log(
        data, content, training.build_model_config(), training.build_trainer_config(), mlflow.tracking_uri,
        mlflow.experiment_id(), mlflow.registered_model_name, run_name="recommender_model",
        tags={"dagster.run_id": context.run_id},
    )
    record = pd.DataFrame(
        [[result.run_id, result.model_uri, result.model_version, datetime.now(timezone.utc).replace(tzinfo=None),
          until, len(data)]],
        columns=MODEL_RUNS_COLUMNS,
    )
    with warehouse_db.session() as con:
        con.execute(
            "CREATE TABLE IF NOT EXISTS model_runs (run_id VARCHAR PRIMARY KEY, model_uri VARCHAR, "
            "model_version VARCHAR, trained_at TIMESTAMP, cutoff_utc TIMESTAMP, interactions BIGINT)"
        )
        with warehouse.transaction(con):
            warehouse.insert_frame(con, "model_runs", record)
    stats = {k: v for k, v in result.stats.items() if isinstance(v, (int, float))}
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": result.run_id,
            "model_uri": result.model_uri,
            "registered_model": mlflow.registered_model_name,
            "model_version": result.model_version or "",
            "interactions": len(data),
            **stats,
        }
    )


class EvaluationConfig(dg.Config):
    """Evaluation protocol: ``user_last_fraction``, ``item_cold_start``, ``temporal`` (needs ``temporal_cutoff``)."""

    protocols: list[str] = ["user_last_fraction", "item_cold_start"]
    holdout_fraction: float = 0.2
    cold_fraction: float = 0.2
    temporal_cutoff: Optional[str] = None
    k: int = 20
    seed: int = 0


@dg.asset(group_name="model", kinds={"pytorch", "mlflow", "duckdb"}, deps=[interactions, item_features])
def model_evaluation(
    config: EvaluationConfig, warehouse_db: WarehouseResource, mlflow: MLflowResource, training: TrainingResource
):
    """Offline evaluation next to a popularity baseline; ranked lists and ground truth saved for recomputation."""
    from recsys_pipeline.runs import evaluate_and_log, metrics_table

    with warehouse_db.session(read_only=True) as con:
        data = warehouse.read_interactions(con)
        content = load_item_content(con)
    cutoff = None
    if config.temporal_cutoff:
        cutoff = _cutoff(config.temporal_cutoff) - timedelta(days=1)
    result = evaluate_and_log(
        data, content, training.build_model_config(), training.build_trainer_config(), mlflow.tracking_uri,
        mlflow.experiment_id(), protocols=config.protocols, holdout_fraction=config.holdout_fraction,
        cold_fraction=config.cold_fraction, temporal_cutoff=cutoff, k=config.k, seed=config.seed,
    )
    with warehouse_db.session() as con:
        warehouse.replace_table(con, "evaluation_metrics", result.metrics.assign(mlflow_run_id=result.run_id))
        warehouse.replace_table(con, "evaluation_ranked_lists", result.ranked.assign(mlflow_run_id=result.run_id))
        warehouse.replace_table(con, "evaluation_ground_truth", result.truth.assign(mlflow_run_id=result.run_id))
    flat = {f"{r.protocol}.{r.model}.{r.metric}": float(r.value) for r in result.metrics.itertuples()}
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": result.run_id,
            "metrics": dg.MetadataValue.md(metrics_table(result.metrics)),
            "details": dg.MetadataValue.json(result.details),
            **{k: v for k, v in flat.items() if any(m in k for m in ("ndcg_at_10", "recall_at_20"))},
        }
    )


class RecommendationsConfig(dg.Config):
    """``k``: list length per user."""

    k: int = 20


@dg.asset(group_name="model", kinds={"duckdb"}, deps=[recommender_model, interactions, item_features])
def recommendations(config: RecommendationsConfig, warehouse_db: WarehouseResource, mlflow: MLflowResource):
    """Top-K over the whole catalog for every known user, seen items excluded; keyed by the model's MLflow run id
    and the UTC date produced. The table is replaced atomically."""
    from recsys_pipeline.publish import latest_model_run, load_model, top_k_for_all_users

    with warehouse_db.session(read_only=True) as con:
        run = latest_model_run(con)
        seen = con.execute("SELECT DISTINCT user_id, item_id FROM interactions").df()
        content = load_item_content(con)
    model = load_model(mlflow.tracking_uri, run["model_uri"], content)
    recs = top_k_for_all_users(model, seen, config.k)
    recs["model_run_id"] = run["run_id"]
    recs["produced_on"] = datetime.now(timezone.utc).date()
    with warehouse_db.session() as con:
        warehouse.replace_table(con, "recommendations", recs)
        preview = con.execute(
            "SELECT r.user_id, r.rank, c.title, round(r.score, 3) AS score FROM recommendations r "
            "JOIN item_catalog c USING (item_id) WHERE r.user_id = (SELECT min(user_id) FROM recommendations) "
            "ORDER BY r.rank LIMIT 10"
        ).df()
    return dg.MaterializeResult(
        metadata={
            "rows": len(recs),
            "users": int(recs["user_id"].nunique()),
            "distinct_items": int(recs["item_id"].nunique()),
            "mlflow_run_id": run["run_id"],
            "preview": dg.MetadataValue.md(preview.to_markdown(index=False)),
        }
    )
