"""What gets published for serving: every user's top-K by the champion (through ``Recommender.recommend``), and the
items snapshot (titles and the popularity list that serves users without history), written atomically.

Strategies (the ``strategy`` column and the HTTP answer):

- ``personalized``: a user the model was trained on;
- ``cold_user_prior``: a user whose history arrived after the model's training cutoff (no user embedding yet:
  ranked by the model's content-aware item prior, seen items still excluded);
- ``popularity_fallback``: a caller-declared new user without any history (``recsys serve`` with
  ``?fallback=true``).
"""

from __future__ import annotations

from datetime import date

import pandas as pd

from recsys_pipeline.content.features import ItemFeatures
from recsys_pipeline.models.base import Recommender
from recsys_pipeline.models.popularity import PopularityRecommender
from recsys_pipeline.serving.snapshot import ITEMS, RECOMMENDATIONS, publish_snapshot
from recsys_pipeline.settings import HomePaths

__all__ = ["PERSONALIZED", "COLD_USER_PRIOR", "POPULARITY_FALLBACK", "rank_all_users", "items_snapshot", "publish"]

PERSONALIZED = "personalized"
COLD_USER_PRIOR = "cold_user_prior"
POPULARITY_FALLBACK = "popularity_fallback"


def rank_all_users(
    model: Recommender,
    interactions: pd.DataFrame,
    k: int,
    model_run_id: str,
    model_version: str,
    produced_on: date,
) -> pd.DataFrame:
    """Top-``k`` for every user in ``interactions`` (``user_id, item_id``), excluding each user's interacted items
    (those the model was fit on and any newer ones).

    Returns the ``recommendations`` table (``data.schema.RECOMMENDATIONS``): ``user_id, rank, item_id, score,
    strategy, model_run_id, model_version, produced_on``.
    """
    pairs = interactions[["user_id", "item_id"]].astype(str).drop_duplicates()
    users = sorted(pairs["user_id"].unique())
    recs = model.recommend(users, k=k, exclude_seen=True, exclude=pairs)
    known = recs["user_id"].isin(set(model.known_users))
    recs["strategy"] = known.map({True: PERSONALIZED, False: COLD_USER_PRIOR}).astype(str)
    return recs.assign(model_run_id=model_run_id, model_version=str(model_version), produced_on=produced_on)


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
    """Replace the published snapshots atomically: items first, so every published list's items have titles."""
    publish_snapshot(paths, items, ITEMS)
    publish_snapshot(paths, recommendations, RECOMMENDATIONS)
