"""Model assets: recommender_model (Lightning + MLflow), model_evaluation, recommendations."""


import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import dagster as dg
import pandas as pd

from recsys_pipeline import warehouse
from recsys_pipeline.assets.content import item_features
from recsys_pipeline.assets.ingestion import interactions
from recsys_pipeline.features import load_item_content
from recsys_pipeline.resources import MLflowResource, TrainingResource, WarehouseResource
from recsys_pipeline.settings import HomePaths
from recsys_pipeline.snapshot import ITEMS, RECOMMENDATIONS, publish_snapshot

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


@dg.asset(pool="duckdb", group_name="model", kinds={"pytorch", "mlflow"}, deps=[interactions, item_features])
def recommender_model(
    context: dg.AssetExecutionContext,
    config: TrainConfig,
    warehouse_db: WarehouseResource,
    mlflow: MLflowResource,
    training: TrainingResource,
):
    """The ranker trained with Lightning on the interactions up to the cutoff; tracked and registered in MLflow."""
    started = time.perf_counter()
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


class EvaluationConfig(dg.Config):
    """Evaluation protocol: ``user_last_fraction``, ``item_cold_start``, ``temporal`` (needs ``temporal_cutoff``)."""

    protocols: list[str] = ["user_last_fraction", "item_cold_start"]
    holdout_fraction: float = 0.2
    cold_fraction: float = 0.2
    temporal_cutoff: Optional[str] = None
    k: int = 20
    seed: int = 0
    # Modality ablation (runs.ABLATION_VARIANTS) on the same splits: one more training per distinct variant and
    # protocol (variants equal to another, or to the evaluated model, are not retrained). Empty list = off.
    ablation_variants: list[str] = ["text", "text_image", "all", "all_concat"]


@dg.asset(pool="duckdb", group_name="model", kinds={"pytorch", "mlflow", "duckdb"},
          deps=[recommender_model, interactions, item_features])
def model_evaluation(
    config: EvaluationConfig, warehouse_db: WarehouseResource, mlflow: MLflowResource, training: TrainingResource
):
    """Offline evaluation of the newest model version's config next to a popularity baseline (ranked lists and
    ground truth saved for recomputation), then the champion / challenger gate: that version takes the
    ``champion`` alias only if it beats the champion on ``mlflow.champion_metric`` on this same split
    (``publish.gate_model_version``); the decision and reason are in the metadata and the ``gate.*`` MLflow tags."""
    started = time.perf_counter()
    from functools import partial

    from recsys_pipeline.publish import gate_model_version, latest_model_run, score_config, version_model_config
    from recsys_pipeline.runs import ablation_and_log, ablation_table, evaluate_and_log, image_groups, metrics_table

    with warehouse_db.session(read_only=True) as con:
        data = warehouse.read_interactions(con)
        content = load_item_content(con)
        challenger = latest_model_run(con)
    cutoff = None
    if config.temporal_cutoff:
        cutoff = _cutoff(config.temporal_cutoff) - timedelta(days=1)
    split_args = dict(holdout_fraction=config.holdout_fraction, cold_fraction=config.cold_fraction,
                      temporal_cutoff=cutoff, seed=config.seed)
    version, policy = challenger["model_version"], mlflow.champion_policy()
    trainer_config = training.build_trainer_config()
    model_config = version_model_config(mlflow.tracking_uri, mlflow.registered_model_name, version)
    result = evaluate_and_log(
        data, content, model_config or training.build_model_config(), trainer_config, mlflow.tracking_uri,
        mlflow.experiment_id(), protocols=config.protocols, k=config.k, item_groups=image_groups(content), **split_args,
    )
    ablation = None
    if config.ablation_variants:
        ablation = ablation_and_log(
            data, content, model_config or training.build_model_config(), trainer_config, mlflow.tracking_uri,
            mlflow.experiment_id(), reference=result.metrics, protocols=config.protocols, k=config.k,
            variants=config.ablation_variants, **split_args,
        )
    with warehouse_db.session() as con:
        if ablation is not None:
            warehouse.replace_table(con, "evaluation_ablation", ablation)
        warehouse.replace_table(con, "evaluation_metrics", result.metrics.assign(mlflow_run_id=result.run_id))
        warehouse.replace_table(con, "evaluation_ranked_lists", result.ranked.assign(mlflow_run_id=result.run_id))
        warehouse.replace_table(con, "evaluation_ground_truth", result.truth.assign(mlflow_run_id=result.run_id))
    rescore = partial(score_config, data, content, trainer_config=trainer_config, policy=policy, k=config.k,
                      **split_args)
    gate = gate_model_version(mlflow.tracking_uri, mlflow.registered_model_name, version, result.metrics, policy,
                              rescore_champion=rescore, evaluation_run_id=result.run_id)
    flat = {f"{r.protocol}.{r.model}.{r.metric}": float(r.value) for r in result.metrics.itertuples()}
    return dg.MaterializeResult(
        metadata={
            "seconds": round(time.perf_counter() - started, 2),
            "rows": len(result.ranked),  # ranked-list rows saved
            "mlflow_run_id": result.run_id,
            "model_version": version,
            **gate.tags(),
            "metrics": dg.MetadataValue.md(metrics_table(result.metrics)),
            "details": dg.MetadataValue.json(result.details),
            **({"ablation": dg.MetadataValue.md(ablation_table(ablation)),
                "ablation_mlflow_run_id": str(ablation["mlflow_run_id"].iloc[0]) if len(ablation) else ""} if ablation is not None else {}),
            **{k: v for k, v in flat.items() if any(m in k for m in ("ndcg_at_10", "recall_at_20"))},
        }
    )


class RecommendationsConfig(dg.Config):
    """``k``: list length per user."""

    k: int = 20


# model_evaluation upstream: its blocking check (assets/checks.py) halts publishing in the same run.
@dg.asset(
    pool="duckdb",
    group_name="model", kinds={"duckdb"}, deps=[recommender_model, model_evaluation, interactions, item_features]
)
def recommendations(config: RecommendationsConfig, warehouse_db: WarehouseResource, mlflow: MLflowResource):
    """Top-K over the whole catalog for every known user by the ``champion`` model version (never a challenger),
    seen items excluded; keyed by the model's MLflow run id and version and the UTC date produced. The table is
    replaced atomically; the item popularity list (titles + fallback for users without history) is published."""
    started = time.perf_counter()
    from recsys_pipeline.publish import champion_version, item_popularity, load_model, top_k_for_all_users

    champion = champion_version(mlflow.tracking_uri, mlflow.registered_model_name)
    with warehouse_db.session(read_only=True) as con:
        seen = con.execute("SELECT DISTINCT user_id, item_id FROM interactions").df()
        content = load_item_content(con)
        popular = item_popularity(con)
    model = load_model(mlflow.tracking_uri, f"models:/{mlflow.registered_model_name}/{champion.version}", content)
    recs = top_k_for_all_users(model, seen, config.k)
    recs["model_run_id"] = champion.run_id
    recs["model_version"] = str(champion.version)
    recs["produced_on"] = datetime.now(timezone.utc).date()
    with warehouse_db.session() as con:
        warehouse.replace_table(con, "recommendations", recs)
        preview = con.execute(
            "SELECT r.user_id, r.rank, c.title, round(r.score, 3) AS score FROM recommendations r "
            "JOIN item_catalog c USING (item_id) WHERE r.user_id = (SELECT min(user_id) FROM recommendations) "
            "ORDER BY r.rank LIMIT 10"
        ).df()
    paths = HomePaths(Path(warehouse_db.path).parent)
    publish_snapshot(paths, popular, ITEMS)  # items first: every published list's items have titles
    publish_snapshot(paths, recs, RECOMMENDATIONS)  # what `recsys recommend` / `serve` read, lock-free
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
