"""Tracked runs (no Dagster import): training, evaluation and the gate, each an MLflow run.

- :func:`train_and_log`: fit a ``TwoTowerRecommender``, log params, per-epoch curves and the pyfunc, register a
  version (described with what it was trained on).
- :func:`evaluate_and_log`: ``evaluation.evaluate_protocols`` in one MLflow run; :func:`ablation_and_log` the
  modality ablation (modalities hidden at inference, nothing trained), one child run of it per variant.
- :func:`tune_and_log`: what ``model_tuning`` does: an Optuna search of the two-tower model on a protocol's
  validation split, one parent run and a child run per trial.
- :func:`evaluate_and_gate`: what ``model_evaluation`` does: evaluate a registered version's config, optionally the
  ablation, then the champion / challenger gate.

What goes where: figures measured on data (NDCG, recall, coverage, training throughput) are metrics; what a run was
given is params; counts and outcomes that are not figures (best epoch, refit, users evaluated) are params or tags;
the training and evaluation inputs are logged as datasets (``mlflow.log_input``, named after their warehouse
table, with a digest of their content). Every run carries the ``tags`` it is given (the Dagster run id and
partition, from the assets).

Used by the assets and usable from a notebook.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from recsys_pipeline.content.features import ItemFeatures
from recsys_pipeline.data.schema import INTERACTIONS
from recsys_pipeline.evaluation.ablation import ablation_table, masked_ablation
from recsys_pipeline.evaluation.evaluate import EvaluationResult, evaluate_protocols, modality_groups
from recsys_pipeline.evaluation.protocols import EvaluationSettings, evaluation_fingerprint
from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
from recsys_pipeline.registry import tracking
from recsys_pipeline.registry.gate import ChampionPolicy, GateDecision
from recsys_pipeline.registry.model_registry import (
    TRAINING_HEADING,
    gate_model_version,
    score_config,
    version_model_config,
)

__all__ = [
    "TrainResult",
    "TrackedEvaluation",
    "GatedEvaluation",
    "train_and_log",
    "evaluate_and_log",
    "ablation_and_log",
    "evaluate_and_gate",
    "log_inputs",
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


# train_stats that are figures measured on the run (metrics); the rest of them are counts and outcomes (tags)
TRAIN_FIGURES = ("best_val_ndcg_at_10", "train_seconds", "samples_per_second")


def _digest(*arrays) -> str:
    """sha256 (16 hex characters) of arrays' bytes: what an MLflow dataset's ``digest`` holds here."""
    h = hashlib.sha256()
    for array in arrays:
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


def _source(data_source: str | None):
    """The MLflow dataset source for frames read from ``data_source`` (a file, e.g. the warehouse); ``None``: the
    code that built them (MLflow's default)."""
    if data_source is None:
        return None
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json

    # built from JSON: a bare path resolves to two equal "local" sources and MLflow warns about the ambiguity
    return get_dataset_source_from_json(json.dumps({"uri": str(data_source)}), "local")


def log_inputs(
    interactions: pd.DataFrame, features: ItemFeatures, context: str, data_source: str | None = None
) -> dict[str, str]:
    """Log the active run's inputs as MLflow datasets: ``interactions`` (the warehouse columns it has) and
    ``item_features`` (item ids, presence per modality, year; the digest also covers every vector and the genres),
    with ``context`` (``training``, ``evaluation``). Digests ignore row order: equal digests, equal inputs.

    Returns:
        ``{dataset name: digest}``.
    """
    columns = [c for c in INTERACTIONS.column_names if c in interactions.columns]  # ``value`` is optional
    frame = interactions[columns].astype({"user_id": str, "item_id": str})
    items = pd.DataFrame(
        {
            "item_id": list(features.item_ids),
            **{f"{m}_present": features.present[:, i] for i, m in enumerate(features.modality_names)},
            "year": features.year,
        }
    )
    digests = {
        "interactions": _digest(np.sort(pd.util.hash_pandas_object(frame, index=False).to_numpy())),
        "item_features": _digest(
            "\x1f".join(features.item_ids).encode(),
            *features.modalities.values(),
            features.present,
            features.genres,
            features.year,
        ),
    }
    source = _source(data_source)
    for name, data in (("interactions", frame), ("item_features", items)):
        dataset = mlflow.data.from_pandas(data, source=source, name=name, digest=digests[name])
        mlflow.log_input(dataset, context=context)
    return digests


def _training_description(interactions: pd.DataFrame, features: ItemFeatures, stats: Mapping) -> str:
    """The first description of a registered version (Markdown): one paragraph of what it was trained on and how
    training went (kept by the gate, ``model_registry.version_description``), then a note that it is not gated."""
    best = stats.get("best_val_ndcg_at_10", float("nan"))
    val = f"best validation NDCG@10 {best:.4f} at epoch {stats['best_epoch'] + 1}" if math.isfinite(best) else ""
    return (
        f"{TRAINING_HEADING} {len(interactions):,} interactions of {interactions['user_id'].nunique():,} users on "
        f"{interactions['item_id'].nunique():,} of {len(features.item_ids):,} catalog items, up to "
        f"{interactions['timestamp'].max()} UTC; modalities {', '.join(features.modalities) or 'none'}; "
        f"{stats['epochs_trained']} epochs{', ' + val if val else ''}"
        f"{', then refit on every interaction' if stats.get('refit') else ''}"
        f"{', warm-started from the champion' if stats.get('warm_start') else ''}.\n\n"
        "Not gated yet: model_evaluation evaluates it and decides champion or challenger."
    )


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
    data_source: str | None = None,
    init=None,
    version_tags: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train on ``interactions`` and log, in one MLflow run: params (``model.*``, ``trainer.*``, ``data.*``), the
    inputs (:func:`log_inputs`, context ``training``), per-epoch metrics (Lightning's ``MLFlowLogger``: the fit's
    ``train_loss`` and validation figures, the refit's ``refit_train_loss``), the final figures
    :data:`TRAIN_FIGURES` as metrics and the other ``train_stats`` as ``train.*`` tags, the curves chart and the
    model (pyfunc, safetensors weights); register a version, described with what it was trained on.

    Args:
        tags: set on the run (the assets give ``dagster.run_id`` and the partition).
        data_source: where ``interactions`` and ``features`` were read (the warehouse file), for the datasets.
        init: a trained ``TwoTowerRecommender`` to warm start from (``fit(init=...)``); when its architecture
            differs from ``model_config`` (``ValueError`` "cannot warm start"), a full retrain instead, and the
            tag ``train.warm_start_skipped`` says why.
        version_tags: set on the registered version (the asset gives ``partition_date``, the UTC day of the
            model: ``model_registry.PARTITION_DATE_TAG``).

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
        log_inputs(interactions, features, "training", data_source)
        model = TwoTowerRecommender(model_config, trainer_config, logger=_mlflow_logger(tracking_uri, run.info.run_id))
        try:
            model.fit(interactions, features, init=init)
        except ValueError as exc:
            if init is None or not str(exc).startswith("cannot warm start"):
                raise
            mlflow.set_tag("train.warm_start_skipped", str(exc))
            model.fit(interactions, features)
        stats = model.train_stats
        figures = {k: float(stats[k]) for k in TRAIN_FIGURES if k in stats and math.isfinite(float(stats[k]))}
        mlflow.log_metrics(figures)
        mlflow.set_tags({f"train.{k}": str(v) for k, v in stats.items() if k not in TRAIN_FIGURES})
        client = mlflow.MlflowClient(tracking_uri)
        tracking.log_training_curves(client, run.info.run_id)
        model_uri, version = tracking.log_recommender(model, registered_model_name)
        if version is not None:
            description = _training_description(interactions, features, stats)
            client.update_model_version(registered_model_name, version, description=description)
            for key, text in (version_tags or {}).items():
                client.set_model_version_tag(registered_model_name, version, key, text)
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
    data_source: str | None = None,
) -> TrackedEvaluation:
    """:func:`~recsys_pipeline.evaluation.evaluate.evaluate_protocols` for ``model_config`` (with / without image
    groups) in one MLflow run ``evaluation``: the inputs (:func:`log_inputs`, context ``evaluation``), the figures
    as metrics ``{protocol}.{model}.{metric}`` (the users each figure counts, ``n_users``, are not figures: they are
    in ``evaluation.md``; test users and interactions per protocol are params), ``evaluation.md``,
    ``evaluation_details.json`` and the chart ``charts/evaluation.png`` of the figures each protocol is judged by
    (``tracking.judged_metrics``). The protocols' models are fitted at once in their own processes where
    ``trainer_config.concurrent_fits`` allows (param ``fit_processes``)."""
    from recsys_pipeline.models.two_tower.recommender import two_tower_for_split

    processes = trainer_config.concurrent_fits(len(settings.protocols))

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name="evaluation", tags=dict(tags or {})) as run:
        mlflow.log_params(
            {
                "protocols": ",".join(settings.protocols),
                "holdout_fraction": settings.holdout_fraction,
                "random_fraction": settings.random_fraction,
                "cold_fraction": settings.cold_fraction,
                "temporal_cutoff": str(settings.temporal_cutoff),
                "k": settings.k,
                "seed": settings.seed,
                "fit_processes": processes,
            }
        )
        log_inputs(interactions, features, "evaluation", data_source)
        result = evaluate_protocols(
            partial(two_tower_for_split, model_config, trainer_config),
            interactions,
            features,
            settings,
            modality_groups(features, "image"),
            processes,
        )
        mlflow.log_metrics(_figures(result.metrics, ("protocol", "model", "metric")))
        mlflow.log_params(
            {
                f"{protocol}.{key}": value
                for protocol, detail in result.details.items()
                for key, value in detail.items()
                if key in ("test_users", "test_interactions")
            }
        )
        mlflow.log_dict(result.details, "evaluation_details.json")
        mlflow.log_text(metrics_table(result.metrics), "evaluation.md")
        tracking.log_evaluation_chart(mlflow.MlflowClient(tracking_uri), run.info.run_id, result.metrics, settings.k)
    return TrackedEvaluation(**{f.name: getattr(result, f.name) for f in fields(result)}, run_id=run.info.run_id)


def _figures(table: pd.DataFrame, keys: Sequence[str]) -> dict[str, float]:
    """``{"<key1>.<key2>...": value}`` of the finite figures of a long table, counts of users left out."""
    rows = table[table["value"].notna() & ~table["metric"].astype(str).str.endswith("n_users")]
    out = {".".join(str(getattr(r, k)) for k in keys): float(r.value) for r in rows.itertuples()}
    return {k: v for k, v in out.items() if math.isfinite(v)}


def tune_and_log(
    interactions: pd.DataFrame,
    features: ItemFeatures,
    base_config: ModelConfig,
    trainer_config: TrainerConfig,
    protocol: str,
    settings: EvaluationSettings,
    n_trials: int,
    tracking_uri: str,
    experiment_id: str,
    tags: Mapping[str, str] | None = None,
    seed: int = 0,
    fixed: Sequence[str] = (),
):
    """Search the two-tower model's :func:`~recsys_pipeline.evaluation.tuning.two_tower_space` on ``protocol``'s
    validation split (:func:`~recsys_pipeline.evaluation.tuning.tuning_split`; its early-stopping split, if the
    config has one, carved the same way), trial 0 being ``base_config``. Every other field, and the ``fixed`` ones
    (what the user set: training uses them whatever the search says), stays ``base_config``'s. One MLflow run
    ``model_tuning`` (params ``protocol, n_trials, metric, k_core, seed``; metrics ``best_value, default_value``;
    tag ``best_params`` as JSON) with a child run per trial (params: the trial's, with its best item-item weight;
    metrics ``val_{metric}``, ``seconds`` and ``val_{metric}/item_item_weight_{w}``, the same fit scored at each
    weight of :data:`~recsys_pipeline.evaluation.tuning.ITEM_ITEM_WEIGHTS`).

    Returns:
        ``(TuningResult, run_id)``.

    Raises:
        ValueError: an unknown protocol, too little data for the split, or ``n_trials < 1``.
    """
    from recsys_pipeline.evaluation.protocols import validation_split, view_catalog
    from recsys_pipeline.evaluation.tuning import (
        TUNED_FIELDS,
        tune,
        tuning_split,
        two_tower_space,
        two_tower_variants,
        validation_metric,
    )
    from recsys_pipeline.models.two_tower.recommender import two_tower_for_split

    split = tuning_split(interactions, protocol, settings)
    features = view_catalog(features, interactions, settings.k_core)

    def fit(params: dict, train: pd.DataFrame):
        model = two_tower_for_split(replace(base_config, **params), trainer_config, validation_split(protocol))
        return model.fit(train, features)

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name="model_tuning", tags=dict(tags or {})) as parent:
        mlflow.log_params({"protocol": protocol, "n_trials": n_trials, "k_core": settings.k_core, "seed": seed})

        def log_trial(trial) -> None:
            with mlflow.start_run(
                experiment_id=experiment_id,
                run_name=f"trial {trial.number}",
                tags=dict(tags or {}),
                parent_run_id=parent.info.run_id,
                nested=True,
            ):
                mlflow.log_params(trial.params)
                mlflow.log_metrics({f"val_{metric}": trial.value, "seconds": trial.seconds})
                # the same fit scored at each item-item weight (it does not change training)
                mlflow.log_metrics(
                    {f"val_{metric}/item_item_weight_{p['item_item_weight']}": v for p, v in trial.variant_values}
                )

        metric = validation_metric(protocol)
        default = {f: getattr(base_config, f) for f in TUNED_FIELDS if f not in fixed}
        result = tune(
            fit,
            partial(two_tower_space, fixed=fixed),
            split,
            protocol,
            n_trials,
            default,
            seed=seed,
            on_trial=log_trial,
            variants=partial(two_tower_variants, fixed=fixed),
        )
        mlflow.log_param("metric", metric)
        mlflow.log_metrics({"best_value": result.best_value, "default_value": result.default_value})
        mlflow.set_tag("best_params", json.dumps(result.best_params, sort_keys=True))
    return result, parent.info.run_id


def ablation_and_log(
    evaluation: EvaluationResult,
    features: ItemFeatures,
    settings: EvaluationSettings,
    variants: Sequence[str],
    tracking_uri: str,
    experiment_id: str,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> pd.DataFrame:
    """:func:`~recsys_pipeline.evaluation.ablation.masked_ablation` of ``evaluation``'s models, one MLflow run per
    variant (``ablation: <variant>``; params ``variant, modalities, fusion, status, method``, metrics
    ``{protocol}.{metric}``), each a child of ``parent_run_id`` (the evaluation run, which also gets
    ``ablation.md``) when given. Trains nothing.

    Returns:
        the ablation table with ``mlflow_run_id``: each row's variant run.
    """
    table = masked_ablation(evaluation, features, settings.k, variants)
    mlflow.set_tracking_uri(tracking_uri)
    run_ids: dict[str, str] = {}
    for variant, rows in table.groupby("variant", sort=False):
        first = rows.iloc[0]
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name=f"ablation: {variant}",
            tags=dict(tags or {}),
            parent_run_id=parent_run_id,
        ) as run:
            mlflow.log_params(
                {
                    "variant": variant,
                    "modalities": first["modalities"],
                    "fusion": first["fusion"],
                    "status": first["status"],
                    "protocols": ",".join(settings.protocols),
                    "seed": settings.seed,
                    "method": "modalities hidden at inference",
                }
            )
            mlflow.log_metrics(_figures(rows, ("protocol", "metric")))
        run_ids[variant] = run.info.run_id
    if parent_run_id is not None:
        mlflow.MlflowClient(tracking_uri).log_text(parent_run_id, ablation_table(table), "ablation.md")
    return table.assign(mlflow_run_id=table["variant"].map(run_ids))


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
    data_source: str | None = None,
) -> GatedEvaluation:
    """Evaluate registered ``version``'s ``ModelConfig`` (``default_config`` when its run logged none) on the
    protocols of ``settings``, run the ablation when ``ablation_variants`` is not empty (child runs of the
    evaluation run), then gate the version against the champion on the same split
    (:func:`~recsys_pipeline.registry.model_registry.gate_model_version`, which also describes the version with
    its figures and the decision); the champion's config is retrained for that only when its own gate saw other
    inputs (``gate.split``). ``tags`` go on every run; ``data_source`` names where the inputs were read.

    Raises:
        ValueError: the gate metric's protocol is not among the evaluated protocols.
    """
    model_config = version_model_config(tracking_uri, registered_model_name, version) or default_config
    evaluation = evaluate_and_log(
        interactions, features, model_config, trainer_config, settings, tracking_uri, experiment_id, tags, data_source
    )
    ablation = None
    if ablation_variants:
        ablation = ablation_and_log(
            evaluation, features, settings, ablation_variants, tracking_uri, experiment_id, tags, evaluation.run_id
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
        k=settings.k,
    )
    return GatedEvaluation(str(version), evaluation, gate, ablation)


def metrics_table(metrics: pd.DataFrame) -> str:
    """Markdown table: one row per (protocol, model), one column per metric (4 decimals)."""
    wide = metrics.pivot_table(index=["protocol", "model"], columns="metric", values="value", aggfunc="first")
    return wide.round(4).reset_index().to_markdown(index=False)


def adapt_and_log(
    interactions: pd.DataFrame,
    texts: Mapping[str, str],
    folder: Path,
    config,
    tracking_uri: str,
    experiment_id: str,
    tags: Mapping[str, str] | None = None,
) -> tuple[Path, dict, str]:
    """Adapt the text encoder (``content.text_adaptation``) on ``interactions`` in one MLflow run
    ``text_encoder_adaptation`` (params: the :class:`AdaptationConfig`; metrics ``first_loss, last_loss, pairs,
    seconds``; the adapted model as artifacts under ``text_encoder``), into ``folder/<run_id>``, which becomes the
    current adapted encoder (``folder/current.json``). A failure leaves the previous one current.

    Returns:
        ``(model folder, facts, run_id)``.

    Raises:
        ValueError: no positive pair (fewer than two items per user everywhere).
    """
    from dataclasses import asdict

    from recsys_pipeline.content.text_adaptation import (
        adapt_text_encoder,
        co_interaction_pairs,
        set_adapted_text_model,
    )

    pairs = co_interaction_pairs(interactions, config.max_pairs, config.seed)
    if pairs.empty:
        raise ValueError("no user has two consecutive items: nothing to adapt the text encoder on")
    mlflow.set_tracking_uri(tracking_uri)
    folder.mkdir(parents=True, exist_ok=True)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name="text_encoder_adaptation", tags=dict(tags or {})
    ) as run:
        mlflow.log_params(asdict(config))
        target = folder / run.info.run_id
        facts = adapt_text_encoder(
            texts, pairs, target, config=config, logger=_mlflow_logger(tracking_uri, run.info.run_id)
        )
        mlflow.log_metrics({k: float(v) for k, v in facts.items()})
        mlflow.log_artifacts(str(target), artifact_path="text_encoder")
    set_adapted_text_model(folder, target, mlflow_run_id=run.info.run_id)
    return target, facts, run.info.run_id
