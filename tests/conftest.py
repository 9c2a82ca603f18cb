"""Shared fixtures. Every test gets its own home; nothing touches the network."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# The partitions definition is built at import: pin it to the bundled data's first day for every test.
os.environ["RECSYS_PARTITIONS_START"] = "1996-03-29"
# Importing recsys_pipeline.definitions creates the home: never the developer's ./.recsys.
os.environ["RECSYS_HOME"] = tempfile.mkdtemp(prefix="recsys-test-home-")

from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from recsys_pipeline.settings import BUNDLED_MOVIELENS_DIR  # noqa: E402


def write_movielens_slice(dest: Path, start: str, end: str, max_users: int | None = None) -> Path:
    """Write a GroupLens-layout release holding the bundled ratings of UTC days ``[start, end)`` and only the
    movies and tags they mention."""
    dest.mkdir(parents=True, exist_ok=True)
    ratings = pd.read_csv(BUNDLED_MOVIELENS_DIR / "ratings.csv")
    ts = pd.to_datetime(ratings["timestamp"], unit="s")
    ratings = ratings[(ts >= pd.Timestamp(start)) & (ts < pd.Timestamp(end))]
    if max_users:
        ratings = ratings[ratings["userId"].isin(sorted(ratings["userId"].unique())[:max_users])]
    movies = pd.read_csv(BUNDLED_MOVIELENS_DIR / "movies.csv")
    movies = movies[movies["movieId"].isin(ratings["movieId"])]
    tags = pd.read_csv(BUNDLED_MOVIELENS_DIR / "tags.csv")
    tags = tags[tags["movieId"].isin(movies["movieId"])]
    ratings.to_csv(dest / "ratings.csv", index=False)
    movies.to_csv(dest / "movies.csv", index=False)
    tags.to_csv(dest / "tags.csv", index=False)
    return dest


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh RECSYS_HOME for this test."""
    path = tmp_path / "home"
    monkeypatch.setenv("RECSYS_HOME", str(path))
    return path


@pytest.fixture(autouse=True)
def seeded_random_state():
    """Every test starts from the same global random state (Python, NumPy, torch), so a run is repeatable:
    module initialisation, dropout and negative sampling draw from these unless a test passes its own
    generator."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
