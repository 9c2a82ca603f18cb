"""Tracked runs (no Dagster import): train a model and evaluate protocols, each as one MLflow run.

Used by the ``recommender_model`` and ``model_evaluation`` assets and usable from a notebook.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import mlflow
import numpy as np
import pandas as pd

from recsys_pipeline import evaluation, tracking
from recsys_pipeline.model import ItemContent, ModelConfig, PopularityRecommender, TrainerConfig, train_recommender

PROTOCOLS = ("user_last_fraction", "item_cold_start", "temporal")


@dataclass
class TrainResult:
    """What a tracked training produced: the model, its MLflow run id, model URI and registry version."""

    model: object
    run_id: str
    model_uri: str
    model_version: str | None
    stats: dict


def _mlflow_logger(tracking_uri: str, run_id: str):
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(tracking_uri=tracking_uri, run_id=run_id, log_model=False)


def train_and_log(
    interactions: pd.DataFrame,
    content: ItemContent,
    model_config: ModelConfig,
    trainer_config: TrainerConfig,
    tracking_uri: str,
    experiment_id: str,
    registered_model_name: str | None,
    run_name: str = "train",
    tags: dict[str, str] | None = None,
) -> TrainResult:
    """Train on ``interactions`` and log params, per-epoch metrics (via Lightning's ``MLFlowLogger``), final
    metrics and the model (pyfunc, safetensors weights) in one MLflow run; register a model version.

    Raises:
        ValueError: from ``train_recommender`` on empty or inconsistent inputs.
    """
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        mlflow.log_params({f"model.{k}": v for k, v in dataclasses.asdict(model_config).items()})
        mlflow.log_params({f"trainer.{k}": v for k, v in dataclasses.asdict(trainer_config).items()})
        mlflow.log_params(
            {
                "data.interactions": len(interactions),
                "data.users": interactions["user_id"].nunique(),
                "data.items_with_interactions": interactions["item_id"].nunique(),
                "data.catalog_items": len(content.item_ids),
                "data.modalities": ",".join(content.modalities),
                "data.last_timestamp_utc": str(interactions["timestamp"].max()),
            }
        )
        model, stats = train_recommender(
            interactions, content, model_config, trainer_config, logger=_mlflow_logger(tracking_uri, run.info.run_id)
        )
        mlflow.log_metrics({k: float(v) for k, v in stats.items() if isinstance(v, (int, float))})
        model_uri, version = tracking.log_recommender(
            model, content, interactions[["user_id", "item_id"]].drop_duplicates(), registered_model_name
        )
    return TrainResult(model, run.info.run_id, model_uri, version, stats)


@dataclass
class EvaluationResult:
    """Metrics per protocol and model, and the ranked lists / ground truth to recompute them."""

    run_id: str
    metrics: pd.DataFrame  # protocol, model, metric, value
    ranked: pd.DataFrame  # protocol, model, user_id, rank, item_id, score
    truth: pd.DataFrame  # protocol, user_id, item_id
    details: dict = field(default_factory=dict)


def make_split(interactions: pd.DataFrame, protocol: str, *, holdout_fraction: float, cold_fraction: float,
               temporal_cutoff: datetime | None, seed: int) -> evaluation.Split:
    """The train/test split of one protocol.

    Raises:
        ValueError: unknown protocol, or ``temporal`` without a cutoff.
    """
    if protocol == "user_last_fraction":
        return evaluation.split_user_last_fraction(interactions, fraction=holdout_fraction)
    if protocol == "item_cold_start":
        return evaluation.split_item_cold_start(interactions, fraction=cold_fraction, seed=seed)
    if protocol == "temporal":
        if temporal_cutoff is None:
            raise ValueError("protocol 'temporal' needs temporal_cutoff (a UTC date)")
        return evaluation.split_temporal(interactions, temporal_cutoff)
    raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")


def evaluate_and_log(
    interactions: pd.DataFrame,
    content: ItemContent,
    model_config: ModelConfig,
    trainer_config: TrainerConfig,
    tracking_uri: str,
    experiment_id: str,
    protocols: Sequence[str] = ("user_last_fraction", "item_cold_start"),
    holdout_fraction: float = 0.2,
    cold_fraction: float = 0.2,
    temporal_cutoff: datetime | None = None,
    k: int = 20,
    seed: int = 0,
) -> EvaluationResult:
    """For each protocol: split, train our model and the popularity baseline on the train part, rank the test
    users' candidates, and compute Recall@10, Recall@K, NDCG@10 and coverage overall and for warm / cold items
    (``evaluation.evaluate_split``; for ``item_cold_start`` also ``cold_candidates_*``: ranking among the held-out
    items only, next to a random ranker's expected recall). One MLflow run; metric names
    ``{protocol}.{model}.{metric}``. The saved ranked lists rank all unseen items, or only the held-out items for
    ``item_cold_start``.
    """
    mlflow.set_tracking_uri(tracking_uri)
    rows, ranked_all, truth_all, details = [], [], [], {}
    catalog = list(content.item_ids)
    with mlflow.start_run(experiment_id=experiment_id, run_name="evaluation") as run:
        mlflow.log_params(
            {"protocols": ",".join(protocols), "holdout_fraction": holdout_fraction, "cold_fraction": cold_fraction,
             "temporal_cutoff": str(temporal_cutoff), "k": k, "seed": seed}
        )
        for protocol in protocols:
            split = make_split(interactions, protocol, holdout_fraction=holdout_fraction,
                               cold_fraction=cold_fraction, temporal_cutoff=temporal_cutoff, seed=seed)
            candidates = "cold" if protocol == "item_cold_start" else "all"
            started = time.perf_counter()
            ours, stats = train_recommender(split.train, content, model_config, trainer_config)
            details[protocol] = {"train_seconds": round(time.perf_counter() - started, 1),
                                 "test_users": int(split.test["user_id"].nunique()),
                                 "test_interactions": len(split.test), "epochs": stats.get("epochs_trained")}
            popularity = PopularityRecommender().fit(split.train)
            for name, model in (("ours", ours), ("popularity", popularity)):
                result = evaluation.evaluate_split(model, split, catalog, k=k)
                for metric, value in result.items():
                    rows.append((protocol, name, metric, float(value)))
                    if value is not None and np.isfinite(value):
                        mlflow.log_metric(f"{protocol}.{name}.{metric}", float(value))
                ranked = evaluation.rank_for_split(model, split, k, candidates, catalog)
                ranked_all.append(ranked.assign(protocol=protocol, model=name))
            truth_all.append(split.test[["user_id", "item_id"]].assign(protocol=protocol))
        metrics = pd.DataFrame(rows, columns=["protocol", "model", "metric", "value"])
        mlflow.log_dict(details, "evaluation_details.json")
        mlflow.log_text(metrics_table(metrics), "evaluation.md")
    ranked = pd.concat(ranked_all, ignore_index=True)[["protocol", "model", "user_id", "rank", "item_id", "score"]]
    truth = pd.concat(truth_all, ignore_index=True)[["protocol", "user_id", "item_id"]]
    return EvaluationResult(run.info.run_id, metrics, ranked, truth, details)


def metrics_table(metrics: pd.DataFrame) -> str:
    """Markdown table: one row per (protocol, model), one column per metric."""
    wide = metrics.pivot_table(index=["protocol", "model"], columns="metric", values="value", aggfunc="first")
    return wide.round(4).reset_index().to_markdown(index=False)
