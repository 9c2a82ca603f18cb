"""MLflow pyfunc "model from code" for a trained recommender (loaded by ``mlflow.pyfunc.load_model``).

Input: a DataFrame with a ``user_id`` column (str). Params: ``k`` (int, default 10).
Output: DataFrame ``user_id, rank, item_id, score`` (``rank`` 1..k; seen items excluded; unknown users get the
model's cold-user fallback).
"""

from __future__ import annotations

import mlflow
import pandas as pd


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """Loads weights (safetensors), item content (npz) and seen items (Parquet) from the logged artifacts."""

    def load_context(self, context) -> None:
        from recsys_pipeline.model import ItemContent, TrainedRecommender

        content = ItemContent.from_npz(context.artifacts["item_content"])
        self.model = TrainedRecommender.load(context.artifacts["weights"], content)
        self.seen = pd.read_parquet(context.artifacts["seen"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if "user_id" not in model_input.columns:
            raise ValueError("input needs a 'user_id' column")
        k = int((params or {}).get("k", 10))
        n_items = len(self.model.content.item_ids)
        if not 1 <= k <= n_items:
            raise ValueError(f"param k must be in 1..{n_items} (the catalog size), got {k}")
        users = model_input["user_id"].astype(str).tolist()
        return self.model.recommend(users, k=k, exclude=self.seen[self.seen["user_id"].isin(users)])


mlflow.models.set_model(RecommenderPyfunc())
