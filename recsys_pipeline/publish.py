"""Publishing (no Dagster import): the champion / challenger gate on the MLflow model registry, loading the
champion, ranking the catalog for every user, and the popularity list that serves users without history.

Champion / challenger: every trained model is a new version of the registered model (``recsys_ranker``).
``gate_model_version`` compares a new version with the version holding the ``champion`` alias on one configured
metric (``ChampionPolicy``) and moves the alias only when the new version is at least ``min_margin`` better;
otherwise the version gets the ``challenger`` alias. The decision and its reason are tags (``gate.*``) on the model
version, on its training run and on the evaluation run. ``recommendations`` and everything that reads them use
``models:/recsys_ranker@champion`` only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime

import duckdb
import pandas as pd

from recsys_pipeline import warehouse

CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_GATE_METRIC = "user_last_fraction.ours.ndcg_at_10"


def latest_model_run(con: duckdb.DuckDBPyConnection) -> dict:
    """The newest row of ``model_runs`` as a dict.

    Raises:
        LookupError: no model has been trained yet.
    """
    if not warehouse.table_exists(con, "model_runs"):
        raise LookupError("no trained model: materialize recommender_model first")
    rows = con.execute("SELECT * FROM model_runs ORDER BY trained_at DESC LIMIT 1").df()
    if rows.empty:
        raise LookupError("no trained model: materialize recommender_model first")
    return rows.iloc[0].to_dict()


def load_model(tracking_uri: str, model_uri: str, content):
    """Load the ``TrainedRecommender`` logged at ``model_uri`` (safetensors weights, no pickle), scoring the
    items of ``content`` (items new since training get content-only scores)."""
    from pathlib import Path

    import mlflow

    from recsys_pipeline.model import TrainedRecommender

    mlflow.set_tracking_uri(tracking_uri)
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    return TrainedRecommender.load(Path(local) / "artifacts" / "weights", content)


PERSONALIZED = "personalized"
COLD_USER_PRIOR = "cold_user_prior"
POPULARITY_FALLBACK = "popularity_fallback"


def top_k_for_all_users(model, seen: pd.DataFrame, k: int) -> pd.DataFrame:
    """Top-``k`` items per user in ``seen`` (``user_id, item_id``), excluding each user's seen items.

    Returns ``user_id, rank (1..k), item_id, score, strategy``: ``strategy`` is ``"personalized"`` for users the
    model was trained on and ``"cold_user_prior"`` for users whose history arrived after its training cutoff (the
    model has no embedding for them: it ranks by its learned, content-aware item prior, their seen items still
    excluded).
    """
    users = sorted(seen["user_id"].astype(str).unique())
    recs = model.recommend(users, k=k, exclude=seen).reset_index(drop=True)
    known = recs["user_id"].isin(model.user_index.keys())
    recs["strategy"] = known.map({True: PERSONALIZED, False: COLD_USER_PRIOR}).astype(str)
    return recs


def item_popularity(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every catalog item with its title and popularity: ``item_id, title, users, rank``.

    ``users`` = distinct users with an interaction (all time); ``rank`` 1..n by ``users`` descending, ties by
    ``item_id``. Serves the titles and the popularity fallback for users without history (``recsys serve``).

    Raises:
        LookupError: ``item_catalog`` or ``interactions`` is missing.
    """
    for table in ("item_catalog", "interactions"):
        if not warehouse.table_exists(con, table):
            raise LookupError(f"no {table} table: materialize it first")
    return con.execute(
        "SELECT c.item_id, c.title, count(DISTINCT i.user_id) AS users, "
        "row_number() OVER (ORDER BY count(DISTINCT i.user_id) DESC, c.item_id) AS rank "
        "FROM item_catalog c LEFT JOIN interactions i USING (item_id) GROUP BY c.item_id, c.title ORDER BY rank"
    ).df()


# ---------------------------------------------------------------------------------------------- champion
def champion_version(tracking_uri: str, registered_model_name: str):
    """The ``ModelVersion`` holding the ``champion`` alias (``.version``, ``.run_id``, ``.tags``).

    Raises:
        LookupError: no version is champion yet (nothing trained and evaluated, or every version lost its gate).
    """
    from mlflow.tracking import MlflowClient

    from recsys_pipeline import tracking

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


@dataclass(frozen=True)
class ChampionPolicy:
    """When a new model version replaces the champion.

    Attributes:
        metric: ``{protocol}.{model}.{metric}`` as logged by ``runs.evaluate_and_log``, higher = better (default:
            per-user last-20% holdout, our model, NDCG@10).
        min_margin: the new version is promoted when ``its value - champion's value >= min_margin`` (absolute,
            metric units). With the default 0 a tie promotes the newer version: it was trained on newer data and
            measured no worse on the same split. Raise it to require a real improvement.
    """

    metric: str = DEFAULT_GATE_METRIC
    min_margin: float = 0.0

    def __post_init__(self) -> None:
        parts = self.metric.split(".")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"gate metric {self.metric!r} must be '<protocol>.<model>.<metric>', "
                             f"e.g. {DEFAULT_GATE_METRIC!r}")
        if not (math.isfinite(self.min_margin) and self.min_margin >= 0):
            raise ValueError(f"min_margin must be a finite number >= 0, got {self.min_margin}")

    @property
    def protocol(self) -> str:
        return self.metric.split(".")[0]

    @property
    def model(self) -> str:
        return self.metric.split(".")[1]

    @property
    def metric_name(self) -> str:
        return self.metric.split(".")[2]


@dataclass
class GateDecision:
    """Outcome of one gate. ``comparison`` says where the champion's figure came from:

    - ``first_version``: there was no champion;
    - ``already_champion``: the gated version already holds the alias (re-evaluation);
    - ``same_config``: the champion was trained with the same ``ModelConfig``; on the same split the same recipe
      gives the same figure, so it is not retrained;
    - ``retrained_same_split``: the champion's config was retrained on this evaluation's train part and scored on
      its test part (same split, same seed, same code: comparable);
    - ``recorded``: the champion has no readable config; its figure recorded at its own gate (another split, older
      data: only roughly comparable).
    """

    version: str
    promoted: bool
    reason: str
    metric: str
    value: float
    champion_version: str | None
    champion_value: float | None
    comparison: str
    evaluation_run_id: str | None = None
    min_margin: float = 0.0

    @property
    def decision(self) -> str:
        return CHAMPION if self.promoted else CHALLENGER

    def tags(self) -> dict[str, str]:
        """``gate.*`` tags for the model version and runs (MLflow tag values are strings)."""
        return {
            "gate.decision": self.decision,
            "gate.reason": self.reason,
            "gate.metric": self.metric,
            "gate.value": f"{self.value:.6f}",
            "gate.min_margin": str(self.min_margin),
            "gate.champion_version": self.champion_version or "",
            "gate.champion_value": "" if self.champion_value is None else f"{self.champion_value:.6f}",
            "gate.comparison": self.comparison,
            "gate.evaluation_run_id": self.evaluation_run_id or "",
        }


def decide(value: float, champion_value: float | None, min_margin: float = 0.0) -> tuple[bool, str]:
    """``(promote, reason)`` for a challenger scoring ``value`` against a champion scoring ``champion_value``
    (``None``: no champion). Promote when ``value - champion_value >= min_margin``; a non-finite ``value`` never
    wins; a non-finite champion figure always loses."""
    if champion_value is None:
        return True, "no champion yet: the first evaluated version becomes champion"
    if not math.isfinite(value):
        return False, f"challenger figure is not finite ({value}): kept as challenger"
    if not math.isfinite(champion_value):
        return True, f"champion figure is not finite ({champion_value}): replaced"
    delta = value - champion_value
    if delta >= min_margin:
        return True, f"{value:.4f} vs champion {champion_value:.4f} (delta {delta:+.4f} >= margin {min_margin:g})"
    return False, f"{value:.4f} vs champion {champion_value:.4f} (delta {delta:+.4f} < margin {min_margin:g})"


def _config_from_params(params: dict[str, str]):
    """``ModelConfig`` from the ``model.*`` params (text) of a training run; unknown fields ignored."""
    from recsys_pipeline.model import ModelConfig

    defaults = ModelConfig()
    values = {}
    for f in dataclasses.fields(ModelConfig):
        if f.name not in params:
            continue
        text, default = params[f.name], getattr(defaults, f.name)
        if text == "None":
            values[f.name] = None
        elif isinstance(default, bool):
            values[f.name] = text == "True"
        elif isinstance(default, int):
            values[f.name] = int(text)
        elif isinstance(default, float):
            values[f.name] = float(text)
        else:
            values[f.name] = text
    return ModelConfig(**values)


def version_model_config(tracking_uri: str, registered_model_name: str, version: str):
    """The ``ModelConfig`` a registered version was trained with (from its run's ``model.*`` params), or
    ``None`` when the run did not log one."""
    from mlflow.tracking import MlflowClient

    from recsys_pipeline import tracking

    client = MlflowClient(tracking_uri)
    mv = client.get_model_version(registered_model_name, str(version))
    params = tracking.run_model_config(client, mv.run_id) if mv.run_id else None
    return _config_from_params(params) if params else None


def score_config(
    interactions: pd.DataFrame,
    content,
    model_config,
    trainer_config,
    policy: ChampionPolicy,
    *,
    holdout_fraction: float = 0.2,
    cold_fraction: float = 0.2,
    temporal_cutoff: datetime | None = None,
    seed: int = 0,
    k: int = 20,
) -> float:
    """Train ``model_config`` on the train part of the ``policy.protocol`` split (the same split
    ``runs.evaluate_and_log`` builds from the same arguments) and return ``policy.metric_name`` on its test part.

    Raises:
        ValueError: unknown protocol, or ``policy.metric_name`` not computed by ``evaluation.evaluate_split``.
    """
    from recsys_pipeline import evaluation
    from recsys_pipeline.model import train_recommender
    from recsys_pipeline.runs import make_split

    split = make_split(interactions, policy.protocol, holdout_fraction=holdout_fraction, cold_fraction=cold_fraction,
                       temporal_cutoff=temporal_cutoff, seed=seed)
    model, _ = train_recommender(split.train, content, model_config, trainer_config)
    figures = evaluation.evaluate_split(model, split, list(content.item_ids), k=k)
    if policy.metric_name not in figures:
        raise ValueError(f"metric {policy.metric_name!r} is not computed by the evaluation; have {sorted(figures)}")
    return float(figures[policy.metric_name])


def gate_model_version(
    tracking_uri: str,
    registered_model_name: str,
    version: str,
    evaluation_metrics: pd.DataFrame,
    policy: ChampionPolicy,
    rescore_champion=None,
    evaluation_run_id: str | None = None,
) -> GateDecision:
    """Decide whether ``version`` becomes champion, move the aliases and record the decision.

    Args:
        evaluation_metrics: ``protocol, model, metric, value`` of this version's evaluation (``runs.evaluate_and_log``
            run with the version's ``ModelConfig``); the challenger's figure is the row named by ``policy.metric``.
        rescore_champion: ``ModelConfig -> float``, the same evaluation for another config on the same split
            (e.g. ``functools.partial(score_config, interactions, content, trainer_config=..., policy=..., ...)``),
            called when the champion's config differs from the version's. ``None``: use the champion's recorded
            figure (``comparison="recorded"``).
        evaluation_run_id: the evaluation's MLflow run; the decision is also tagged there, and the champion's
            re-scored figure logged there as ``{protocol}.champion.{metric}``.

    Effects: alias ``champion`` (promoted) or ``challenger`` (kept) on ``version``; ``gate.*`` tags
    (:meth:`GateDecision.tags`) on the version, its training run and the evaluation run.

    Raises:
        ValueError: ``policy.metric`` is not in ``evaluation_metrics`` (its protocol was not evaluated).
    """
    from mlflow.tracking import MlflowClient

    from recsys_pipeline import tracking

    version = str(version)
    row = evaluation_metrics[
        (evaluation_metrics["protocol"] == policy.protocol) & (evaluation_metrics["model"] == policy.model)
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
        if theirs is not None and mine is not None and theirs == mine:
            comparison, champion_value = "same_config", value
        elif theirs is not None and rescore_champion is not None:
            comparison, champion_value = "retrained_same_split", float(rescore_champion(theirs))
            if evaluation_run_id and math.isfinite(champion_value):
                client.log_metric(evaluation_run_id, f"{policy.protocol}.champion.{policy.metric_name}",
                                  champion_value)
        else:
            comparison = "recorded"
            recorded = champion.tags.get("gate.value") if champion.tags.get("gate.metric") == policy.metric else None
            champion_value = float(recorded) if recorded else float("nan")
    promoted, reason = decide(value, champion_value if champion is not None else None, policy.min_margin)
    if comparison == "already_champion":
        promoted, reason = True, f"v{version} already holds the champion alias; re-evaluated at {value:.4f}"
    elif champion is not None:
        reason = f"{policy.metric}: {reason}; champion v{champion.version}, {comparison.replace('_', ' ')}"
    decision = GateDecision(version, promoted, reason, policy.metric, value,
                            None if champion is None else str(champion.version), champion_value, comparison,
                            evaluation_run_id, policy.min_margin)
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
    run_ids = [client.get_model_version(registered_model_name, version).run_id, evaluation_run_id]
    for run_id in filter(None, run_ids):
        for key, text in tags.items():
            client.set_tag(run_id, key, text)
    return decision
