"""What gets published for serving: every user's top-K by the champion (through ``Recommender.recommend``), and the
items snapshot (titles and the popularity list that serves users without history), written atomically.

Strategies (the ``strategy`` column and the HTTP answer):

- ``personalized``: a user the model was trained on, with no interaction newer than the model;
- ``folded_in``: a user with interactions the model was not trained on (a new user, or a known one with newer
  events): a model that can (``with_history``) folds their history in when the lists are made, without retraining
  (the item-item head reads every item of theirs; a known user's history head is re-pooled);
- ``cold_user_prior``: such a user under a model that cannot fold in (ranked by its item prior, seen items
  excluded);
- ``popularity_fallback``: a caller-declared new user without any history (``recsys serve`` with
  ``?fallback=true``).
"""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import pandas as pd

from recsys_pipeline.content.features import ItemFeatures
from recsys_pipeline.models.base import Recommender
from recsys_pipeline.models.popularity import PopularityRecommender
from recsys_pipeline.serving.snapshot import (
    ITEMS,
    RECOMMENDATIONS,
    current_day,
    describe_days,
    publish_model,
    publish_snapshot,
    published_days,
    remove_days_before,
    set_current_day,
)
from recsys_pipeline.settings import HomePaths

__all__ = [
    "PERSONALIZED",
    "COLD_USER_PRIOR",
    "FOLDED_IN",
    "POPULARITY_FALLBACK",
    "rank_all_users",
    "explanation_json",
    "items_snapshot",
    "publish",
    "publish_day",
    "make_current",
]

PERSONALIZED = "personalized"
COLD_USER_PRIOR = "cold_user_prior"
FOLDED_IN = "folded_in"
POPULARITY_FALLBACK = "popularity_fallback"


def rank_all_users(
    model: Recommender,
    interactions: pd.DataFrame,
    k: int,
    model_run_id: str,
    model_version: str,
    produced_on: date,
    partition_date: date | None = None,
    model_partition_date: date | None = None,
    explain: bool = True,
) -> pd.DataFrame:
    """Top-``k`` for every user in ``interactions`` (``user_id, item_id[, timestamp]``), excluding each user's
    interacted items (those the model was fit on and any newer ones).

    A user with pairs the model was not fit on (not in ``model.seen``) is folded in first when the model has
    ``with_history`` and ``interactions`` has ``timestamp``: their whole history in ``interactions`` is given
    (strategy ``folded_in``); otherwise such an unknown user is ``cold_user_prior``.

    Returns the ``recommendations`` table (``data.schema.RECOMMENDATIONS``): ``partition_date`` (the UTC day of the
    lists; default ``produced_on``), ``user_id, rank, item_id, score, strategy, model_run_id, model_version,
    produced_on``, ``model_partition_date`` (the day the model was trained as of, ``None`` when unknown) and
    ``explanation`` (with ``explain`` and a model that has ``explain``: JSON of :func:`explanation_json`, else
    ``None``).
    """
    pairs = interactions[["user_id", "item_id"]].astype(str).drop_duplicates()
    users = sorted(pairs["user_id"].unique())
    folded: set[str] = set()
    if hasattr(model, "with_history") and "timestamp" in interactions.columns:
        fitted = model.seen.pairs().assign(_fitted=True)
        newer = pairs.merge(fitted, on=["user_id", "item_id"], how="left")["_fitted"].isna().to_numpy()
        folded = set(pairs.loc[newer, "user_id"])
        if folded:
            histories = interactions[interactions["user_id"].astype(str).isin(folded)]
            model = model.with_history(histories)
    recs = model.recommend(users, k=k, exclude_seen=True, exclude=pairs)
    known = recs["user_id"].isin(set(model.known_users))
    recs["strategy"] = np.where(
        recs["user_id"].isin(folded), FOLDED_IN, np.where(known, PERSONALIZED, COLD_USER_PRIOR)
    ).astype(str)
    recs["explanation"] = None
    if explain and hasattr(model, "explain") and len(recs):
        texts = pd.Series(None, index=recs.index, dtype=object)
        for user, items in recs.groupby("user_id", sort=False)["item_id"]:
            explained = model.explain([user], items.tolist())
            texts.loc[items.index] = [explanation_json(row) for row in explained.itertuples()]
        recs["explanation"] = texts
    return recs.assign(
        partition_date=partition_date or produced_on,
        model_run_id=model_run_id,
        model_version=str(model_version),
        produced_on=produced_on,
        model_partition_date=model_partition_date,
    )


def explanation_json(row) -> str:
    """One list entry's explanation as stored (``recommendations.explanation``): ``{"because": [item ids],
    "contributions": [score drops], "modalities": {name: share}}`` (``TwoTowerRecommender.explain``)."""
    return json.dumps(
        {
            "because": list(row.because),
            "contributions": [round(c, 4) for c in row.contributions],
            "modalities": dict(row.modality_weights),
        },
        separators=(",", ":"),
    )


def items_snapshot(interactions: pd.DataFrame, features: ItemFeatures, titles: pd.DataFrame) -> pd.DataFrame:
    """Every catalog item (``features.item_ids``) with its title and popularity (:class:`PopularityRecommender` on
    all ``interactions``): ``item_id, title, users, rank`` (1 = most users; ties in catalog order).

    Args:
        titles: ``item_id, title`` of the catalog.
    """
    ranking = PopularityRecommender().fit(interactions, features).ranking()
    by_id = titles.assign(item_id=titles["item_id"].astype(str)).set_index("item_id")["title"]
    return ranking.assign(title=by_id.reindex(ranking["item_id"]).to_numpy())[["item_id", "title", "users", "rank"]]


def publish(paths: HomePaths, recommendations: pd.DataFrame, items: pd.DataFrame) -> None:
    """Replace the snapshots of a home without days atomically (``published/*.parquet``): items first, so every
    published list's items have titles. The pipeline publishes by day (:func:`publish_day`)."""
    publish_snapshot(paths, items, ITEMS)
    publish_snapshot(paths, recommendations, RECOMMENDATIONS)


def publish_day(
    paths: HomePaths,
    day: date,
    recommendations: pd.DataFrame,
    items: pd.DataFrame,
    keep_days: int | None = None,
    model: Recommender | None = None,
) -> dict:
    """Publish the lists of UTC day ``day``: the model that made them (``model``, for request-time fold-in:
    ``POST /recommendations``), its snapshots (items first, then the lists; each replaced atomically), then the
    current-day pointer moves to ``day`` unless it names a later day (days never go backwards: publishing an old
    day again keeps serving the newer one; :func:`make_current` rolls back). ``keep_days``: published days before
    ``day - (keep_days - 1)`` are deleted, the current one excepted.

    Returns:
        ``{"current": the current day after publishing, "moved": whether the pointer moved to day, "removed":
        [days deleted by retention]}``.
    """
    if model is not None:
        version = str(recommendations["model_version"].iloc[0]) if "model_version" in recommendations else ""
        publish_model(paths, day, model.save, model_version=version)
    publish_snapshot(paths, items, ITEMS, day)
    publish_snapshot(paths, recommendations, RECOMMENDATIONS, day)
    current = current_day(paths)
    moved = current is None or day >= current
    if moved:
        set_current_day(paths, day)
        current = day
    removed = remove_days_before(paths, day - timedelta(days=keep_days - 1)) if keep_days else []
    return {"current": current, "moved": moved, "removed": removed}


def make_current(paths: HomePaths, day: date, **info: str) -> date | None:
    """Answer from the lists of UTC day ``day`` (a rollback, or a roll forward): moves the current-day pointer, with
    ``info`` recorded beside it (e.g. the Dagster run). Returns the day it named before.

    Raises:
        LookupError: ``day`` has no published lists; the message lists the days that have.
    """
    days = published_days(paths)
    if day not in days:
        shown = describe_days(days)
        raise LookupError(f"no published recommendations of {day}; published days: {shown}")
    previous = current_day(paths)
    set_current_day(paths, day, **info)
    return previous
