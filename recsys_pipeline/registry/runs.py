"""Tracked runs (no Dagster import): training, evaluation and the gate, each an MLflow run.

- :func:`train_and_log`: fit a ``TwoTowerRecommender``, log params, per-epoch curves and the pyfunc, register a
  version.
- :func:`evaluate_and_log`: ``evaluation.evaluate_protocols`` in one MLflow run; :func:`ablation_and_log` the
  modality ablation (modalities hidden at inference, nothing trained) in another.
- :func:`evaluate_and_gate`: what ``model_evaluation`` does: evaluate a registered version's config, optionally the
  ablation, then the champion / challenger gate.

Used by the assets and usable from a notebook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import partial

import mlflow
import pandas as pd

from recsys_pipeline.content.features import ItemFeatures
from recsys_pipeline.evaluation.ablation import ablation_table, finite_figures, masked_ablation
from recsys_pipeline.evaluation.evaluate import EvaluationResult, evaluate_protocols, modality_groups
from recsys_pipeline.evaluation.protocols import EvaluationSettings, evaluation_fingerprint
from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
from recsys_pipeline.registry import tracking
from recsys_pipeline.registry.gate import ChampionPolicy, GateDecision
from recsys_pipeline.registry.model_registry import gate_model_version, score_config, version_model_config

__all__ = [
    "TrainResult",
    "TrackedEvaluation",
    "GatedEvaluation",
    "train_and_log",
    "evaluate_and_log",
    "ablation_and_log",
    "evaluate_and_gate",
    "metrics_table",
]


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
    features: ItemFeatures,
    model_config: ModelConfig,
    trainer_config: TrainerConfig,
    tracking_uri: str,
    experiment_id: str,
    registered_model_name: str | None,
    run_name: str = "train",
    tags: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train on ``interactions`` and log params, per-epoch metrics (Lightning's ``MLFlowLogger``), final metrics
    and the model (pyfunc, safetensors weights) in one MLflow run; register a version.

    Raises:
        ValueError: from ``TwoTowerRecommender.fit`` on empty or inconsistent inputs.
    """
    from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {})) as run:
        mlflow.log_params({f"model.{k}": v for k, v in model_config.to_dict().items()})
        mlflow.log_params({f"trainer.{k}": v for k, v in trainer_config.to_dict().items()})
        mlflow.log_params(
            {
                "data.interactions": len(interactions),
                "data.users": interactions["user_id"].nunique(),
                "data.items_with_interactions": interactions["item_id"].nunique(),
                "data.catalog_items": len(features.item_ids),
                "data.modalities": ",".join(features.modalities),
                "data.last_timestamp_utc": str(interactions["timestamp"].max()),
            }
        )
        model = TwoTowerRecommender(
            model_config, trainer_config, logger=_mlflow_logger(tracking_uri, run.info.run_id)
        ).fit(interactions, features)
        stats = model.train_stats
        mlflow.log_metrics({k: float(v) for k, v in stats.items() if isinstance(v, (int, float))})
        tracking.log_training_curves(mlflow.MlflowClient(tracking_uri), run.info.run_id)
        model_uri, version = tracking.log_recommender(model, registered_model_name)
    return TrainResult(model, run.info.run_id, model_uri, version, stats)


@dataclass
class TrackedEvaluation(EvaluationResult):
    """An :class:`~recsys_pipeline.evaluation.evaluate.EvaluationResult` with the MLflow run it was logged in."""

    run_id: str = ""


def evaluate_and_log(
    interactions: pd.DataFrame,
    features: ItemFeatures,
    model_config: ModelConfig,
    trainer_config: TrainerConfig,
    settings: EvaluationSettings,
    tracking_uri: str,
    experiment_id: str,
    tags: Mapping[str, str] | None = None,
) -> TrackedEvaluation:
    """:func:`~recsys_pipeline.evaluation.evaluate.evaluate_protocols` for ``model_config`` (with / without image
    groups) in one MLflow run ``evaluation``: metric names ``{protocol}.{model}.{metric}``, ``evaluation.md``,
    ``evaluation_details.json`` and the chart ``charts/evaluation.png``."""
    from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name="evaluation", tags=dict(tags or {})) as run:
        mlflow.log_params(
            {
                "protocols": ",".join(settings.protocols),
                "holdout_fraction": settings.holdout_fraction,
                "cold_fraction": settings.cold_fraction,
                "temporal_cutoff": str(settings.temporal_cutoff),
                "k": settings.k,
                "seed": settings.seed,
            }
        )
        result = evaluate_protocols(
            lambda: TwoTowerRecommender(model_config, trainer_config),
            interactions,
            features,
            settings,
            modality_groups(features, "image"),
        )
        finite = result.metrics[result.metrics["value"].notna()]
        mlflow.log_metrics({f"{r.protocol}.{r.model}.{r.metric}": float(r.value) for r in finite.itertuples()})
        mlflow.log_dict(result.details, "evaluation_details.json")
        mlflow.log_text(metrics_table(result.metrics), "evaluation.md")
        tracking.log_evaluation_chart(mlflow.MlflowClient(tracking_uri), run.info.run_id, result.metrics)
    return TrackedEvaluation(**{f.name: getattr(result, f.name) for f in fields(result)}, run_id=run.info.run_id)


def ablation_and_log(
    evaluation: EvaluationResult,
    features: ItemFeatures,
    settings: EvaluationSettings,
    variants: Sequence[str],
    tracking_uri: str,
    experiment_id: str,
    tags: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """:func:`~recsys_pipeline.evaluation.ablation.masked_ablation` of ``evaluation``'s models in one MLflow run
    ``ablation`` (metrics ``{variant}.{protocol}.{metric}``, ``ablation.md``); returns its table with
    ``mlflow_run_id``. Trains nothing."""
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name="ablation", tags=dict(tags or {})) as run:
        mlflow.log_params(
            {
                "variants": ",".join(variants),
                "protocols": ",".join(settings.protocols),
                "seed": settings.seed,
                "modalities": ",".join(features.modality_names),
                "method": "modalities hidden at inference",
            }
        )
        table = masked_ablation(evaluation, features, settings.k, variants)
        mlflow.log_metrics(finite_figures(table))
        mlflow.log_text(ablation_table(table), "ablation.md")
    return table.assign(mlflow_run_id=run.info.run_id)


@dataclass
class GatedEvaluation:
    """What :func:`evaluate_and_gate` produced: the evaluation, the ablation (or ``None``) and the gate decision."""

    version: str
    evaluation: TrackedEvaluation
    gate: GateDecision
    ablation: pd.DataFrame | None = None
    extra: dict = field(default_factory=dict)


def evaluate_and_gate(
    interactions: pd.DataFrame,
    features: ItemFeatures,
    version: str,
    default_config: ModelConfig,
    trainer_config: TrainerConfig,
    settings: EvaluationSettings,
    policy: ChampionPolicy,
    tracking_uri: str,
    experiment_id: str,
    registered_model_name: str,
    ablation_variants: Sequence[str] = (),
    tags: Mapping[str, str] | None = None,
) -> GatedEvaluation:
    """Evaluate registered ``version``'s ``ModelConfig`` (``default_config`` when its run logged none) on the
    protocols of ``settings``, run the ablation when ``ablation_variants`` is not empty, then gate the version
    against the champion on the same split (:func:`~recsys_pipeline.registry.model_registry.gate_model_version`);
    the champion's config is retrained for that only when its own gate saw other inputs (``gate.split``).

    Raises:
        ValueError: the gate metric's protocol is not among the evaluated protocols.
    """
    model_config = version_model_config(tracking_uri, registered_model_name, version) or default_config
    evaluation = evaluate_and_log(
        interactions, features, model_config, trainer_config, settings, tracking_uri, experiment_id, tags
    )
    ablation = None
    if ablation_variants:
        ablation = ablation_and_log(
            evaluation, features, settings, ablation_variants, tracking_uri, experiment_id, tags
        )
    rescore = partial(
        score_config, interactions, features, trainer_config=trainer_config, policy=policy, settings=settings
    )
    gate = gate_model_version(
        tracking_uri,
        registered_model_name,
        version,
        evaluation.metrics,
        policy,
        rescore_champion=lambda config: rescore(model_config=config),
        evaluation_run_id=evaluation.run_id,
        split=evaluation_fingerprint(interactions, features, settings),
    )
    return GatedEvaluation(str(version), evaluation, gate, ablation)


def metrics_table(metrics: pd.DataFrame) -> str:
    """Markdown table: one row per (protocol, model), one column per metric (4 decimals)."""
    wide = metrics.pivot_table(index=["protocol", "model"], columns="metric", values="value", aggfunc="first")
    return wide.round(4).reset_index().to_markdown(index=False)
