"""MLflow pyfunc "model from code" for a trained recommender (loaded by ``mlflow.pyfunc.load_model``).

Input: a DataFrame with a ``user_id`` column (str). Params: ``k`` (int, default 10), ``explain`` (bool, default
false).
Output: DataFrame ``user_id, rank, item_id, score`` (``rank`` 1..k; seen items excluded; unknown users get the
model's cold-user fallback); with ``explain``, also ``because`` (list of the user's item ids that raise the item's
score most) and ``modality_weights`` (dict: the item's content shares), from ``TwoTowerRecommender.explain``.
Errors: a bad input or ``k`` raises ``MlflowException`` (``INVALID_PARAMETER_VALUE``), which ``mlflow models serve``
answers with HTTP 400 and the message, not a stack trace.
"""

from __future__ import annotations

import numbers

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the saved ``TwoTowerRecommender`` folder (safetensors, JSON, npz, Parquet: no pickle)."""

    def load_context(self, context) -> None:
        from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

        self.model = TwoTowerRecommender.load(context.artifacts["model"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if "user_id" not in model_input.columns:
            raise MlflowException("input needs a 'user_id' column", INVALID_PARAMETER_VALUE)
        k = (params or {}).get("k", 10)
        n_items = len(self.model.item_ids)
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= n_items:
            raise MlflowException(
                f"param k must be an integer in 1..{n_items} (the catalog size), got {k!r}", INVALID_PARAMETER_VALUE
            )
        ranked = self.model.recommend(model_input["user_id"].astype(str).tolist(), k=int(k), exclude_seen=True)
        if not bool((params or {}).get("explain", False)):
            return ranked
        because, shares = [], []
        for user, items in ranked.groupby("user_id", sort=False)["item_id"]:
            explained = self.model.explain([user], items.tolist())
            because += explained["because"].tolist()
            shares += explained["modality_weights"].tolist()
        return ranked.assign(because=because, modality_weights=shares)  # recommend() lists users contiguously


mlflow.models.set_model(RecommenderPyfunc())
