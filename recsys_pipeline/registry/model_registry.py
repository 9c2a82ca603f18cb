"""The MLflow model registry: the one record of trained versions, the champion alias, and loading a version.

Every trained model is a new version of the registered model (``recsys_ranker``). :func:`gate_model_version`
applies the champion / challenger gate (``registry.gate``): it moves the ``champion`` alias only when the new
version clears the popularity floor (the blocking check's verdict on the same figures) and is at least
``min_margin`` better than the champion on the same split; otherwise the version gets the ``challenger`` alias.
The decision and its reason are tags (``gate.*``) on the version, its training run and the evaluation run.
``recommendations`` and everything that reads them use ``models:/recsys_ranker@champion`` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from recsys_pipeline.content.features import ItemFeatures
from recsys_pipeline.evaluation.evaluate import evaluate
from recsys_pipeline.evaluation.protocols import EvaluationSettings, make_split, validation_split
from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
from recsys_pipeline.registry import tracking
from recsys_pipeline.registry.gate import (
    CHALLENGER,
    CHAMPION,
    ChampionPolicy,
    GateDecision,
    decide,
    ndcg_against_popularity,
)

__all__ = [
    "champion_version",
    "champion_uri",
    "latest_version",
    "version_model_config",
    "load_version",
    "score_config",
    "gate_model_version",
    "version_description",
    "TRAINING_HEADING",
]


def champion_version(tracking_uri: str, registered_model_name: str):
    """The ``ModelVersion`` holding the ``champion`` alias (``.version``, ``.run_id``, ``.tags``).

    Raises:
        LookupError: no version is champion yet (nothing trained and evaluated, or every version lost its gate).
    """
    version = tracking.version_by_alias(MlflowClient(tracking_uri), registered_model_name, CHAMPION)
    if version is None:
        raise LookupError(
            f"no champion: registered model {registered_model_name!r} has no version with alias {CHAMPION!r}; "
            "materialize recommender_model then model_evaluation (its gate promotes the first version)"
        )
    return version


def champion_uri(registered_model_name: str) -> str:
    """``models:/<name>@champion``: what ``mlflow.pyfunc.load_model`` and ``mlflow models serve -m`` take."""
    return f"models:/{registered_model_name}@{CHAMPION}"


def latest_version(tracking_uri: str, registered_model_name: str):
    """The newest ``ModelVersion`` of the registered model (highest version number).

    Raises:
        LookupError: no version is registered yet.
    """
    client = MlflowClient(tracking_uri)
    versions = client.search_model_versions(f"name = '{registered_model_name}'")
    if not versions:
        raise LookupError(
            f"no trained model: registered model {registered_model_name!r} has no version; "
            "materialize recommender_model first"
        )
    return max(versions, key=lambda v: int(v.version))


def version_model_config(tracking_uri: str, registered_model_name: str, version: str) -> ModelConfig | None:
    """The ``ModelConfig`` a registered version was trained with (from its run's ``model.*`` params), or
    ``None`` when the run logged none (e.g. a version registered by hand)."""
    client = MlflowClient(tracking_uri)
    mv = client.get_model_version(registered_model_name, str(version))
    params = tracking.run_model_config(client, mv.run_id) if mv.run_id else None
    return ModelConfig.from_params(params) if params else None


def load_version(tracking_uri: str, model_uri: str, features: ItemFeatures | None = None):
    """The :class:`~recsys_pipeline.models.two_tower.recommender.TwoTowerRecommender` logged at ``model_uri``
    (``models:/name/3``, ``models:/name@champion``), ranking ``features`` (default: the catalog it was trained
    with; items new since training get content-only scores). No pickle is read.

    Reads the artifacts of this release (one ``model`` folder) and of the previous one (``weights`` +
    ``item_content.npz`` + ``seen.parquet``), so a home written before the redesign still serves.

    Raises:
        recsys_pipeline.registry.tracking.ArtifactIntegrityError: a registered version's files differ from the
            sha256 digests recorded at registration (tag ``integrity.sha256``; versions without it are older).
    """
    import mlflow

    from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

    mlflow.set_tracking_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    client = MlflowClient(tracking_uri)
    registered = tracking.resolve_version(client, model_uri)
    if registered is not None:  # the files must be those recorded at registration
        tracking.verify_model_artifacts(client, registered.name, registered.version, local)
    artifacts = local / "artifacts"
    if (artifacts / "model").is_dir():
        return TwoTowerRecommender.load(artifacts / "model", features)
    return TwoTowerRecommender.load(  # previous release's layout
        artifacts / "weights",
        features or ItemFeatures.from_npz(artifacts / "item_content.npz"),
        seen=pd.read_parquet(artifacts / "seen.parquet"),
    )


def score_config(
    interactions: pd.DataFrame,
    features: ItemFeatures,
    model_config: ModelConfig,
    trainer_config: TrainerConfig,
    policy: ChampionPolicy,
    settings: EvaluationSettings,
) -> float:
    """Train ``model_config`` on the train part of the ``policy.protocol`` split (the same split
    ``evaluate_protocols`` builds from the same settings, and its validation carved the same way:
    ``validation_split(policy.protocol)``) and return ``policy.metric_name`` on its test part.

    Raises:
        ValueError: unknown protocol, or ``policy.metric_name`` not computed by ``evaluation.evaluate``.
    """
    from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

    split = make_split(interactions, policy.protocol, settings)
    config = replace(model_config, val_split=validation_split(policy.protocol))
    model = TwoTowerRecommender(config, trainer_config).fit(split.train, features)
    figures = evaluate(model, split, settings.k).metrics
    if policy.metric_name not in figures:
        raise ValueError(f"metric {policy.metric_name!r} is not computed by the evaluation; have {sorted(figures)}")
    return float(figures[policy.metric_name])


def gate_model_version(
    tracking_uri: str,
    registered_model_name: str,
    version: str,
    evaluation_metrics: pd.DataFrame,
    policy: ChampionPolicy,
    rescore_champion: Callable[[ModelConfig], float] | None = None,
    evaluation_run_id: str | None = None,
    split: str = "",
    k: int | None = None,
) -> GateDecision:
    """Decide whether ``version`` becomes champion, move the aliases and record the decision.

    Args:
        evaluation_metrics: ``protocol, model, metric, value`` of this version's evaluation (its ``ModelConfig``
            through ``evaluate_protocols``); the challenger's figure is the row named by ``policy.metric``.
        rescore_champion: ``ModelConfig -> float``, the same evaluation for another config on the same split
            (e.g. ``functools.partial(score_config, interactions, features, trainer_config=..., ...)``), called when
            the champion's config differs from the version's. ``None``: the champion's recorded figure
            (``comparison="recorded"``).
        evaluation_run_id: the evaluation's MLflow run; the decision is also tagged there, and the champion's
            re-scored figure logged there as ``{protocol}.champion.{metric}``.
        split: :func:`~recsys_pipeline.evaluation.protocols.evaluation_fingerprint` of this evaluation's inputs,
            recorded as ``gate.split``. When the champion's own ``gate.split`` (and metric) is the same, its
            recorded figure is used instead of ``rescore_champion`` (``comparison="recorded_same_split"``).
        k: the evaluation's list length (for the figures in the description); ``None`` reads it from the names.

    The version is promoted only when ``evaluation_metrics`` clears the popularity floor
    (:func:`~recsys_pipeline.registry.gate.ndcg_against_popularity`, the verdict of the blocking check
    ``model_beats_popularity`` on the same rows) and beats the champion by ``policy.min_margin``; so the alias never
    moves to a version that check would stop.

    Effects: alias ``champion`` (promoted) or ``challenger`` (kept) on ``version``; ``gate.*`` tags
    (:meth:`GateDecision.tags`, including ``gate.popularity_floor``) on the version, its training run and the
    evaluation run; the version's description (:func:`version_description`: the decision, its reason and the
    figures each protocol is judged by, above what it was trained on).

    Raises:
        ValueError: ``policy.metric`` is not in ``evaluation_metrics`` (its protocol was not evaluated).
    """
    version = str(version)
    row = evaluation_metrics[
        (evaluation_metrics["protocol"] == policy.protocol)
        & (evaluation_metrics["model"] == policy.model)
        & (evaluation_metrics["metric"] == policy.metric_name)
    ]
    if row.empty:
        raise ValueError(
            f"gate metric {policy.metric!r} is not in this evaluation (protocols evaluated: "
            f"{sorted(evaluation_metrics['protocol'].unique())}); evaluate protocol {policy.protocol!r} or change "
            "the gate metric"
        )
    value = float(row["value"].iloc[0])
    client = MlflowClient(tracking_uri)
    champion = tracking.version_by_alias(client, registered_model_name, CHAMPION)
    champion_value: float | None = None
    if champion is None:
        comparison = "first_version"
    elif str(champion.version) == version:
        comparison, champion_value = "already_champion", value
    else:
        mine = version_model_config(tracking_uri, registered_model_name, version)
        theirs = version_model_config(tracking_uri, registered_model_name, champion.version)
        same_split = bool(split) and champion.tags.get("gate.split") == split
        if theirs is not None and mine is not None and theirs == mine:
            comparison, champion_value = "same_config", value
        elif same_split and champion.tags.get("gate.metric") == policy.metric and champion.tags.get("gate.value"):
            comparison, champion_value = "recorded_same_split", float(champion.tags["gate.value"])
            if evaluation_run_id and math.isfinite(champion_value):
                client.log_metric(evaluation_run_id, f"{policy.protocol}.champion.{policy.metric_name}", champion_value)
        elif theirs is not None and rescore_champion is not None:
            comparison, champion_value = "retrained_same_split", float(rescore_champion(theirs))
            if evaluation_run_id and math.isfinite(champion_value):
                client.log_metric(evaluation_run_id, f"{policy.protocol}.champion.{policy.metric_name}", champion_value)
        else:
            comparison = "recorded"
            recorded = champion.tags.get("gate.value") if champion.tags.get("gate.metric") == policy.metric else None
            champion_value = float(recorded) if recorded else float("nan")
    floor = ndcg_against_popularity(evaluation_metrics)
    promoted, reason = decide(value, champion_value if champion is not None else None, policy.min_margin, floor)
    if comparison == "already_champion":  # the alias does not move; a failed floor still stops publishing
        promoted, reason = True, f"v{version} already holds the champion alias; re-evaluated at {value:.4f}"
        if not floor["passed"]:
            reason += f"; below the popularity floor ({floor['reason']})"
    elif champion is not None:
        reason = f"{policy.metric}: {reason}; champion v{champion.version}, {comparison.replace('_', ' ')}"
    decision = GateDecision(
        version,
        promoted,
        reason,
        policy.metric,
        value,
        None if champion is None else str(champion.version),
        champion_value,
        comparison,
        evaluation_run_id,
        policy.min_margin,
        ("passed: " if floor["passed"] else "failed: ") + floor["reason"],
        split,
    )
    if promoted:
        client.set_registered_model_alias(registered_model_name, CHAMPION, version)
        challenger = tracking.version_by_alias(client, registered_model_name, CHALLENGER)
        if challenger is not None and str(challenger.version) == version:
            client.delete_registered_model_alias(registered_model_name, CHALLENGER)
    else:
        client.set_registered_model_alias(registered_model_name, CHALLENGER, version)
    tags = decision.tags()
    for key, text in tags.items():
        client.set_model_version_tag(registered_model_name, version, key, text)
    previous = client.get_model_version(registered_model_name, version).description or ""
    description = version_description(decision, evaluation_metrics, k, previous)
    client.update_model_version(registered_model_name, version, description=description)
    run_ids = [client.get_model_version(registered_model_name, version).run_id, evaluation_run_id]
    for run_id in filter(None, run_ids):
        for key, text in tags.items():
            client.set_tag(run_id, key, text)
    return decision


TRAINING_HEADING = "Training:"  # starts the description written at registration (runs.train_and_log)


def version_description(
    decision: GateDecision, evaluation_metrics: pd.DataFrame, k: int | None = None, previous: str = ""
) -> str:
    """A registered version's description after its gate (Markdown, what the MLflow UI shows on its page): the
    decision and reason, the popularity floor, the figures each protocol is judged by
    (:func:`~recsys_pipeline.registry.tracking.judged_figures`, ours next to popularity, 4 places), then the
    training paragraph of ``previous`` (the description written at registration, up to its first blank line; an
    earlier gate's part is replaced).

    Example (first line)::

        **champion**: user_last_fraction.ours.ndcg_at_10 = 0.4383; no champion yet: the first evaluated version ...
    """
    figures = tracking.judged_figures(evaluation_metrics, k).dropna(axis=1, how="all").round(4)
    shown = figures.astype(object).where(figures.notna(), "")  # no "nan" where a figure does not apply
    # the training paragraph only: what followed it (a note, an earlier gate's part) is replaced
    training = previous[previous.index(TRAINING_HEADING) :].split("\n\n")[0] if TRAINING_HEADING in previous else ""
    paragraphs = [
        f"**{decision.decision}**: {decision.metric} = {decision.value:.4f}; {decision.reason}",
        f"Popularity floor {decision.floor}." if decision.floor else "",
        shown.to_markdown(index=False) if len(shown) else "(no figures)",
        training,
    ]
    return "\n\n".join(p for p in paragraphs if p)
