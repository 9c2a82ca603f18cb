"""Tracked runs (no Dagster import): train a model and evaluate protocols, each as one MLflow run.

Used by the ``recommender_model`` and ``model_evaluation`` assets and usable from a notebook.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection, Mapping, Sequence
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
        tracking.log_training_curves(mlflow.MlflowClient(tracking_uri), run.info.run_id)
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
    item_groups: Mapping[str, Collection[str]] | None = None,
) -> EvaluationResult:
    """For each protocol: split, train our model and the popularity baseline on the train part, rank the test
    users' candidates, and compute Recall@10, Recall@K, NDCG@10 and coverage overall and for warm / cold items
    (``evaluation.evaluate_split``; for ``item_cold_start`` also ``cold_candidates_*``: ranking among the held-out
    items only, next to a random ranker's expected recall). One MLflow run; metric names
    ``{protocol}.{model}.{metric}``. The saved ranked lists rank all unseen items, or only the held-out items for
    ``item_cold_start``. ``item_groups`` (e.g. :func:`image_groups`): metrics also per group of test items.
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
                result = evaluation.evaluate_split(model, split, catalog, k=k, item_groups=item_groups)
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
        tracking.log_evaluation_chart(mlflow.MlflowClient(tracking_uri), run.info.run_id, metrics)
    ranked = pd.concat(ranked_all, ignore_index=True)[["protocol", "model", "user_id", "rank", "item_id", "score"]]
    truth = pd.concat(truth_all, ignore_index=True)[["protocol", "user_id", "item_id"]]
    return EvaluationResult(run.info.run_id, metrics, ranked, truth, details)


def metrics_table(metrics: pd.DataFrame) -> str:
    """Markdown table: one row per (protocol, model), one column per metric."""
    wide = metrics.pivot_table(index=["protocol", "model"], columns="metric", values="value", aggfunc="first")
    return wide.round(4).reset_index().to_markdown(index=False)


# Modality ablation: name -> (modalities, fusion); ``None`` = every modality the content has.
ABLATION_VARIANTS: dict[str, tuple[tuple[str, ...] | None, str]] = {
    "text": (("text",), "attention"),
    "text_image": (("text", "image"), "attention"),
    "all": (None, "attention"),
    "all_concat": (None, "concat"),
}
ABLATION_METRICS = ("ndcg_at_10", "recall_at_20", "warm_recall_at_20", "cold_recall_at_20",
                    "with_image_recall_at_20", "without_image_recall_at_20", "cold_candidates_ndcg_at_10",
                    "cold_candidates_recall_at_20", "cold_candidates_with_image_recall_at_20",
                    "cold_candidates_without_image_recall_at_20")


def image_groups(content: ItemContent) -> dict[str, set[str]]:
    """``{"with_image": ids, "without_image": ids}`` from the content's image mask (``{}`` without an image column)."""
    if "image" not in content.modalities:
        return {}
    has = content.present[:, content.modality_names.index("image")]
    ids = np.asarray(content.item_ids, dtype=object)
    return {"with_image": set(ids[has]), "without_image": set(ids[~has])}


def restrict_modalities(content: ItemContent, names: Sequence[str]) -> ItemContent:
    """The same items with only the modalities ``names`` (in content order).

    Raises:
        KeyError: a name is not a modality of ``content``.
    """
    missing = [n for n in names if n not in content.modalities]
    if missing:
        raise KeyError(f"modalities {missing} not in content (has {content.modality_names})")
    keep = [j for j, n in enumerate(content.modality_names) if n in names]
    return ItemContent(
        item_ids=content.item_ids, modalities={content.modality_names[j]: content.modalities[content.modality_names[j]]
                                               for j in keep},
        present=content.present[:, keep], genres=content.genres, genre_names=content.genre_names, year=content.year,
    )


def ablation_and_log(
    interactions: pd.DataFrame,
    content: ItemContent,
    model_config: ModelConfig,
    trainer_config: TrainerConfig,
    tracking_uri: str,
    experiment_id: str,
    reference: pd.DataFrame | None = None,
    protocols: Sequence[str] = ("user_last_fraction", "item_cold_start"),
    holdout_fraction: float = 0.2,
    cold_fraction: float = 0.2,
    temporal_cutoff: datetime | None = None,
    k: int = 20,
    seed: int = 0,
    variants: Sequence[str] = tuple(ABLATION_VARIANTS),
) -> pd.DataFrame:
    """Modality ablation on the same splits as ``evaluate_and_log``: train ``model_config`` with each variant's
    modalities and fusion (:data:`ABLATION_VARIANTS`) and evaluate with warm/cold and with/without-image groups.

    A variant whose modality set and fusion equal an earlier one's is not retrained (its ``same_as`` names it),
    nor is the one equal to ``model_config`` with every modality of ``content`` when ``reference``
    (``evaluate_and_log``'s ``metrics``, model ``ours``, same splits) is given: its figures are reused. A variant naming a modality the content lacks is
    skipped (listed with ``status = "skipped: no image vectors"`` etc.). One MLflow run ``ablation``: metrics
    ``{variant}.{protocol}.{metric}`` and ``ablation.md``.

    Returns:
        long table ``variant, modalities, fusion, status, protocol, metric, value``.
    """
    unknown = [v for v in variants if v not in ABLATION_VARIANTS]
    if unknown:
        raise ValueError(f"unknown ablation variants {unknown}; choose from {list(ABLATION_VARIANTS)}")
    mlflow.set_tracking_uri(tracking_uri)
    groups = image_groups(content)
    rows, done = [], {}  # done: (modalities, fusion) -> variant
    with mlflow.start_run(experiment_id=experiment_id, run_name="ablation") as run:
        mlflow.log_params({"variants": ",".join(variants), "protocols": ",".join(protocols), "seed": seed,
                           "modalities": ",".join(content.modality_names)})
        for variant in variants:
            wanted, fusion = ABLATION_VARIANTS[variant]
            names = tuple(content.modality_names) if wanted is None else wanted
            lacking = [n for n in names if n not in content.modalities]
            key = (names, fusion)
            base = {"variant": variant, "modalities": "+".join(names), "fusion": fusion}
            if lacking:
                rows.append({**base, "status": f"skipped: no {', '.join(lacking)} vectors", "protocol": "",
                             "metric": "", "value": float("nan")})
                continue
            if key in done:
                same = [dict(r, **base, status=f"same as {done[key]}") for r in rows if r["variant"] == done[key]]
                rows += same
                results = {(r["protocol"], r["metric"]): r["value"] for r in same}
            elif reference is not None and key == (tuple(content.modality_names), model_config.fusion):
                ref = reference[reference["model"] == "ours"]
                results = {(r.protocol, r.metric): float(r.value) for r in ref.itertuples() if r.protocol in protocols}
                rows += [{**base, "status": "evaluation model", "protocol": p, "metric": m, "value": v}
                         for (p, m), v in results.items()]
            else:
                sub = restrict_modalities(content, names)
                config = dataclasses.replace(model_config, fusion=fusion)
                results = {}
                for protocol in protocols:
                    split = make_split(interactions, protocol, holdout_fraction=holdout_fraction,
                                       cold_fraction=cold_fraction, temporal_cutoff=temporal_cutoff, seed=seed)
                    model, _ = train_recommender(split.train, sub, config, trainer_config)
                    for metric, value in evaluation.evaluate_split(model, split, list(content.item_ids), k=k,
                                                                   item_groups=groups).items():
                        results[(protocol, metric)] = float(value)
                rows += [{**base, "status": "trained", "protocol": p, "metric": m, "value": v}
                         for (p, m), v in results.items()]
            done.setdefault(key, variant)
            for (protocol, metric), value in results.items():
                if np.isfinite(value):
                    mlflow.log_metric(f"{variant}.{protocol}.{metric}", value)
        table = pd.DataFrame(rows, columns=["variant", "modalities", "fusion", "status", "protocol", "metric", "value"])
        mlflow.log_text(ablation_table(table), "ablation.md")
    return table.assign(mlflow_run_id=run.info.run_id)


def ablation_table(table: pd.DataFrame, metrics: Sequence[str] = ABLATION_METRICS) -> str:
    """Markdown: one row per (protocol, variant), the :data:`ABLATION_METRICS` columns that have values."""
    t = table[table["metric"].isin(metrics)]
    if t.empty:
        return "(no ablation figures)"
    keys = ["protocol", "variant", "modalities", "fusion", "status"]
    wide = t.drop_duplicates(keys + ["metric"]).set_index(keys + ["metric"])["value"].unstack("metric")
    wide = wide[[m for m in metrics if m in wide.columns]].dropna(axis=1, how="all")
    order = {v: i for i, v in enumerate(ABLATION_VARIANTS)}
    wide = wide.reset_index().sort_values(["protocol", "variant"], key=lambda c: c.map(order) if c.name == "variant"
                                          else c)
    skipped = table.loc[table["status"].str.startswith("skipped"), ["variant", "status"]].drop_duplicates()
    notes = "".join(f"\n\n{r.variant}: {r.status}" for r in skipped.itertuples())
    return wide.round(4).to_markdown(index=False) + notes
