"""The champion / challenger gate as pure functions of figures (no MLflow here; ``model_registry`` applies them).

A new model version replaces the champion when its figure on one configured metric (:class:`ChampionPolicy`) is at
least ``min_margin`` above the champion's on the same split, and only when it clears the popularity floor (our
NDCG@10 at least popularity's on every evaluated protocol, :func:`ndcg_against_popularity`: the same verdict as the
blocking asset check ``model_beats_popularity``, so the alias never moves to a model that check stops)
(:func:`decide`). The outcome, with its reason, is a
:class:`GateDecision`, whose :meth:`GateDecision.tags` are written on the model version and its runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

__all__ = [
    "CHAMPION",
    "CHALLENGER",
    "DEFAULT_GATE_METRIC",
    "ChampionPolicy",
    "GateDecision",
    "decide",
    "ndcg_against_popularity",
]

CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_GATE_METRIC = "user_last_fraction.ours.ndcg_at_10"


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
            raise ValueError(
                f"gate metric {self.metric!r} must be '<protocol>.<model>.<metric>', e.g. {DEFAULT_GATE_METRIC!r}"
            )
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
    - ``recorded_same_split``: the champion's own gate ran on inputs with this evaluation's fingerprint
      (``split``: same interactions, features and protocol settings): its recorded figure is what retraining its
      config would give, so it is not retrained;
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
    floor: str = ""
    split: str = ""  # evaluation.protocols.evaluation_fingerprint of the evaluated inputs

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
            "gate.popularity_floor": self.floor,
            "gate.split": self.split,
        }


def decide(
    value: float, champion_value: float | None, min_margin: float = 0.0, floor: dict | None = None
) -> tuple[bool, str]:
    """``(promote, reason)`` for a challenger scoring ``value`` against a champion scoring ``champion_value``
    (``None``: no champion). Promote when ``value - champion_value >= min_margin``; a non-finite ``value`` never
    wins; a non-finite champion figure always loses.

    ``floor``: the popularity-floor verdict of this evaluation (:func:`ndcg_against_popularity`, keys ``passed``
    and ``reason``). When given and not passed the version is never promoted, whatever the champion's figure
    (also when there is no champion yet): the reason starts with ``below the popularity floor``."""
    promote, reason = _versus_champion(value, champion_value, min_margin)
    if floor is not None and not floor["passed"]:
        versus = "no champion yet" if champion_value is None else reason
        return False, f"below the popularity floor ({floor['reason']}): kept as challenger; {versus}"
    return promote, reason


def _versus_champion(value: float, champion_value: float | None, min_margin: float) -> tuple[bool, str]:
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


def ndcg_against_popularity(metrics: pd.DataFrame, protocols: Sequence[str] | None = None) -> dict:
    """Compare our NDCG@10 with the popularity baseline's, per evaluated protocol.

    Args:
        metrics: ``evaluation_metrics`` rows ``protocol, model, metric, value`` (``evaluate_protocols``).
        protocols: protocols to compare; ``None`` = every protocol with both ``ours`` and ``popularity``.

    Returns:
        ``{"passed": bool, "protocols": {protocol: {"ours": float, "popularity": float}}, "reason": str}``;
        ``passed`` is False when no protocol has both figures (no evidence is not a pass).
    """
    rows = metrics[(metrics["metric"] == "ndcg_at_10") & metrics["model"].isin(["ours", "popularity"])]
    wide = rows.pivot_table(index="protocol", columns="model", values="value", aggfunc="first")
    wide = wide.dropna() if {"ours", "popularity"} <= set(wide.columns) else wide.iloc[0:0]
    if protocols is not None:
        wide = wide[wide.index.isin(list(protocols))]
    figures = {str(p): {"ours": float(r["ours"]), "popularity": float(r["popularity"])} for p, r in wide.iterrows()}
    losing = [p for p, f in figures.items() if not f["ours"] >= f["popularity"]]
    if not figures:
        return {"passed": False, "protocols": {}, "reason": "no protocol with NDCG@10 for ours and popularity"}
    reason = (
        ("ours >= popularity on " + ", ".join(figures))
        if not losing
        else "; ".join(
            f"{p}: ours NDCG@10 {figures[p]['ours']:.4f} < popularity {figures[p]['popularity']:.4f}" for p in losing
        )
    )
    return {"passed": not losing, "protocols": figures, "reason": reason}
