"""Modality ablation of the two-tower model on the evaluation's splits: which modalities and which fusion help.

Two forms, same long table (:data:`ABLATION_COLUMNS`) and the same warm / cold and with / without-image figures:

- :func:`masked_ablation` (every ``model_evaluation`` run): each protocol's evaluated model ranks again with some
  modalities hidden at inference (:data:`MASKED_VARIANTS`). The model was trained with modality dropout
  (``ModelConfig.modality_dropout``), so a hidden modality is an input it has learned to do without. Nothing is
  trained: it costs two rankings per variant and protocol.
- :func:`retrained_ablation` (``benchmarks/ablation.py``): each variant of :data:`ABLATION_VARIANTS` (modalities and
  fusion) is trained from scratch on the same splits; the answer to "would a model built without the posters do
  better", at one training per variant and protocol.

No MLflow here (``registry.runs.ablation_and_log`` tracks the masked one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from recsys_pipeline.content.features import ItemFeatures
from recsys_pipeline.evaluation.evaluate import EvaluationResult, evaluate, modality_groups
from recsys_pipeline.evaluation.protocols import EvaluationSettings, make_split, validation_split
from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig

__all__ = [
    "MASKED_VARIANTS",
    "ABLATION_VARIANTS",
    "ABLATION_METRICS",
    "ABLATION_COLUMNS",
    "masked_ablation",
    "retrained_ablation",
    "ablation_table",
]

# name -> modalities visible at inference; ``None`` = every modality the features have.
MASKED_VARIANTS: dict[str, tuple[str, ...] | None] = {"text": ("text",), "text_image": ("text", "image"), "all": None}

# name -> (modalities, fusion) of a retrained variant; ``None`` = every modality the features have.
ABLATION_VARIANTS: dict[str, tuple[tuple[str, ...] | None, str]] = {
    "text": (("text",), "attention"),
    "text_image": (("text", "image"), "attention"),
    "all": (None, "attention"),
    "all_concat": (None, "concat"),
}
ABLATION_METRICS = (
    "ndcg_at_10",
    "recall_at_20",
    "warm_recall_at_20",
    "cold_recall_at_20",
    "with_image_recall_at_20",
    "without_image_recall_at_20",
    "cold_candidates_ndcg_at_10",
    "cold_candidates_recall_at_20",
    "cold_candidates_with_image_recall_at_20",
    "cold_candidates_without_image_recall_at_20",
)
ABLATION_COLUMNS = ["variant", "modalities", "fusion", "status", "protocol", "metric", "value"]


def _skipped(base: dict, lacking: Sequence[str], reason: str = "no {} vectors") -> dict:
    return {
        **base,
        "status": "skipped: " + reason.format(", ".join(lacking)),
        "protocol": "",
        "metric": "",
        "value": np.nan,
    }


def _reference_rows(base: dict, reference: pd.DataFrame, protocols: Sequence[str]) -> list[dict]:
    ref = reference[(reference["model"] == "ours") & reference["protocol"].isin(protocols)]
    return [
        {**base, "status": "evaluation model", "protocol": r.protocol, "metric": r.metric, "value": float(r.value)}
        for r in ref.itertuples()
    ]


def masked_ablation(
    evaluation: EvaluationResult,
    features: ItemFeatures,
    k: int = 20,
    variants: Sequence[str] = tuple(MASKED_VARIANTS),
) -> pd.DataFrame:
    """Rank again with each protocol's evaluated model (``evaluation.models``, on ``evaluation.splits``) and only the
    modalities of each variant visible; returns the long table :data:`ABLATION_COLUMNS`.

    A variant with every modality the models read is the evaluated model itself: its figures come from
    ``evaluation.metrics`` (``status = "evaluation model"``); one equal to an earlier variant is ``"same as ..."``;
    one naming a modality the features lack is ``"skipped: no image vectors"``, one the models do not read
    (``ModelConfig.exclude_modalities``) ``"skipped: the model does not read image"``. ``fusion`` is the evaluated
    model's.

    Raises:
        ValueError: an unknown variant name, or a model without ``with_features`` (it cannot hide modalities).
    """
    unknown = [v for v in variants if v not in MASKED_VARIANTS]
    if unknown:
        raise ValueError(f"unknown ablation variants {unknown}; choose from {list(MASKED_VARIANTS)}")
    groups = modality_groups(features, "image")
    # what every evaluated model reads (a model without modality_dims reads them all)
    read = tuple(
        m
        for m in features.modality_names
        if all(m in getattr(model, "modality_dims", features.modalities) for model in evaluation.models.values())
    )
    rows: list[dict] = []
    done: dict[tuple, str] = {}
    for variant in variants:
        wanted = MASKED_VARIANTS[variant]
        names = read if wanted is None else wanted
        lacking = [n for n in names if n not in features.modalities]
        unread = [n for n in names if n in features.modalities and n not in read]
        fusions = {getattr(getattr(m, "config", None), "fusion", "") for m in evaluation.models.values()}
        base = {"variant": variant, "modalities": "+".join(names), "fusion": "/".join(sorted(fusions))}
        if lacking:
            rows.append(_skipped(base, lacking))
            continue
        if unread:
            rows.append(_skipped(base, unread, "the model does not read {}"))
            continue
        if names in done:
            rows += [dict(r, **base, status=f"same as {done[names]}") for r in rows if r["variant"] == done[names]]
        elif names == read:
            rows += _reference_rows(base, evaluation.metrics, list(evaluation.models))
        else:
            visible = features.with_modalities(names)
            ranked: dict[tuple[int, int], dict] = {}  # views of one split (item_cold_mixed) share model and split
            for protocol, model in evaluation.models.items():
                if not hasattr(model, "with_features"):
                    raise ValueError(f"{type(model).__name__} cannot rank with modalities hidden (no with_features)")
                split = evaluation.splits[protocol]
                key = (id(model), id(split))
                if key not in ranked:
                    # the model's own catalog (a k-core view's items: evaluate_protocols ranks those)
                    own = visible if model.item_ids == visible.item_ids else visible.subset(list(model.item_ids))
                    ranked[key] = evaluate(model.with_features(own), split, k, groups).metrics
                figures = ranked[key]
                rows += [
                    {**base, "status": "masked at inference", "protocol": protocol, "metric": m, "value": float(v)}
                    for m, v in figures.items()
                ]
        done.setdefault(names, variant)
    return pd.DataFrame(rows, columns=ABLATION_COLUMNS)


def retrained_ablation(
    model_config: ModelConfig,
    trainer_config: TrainerConfig,
    interactions: pd.DataFrame,
    features: ItemFeatures,
    settings: EvaluationSettings,
    variants: Sequence[str] = tuple(ABLATION_VARIANTS),
    reference: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Train and evaluate each variant; returns the long table ``ABLATION_COLUMNS``.

    Each variant reads exactly its modalities (``model_config.exclude_modalities`` does not apply). A variant whose
    modality set and fusion equal an earlier one's is not retrained (``status = "same as ..."``), nor is the one
    equal to ``model_config`` (the modalities it reads, its fusion) when ``reference`` (``evaluate_protocols``'
    ``metrics`` on the same splits, model ``ours``) is given: its figures are reused (``"evaluation model"``). A
    variant naming a modality the features lack is listed with ``status = "skipped: no image vectors"`` etc.

    Raises:
        ValueError: an unknown variant name.
    """
    from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

    unknown = [v for v in variants if v not in ABLATION_VARIANTS]
    if unknown:
        raise ValueError(f"unknown ablation variants {unknown}; choose from {list(ABLATION_VARIANTS)}")
    groups = modality_groups(features, "image")
    excluded = model_config.excluded_modalities()
    reference_key = (tuple(m for m in features.modality_names if m not in excluded), model_config.fusion)
    rows: list[dict] = []
    done: dict[tuple, str] = {}  # (modalities, fusion) -> first variant with them
    for variant in variants:
        wanted, fusion = ABLATION_VARIANTS[variant]
        names = tuple(features.modality_names) if wanted is None else wanted
        lacking = [n for n in names if n not in features.modalities]
        key = (names, fusion)
        base = {"variant": variant, "modalities": "+".join(names), "fusion": fusion}
        if lacking:
            rows.append(_skipped(base, lacking))
            continue
        if key in done:
            rows += [dict(r, **base, status=f"same as {done[key]}") for r in rows if r["variant"] == done[key]]
        elif reference is not None and key == reference_key:
            rows += _reference_rows(base, reference, settings.protocols)
        else:
            subset = features.with_modalities(names)
            config = replace(model_config, fusion=fusion, exclude_modalities="")  # the variant says what is read
            for protocol in settings.protocols:
                split = make_split(interactions, protocol, settings)
                protocol_config = replace(config, val_split=validation_split(protocol))
                model = TwoTowerRecommender(protocol_config, trainer_config).fit(split.train, subset)
                figures = evaluate(model, split, settings.k, groups).metrics
                rows += [
                    {**base, "status": "trained", "protocol": protocol, "metric": m, "value": float(v)}
                    for m, v in figures.items()
                ]
        done.setdefault(key, variant)
    return pd.DataFrame(rows, columns=ABLATION_COLUMNS)


def ablation_table(table: pd.DataFrame, metrics: Sequence[str] = ABLATION_METRICS) -> str:
    """Markdown: one row per (protocol, variant), the :data:`ABLATION_METRICS` columns that have values."""
    t = table[table["metric"].isin(metrics)]
    if t.empty:
        return "(no ablation figures)"
    keys = ["protocol", "variant", "modalities", "fusion", "status"]
    wide = t.drop_duplicates(keys + ["metric"]).set_index(keys + ["metric"])["value"].unstack("metric")
    wide = wide[[m for m in metrics if m in wide.columns]].dropna(axis=1, how="all")
    order = {v: i for i, v in enumerate([*MASKED_VARIANTS, *ABLATION_VARIANTS])}
    wide = wide.reset_index().sort_values(
        ["protocol", "variant"], key=lambda c: c.map(order) if c.name == "variant" else c
    )
    skipped = table.loc[table["status"].str.startswith("skipped"), ["variant", "status"]].drop_duplicates()
    notes = "".join(f"\n\n{r.variant}: {r.status}" for r in skipped.itertuples())
    return wide.round(4).to_markdown(index=False) + notes


def finite_figures(table: pd.DataFrame) -> dict[str, float]:
    """``{variant.protocol.metric: value}`` of the finite figures (what is logged as MLflow metrics)."""
    ok = table[np.isfinite(table["value"].astype(float))]
    return {f"{r.variant}.{r.protocol}.{r.metric}": float(r.value) for r in ok.itertuples()}
