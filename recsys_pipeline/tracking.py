"""MLflow helpers (no Dagster import): experiments under the home store, model logging and loading.

The model is logged as an MLflow pyfunc "model from code" (``recsys_pipeline/pyfunc_model.py``): its artifacts are
the weights (safetensors), config and id maps (JSON), the item content (``.npz``, no pickle) and the seen items
(Parquet), so ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work without unpickling project objects.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
MODEL_ARTIFACT = "model"


def experiment_id(tracking_uri: str, name: str, artifact_location: str | None = None) -> str:
    """Id of experiment ``name`` in the store at ``tracking_uri``, created (with ``artifact_location``) if missing."""
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = Path(artifact_location).resolve().as_uri() if artifact_location else None
    return client.create_experiment(name, artifact_location=location)


def log_recommender(
    model,
    content,
    seen: pd.DataFrame,
    registered_model_name: str | None,
    pip_requirements: list[str] | None = None,
) -> tuple[str, str | None]:
    """Log ``model`` (a ``TrainedRecommender``) in the active run as a pyfunc and register a version.

    Args:
        model: ``TrainedRecommender`` with ``save(dir)``.
        content: the ``ItemContent`` it scores (saved as ``item_content.npz``).
        seen: ``user_id, item_id`` pairs excluded from recommendations (saved as Parquet).
        registered_model_name: registry name; ``None`` logs without registering.

    Returns:
        ``(model_uri, version)``; version is ``None`` when not registered.
    """
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "weights"
        model.save(model_dir)
        content_path = Path(tmp) / "item_content.npz"
        content.to_npz(content_path)
        seen_path = Path(tmp) / "seen.parquet"
        seen[["user_id", "item_id"]].to_parquet(seen_path, index=False)
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(PYFUNC_CODE),
            artifacts={"weights": str(model_dir), "item_content": str(content_path), "seen": str(seen_path)},
            pip_requirements=pip_requirements or ["recsys_pipeline", "torch", "safetensors", "pandas", "pyarrow"],
            registered_model_name=registered_model_name,
            signature=_signature(),
        )
    version = str(info.registered_model_version) if info.registered_model_version is not None else None
    return info.model_uri, version


def _signature():
    """Input ``user_id`` (str); output ``user_id, rank, item_id, score``; param ``k`` (int, default 10)."""
    from mlflow.models import infer_signature

    example_in = pd.DataFrame({"user_id": ["1"]})
    example_out = pd.DataFrame({"user_id": ["1"], "rank": [1], "item_id": ["1"], "score": [0.5]})
    return infer_signature(example_in, example_out, params={"k": 10})


def load_pyfunc(tracking_uri: str, model_uri: str):
    """Load a logged recommender as an MLflow pyfunc (``predict(DataFrame[user_id]) -> ranked items``)."""
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.pyfunc.load_model(model_uri)


def quiet() -> None:
    """Silence MLflow's per-call progress bars and info logs in batch runs."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
