"""The MLflow model registry: the one record of trained versions, the champion alias, and loading a version.

Every trained model is a new version of the registered model (``recsys_ranker``), tagged with the UTC day it was
trained as of (:data:`PARTITION_DATE_TAG`, the daily partition of ``recommender_model``). :func:`gate_model_version`
applies the champion / challenger gate (``registry.gate``): the version is promoted (``gate.decision`` champion)
only when it clears the popularity floor (the blocking check's verdict on the same figures) and is at least
``min_margin`` better than the champion of its day (:func:`champion_for_day`) on the same split; otherwise it gets
the ``challenger`` alias. The decision and its reason are tags (``gate.*``) on the version, its training run and the
evaluation run.

Days never go backwards: the ``champion`` alias (what ``models:/recsys_ranker@champion`` and ``mlflow models
serve`` load) moves to a promoted version only when its day is not before the current holder's, so re-running an
old day after newer ones promotes that version for its own day without moving the alias. The lists of day D rank
with :func:`champion_for_day` D: the newest promoted version of day D or before (for the newest day, the alias
holder).
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
    "PARTITION_DATE_TAG",
    "champion_version",
    "champion_for_day",
    "version_for_partition",
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


PARTITION_DATE_TAG = "partition_date"  # YYYY-MM-DD: the UTC day a version was trained as of


def _day_key(version) -> tuple[str, int]:
    """Sort key of a version by day, then number; a version without a day (registered before partitions, or by
    hand) sorts before every day."""
    return (version.tags.get(PARTITION_DATE_TAG, ""), int(version.version))


def _versions(tracking_uri: str, registered_model_name: str) -> list:
    """Every ``ModelVersion`` of the registered model (with tags; MLflow's search does not return aliases)."""
    return list(MlflowClient(tracking_uri).search_model_versions(f"name = '{registered_model_name}'"))


def version_for_partition(tracking_uri: str, registered_model_name: str, day: str):
    """The newest version trained as of the UTC day ``day`` (``YYYY-MM-DD``, tag :data:`PARTITION_DATE_TAG`): what
    ``model_evaluation`` of day ``day`` evaluates (a re-materialized day has several; the last one is that run's).

    Raises:
        LookupError: no version of that day.
    """
    mine = [v for v in _versions(tracking_uri, registered_model_name) if v.tags.get(PARTITION_DATE_TAG) == day]
    if not mine:
        raise LookupError(
            f"no model of {day}: registered model {registered_model_name!r} has no version tagged "
            f"{PARTITION_DATE_TAG}={day}; materialize recommender_model for {day} first"
        )
    return max(mine, key=lambda v: int(v.version))


def champion_for_day(tracking_uri: str, registered_model_name: str, day: str | None, exclude: str | None = None):
    """The champion of the UTC day ``day``: the newest version (by day, then number) that its gate promoted
    (tag ``gate.decision`` champion) among those of day ``day`` or before (a version without a day counts as the
    oldest); ``exclude``: a version number left out (the one being gated). ``day=None``: the newest promoted of
    all. For the newest day this is the version holding the ``champion`` alias.

    Raises:
        LookupError: no promoted version of that day or before.
    """
    promoted = [
        v
        for v in _versions(tracking_uri, registered_model_name)
        if v.tags.get("gate.decision") == CHAMPION
        and str(v.version) != str(exclude)
        and (day is None or v.tags.get(PARTITION_DATE_TAG, "") <= day)
    ]
    if not promoted:
        when = f"for {day} or an earlier day" if day else "yet"
        raise LookupError(
            f"no champion {when}: no version of registered model {registered_model_name!r} was promoted by its "
            "gate; materialize recommender_model then model_evaluation for that day"
        )
    return max(promoted, key=_day_key)


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
    moves to a version that check would stop. The champion it is measured against is that of the version's day
    (tag :data:`PARTITION_DATE_TAG`; :func:`champion_for_day`, this version left out), or the alias holder for a
    version without a day.

    Effects: alias ``champion`` on ``version`` when promoted and its day is not before the holder's (days never go
    backwards: an old day's promoted version is champion of its day, and the reason says the alias stayed), alias
    ``challenger`` when kept; ``gate.*`` tags
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
    day = client.get_model_version(registered_model_name, version).tags.get(PARTITION_DATE_TAG)
    holder = tracking.version_by_alias(client, registered_model_name, CHAMPION)
    champion = holder
    if day is not None and not (holder is not None and str(holder.version) == version):
        try:  # the champion of this version's day, which an old day's re-run is measured against
            champion = champion_for_day(tracking_uri, registered_model_name, day, exclude=version)
        except LookupError:
            champion = None
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
    elif day is not None and holder is not None:
        reason = reason.replace(
            "no champion yet: the first evaluated version becomes champion",
            f"no champion of {day} or an earlier day: the first version evaluated for them becomes their champion",
            1,
        )
    moves = promoted and (
        holder is None
        or str(holder.version) == version
        or _day_key(client.get_model_version(registered_model_name, version)) >= _day_key(holder)
    )
    if promoted and not moves:
        reason += (
            f"; champion of {day}: the champion alias stays on v{holder.version}, of a later day "
            f"({holder.tags.get(PARTITION_DATE_TAG)})"
        )
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
    if moves:
        client.set_registered_model_alias(registered_model_name, CHAMPION, version)
        challenger = tracking.version_by_alias(client, registered_model_name, CHALLENGER)
        if challenger is not None and str(challenger.version) == version:
            client.delete_registered_model_alias(registered_model_name, CHALLENGER)
    elif not promoted:
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
