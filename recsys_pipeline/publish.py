"""Publishing (no Dagster import): find the latest trained model, load it, rank the catalog for every user."""

from __future__ import annotations

import duckdb
import pandas as pd

from recsys_pipeline import warehouse


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


def top_k_for_all_users(model, seen: pd.DataFrame, k: int) -> pd.DataFrame:
    """Top-``k`` items per user in ``seen`` (``user_id, item_id``), excluding each user's seen items.

    Returns ``user_id, rank (1..k), item_id, score``.
    """
    users = sorted(seen["user_id"].astype(str).unique())
    return model.recommend(users, k=k, exclude=seen).reset_index(drop=True)
