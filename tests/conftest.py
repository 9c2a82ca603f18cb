"""Shared fixtures. Every test gets its own home; nothing touches the network; random state is seeded per test."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# A test that forgets its own home must never write the developer's ./.recsys.
os.environ["RECSYS_HOME"] = tempfile.mkdtemp(prefix="recsys-test-home-")
atexit.register(shutil.rmtree, os.environ["RECSYS_HOME"], ignore_errors=True)
for _name in [n for n in os.environ if n.startswith("RECSYS_") and n != "RECSYS_HOME"]:
    del os.environ[_name]  # the developer's own settings must not change what the tests see

from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from recsys_pipeline.settings import BUNDLED_MOVIELENS_DIR  # noqa: E402

_FREE_AT_START = pytest.StashKey[float]()

FSDD_DIR = Path(__file__).parent / "fixtures" / "fsdd"
POSTERS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-posters"


def _write_movielens_slice(
    dest: Path,
    start: str = "1990-01-01",
    end: str = "2100-01-01",
    max_users: int | None = None,
    top_items: int | None = None,
) -> Path:
    """Write a GroupLens-layout release holding the bundled ratings of UTC days ``[start, end)`` (of the first
    ``max_users`` users, of the ``top_items`` most rated movies, when given) and only the movies and tags they
    mention."""
    dest.mkdir(parents=True, exist_ok=True)
    ratings = pd.read_csv(BUNDLED_MOVIELENS_DIR / "ratings.csv")
    ts = pd.to_datetime(ratings["timestamp"], unit="s")
    ratings = ratings[(ts >= pd.Timestamp(start)) & (ts < pd.Timestamp(end))]
    if max_users:
        ratings = ratings[ratings["userId"].isin(sorted(ratings["userId"].unique())[:max_users])]
    if top_items:
        ratings = ratings[ratings["movieId"].isin(ratings["movieId"].value_counts().index[:top_items])]
    movies = pd.read_csv(BUNDLED_MOVIELENS_DIR / "movies.csv")
    movies = movies[movies["movieId"].isin(ratings["movieId"])]
    tags = pd.read_csv(BUNDLED_MOVIELENS_DIR / "tags.csv")
    tags = tags[tags["movieId"].isin(movies["movieId"])]
    ratings.to_csv(dest / "ratings.csv", index=False)
    movies.to_csv(dest / "movies.csv", index=False)
    tags.to_csv(dest / "tags.csv", index=False)
    return dest


# ------------------------------------------------------------------------------------------ toy data for models
TOY_GENRES, TOY_ITEMS, TOY_USERS, TOY_DIM = 4, 120, 60, 16
# Small and fast settings for the toy data (the product's defaults are ModelConfig's).
TOY_FAST = dict(
    batch_size=128,
    num_negatives=64,
    embedding_dim=32,
    mlp_hidden=64,
    max_epochs=12,
    patience=4,
    lr=3e-3,
    val_fraction=0.1,
    exclude_modalities="",  # the toy image is read: fusion, masking and the ablation need a second modality
    item_item_weight=0.0,  # the two-tower alone (its scores are user @ item); the item-item head: test_item_item.py
)


def _toy_features(n_items: int = TOY_ITEMS, seed: int = 0, prefix: str = "i"):
    """Items belong to one of ``TOY_GENRES`` genres; the text vector is the genre centroid plus noise. A second
    modality "image" exists for even items only (absent rows are garbage, to prove masking)."""
    from recsys_pipeline.content.features import ItemFeatures

    rng = np.random.default_rng(seed)
    g = np.arange(n_items) % TOY_GENRES
    cent = np.random.default_rng(123).normal(size=(TOY_GENRES, TOY_DIM))
    text = cent[g] + 0.3 * rng.normal(size=(n_items, TOY_DIM))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    image = rng.normal(size=(n_items, 8))
    present = np.stack([np.ones(n_items, bool), np.arange(n_items) % 2 == 0], axis=1)
    return ItemFeatures(
        item_ids=[f"{prefix}{i}" for i in range(n_items)],
        modalities={"text": text.astype(np.float32), "image": image.astype(np.float32)},
        present=present,
        genres=np.eye(TOY_GENRES, dtype=np.float32)[g],
        genre_names=[f"g{k}" for k in range(TOY_GENRES)],
        year=np.where(np.arange(n_items) % 5 == 0, 0, 1980 + np.arange(n_items) % 30),
    )


def _toy_interactions(seed: int = 0) -> pd.DataFrame:
    """Planted structure: user u likes only genre u % TOY_GENRES; item popularity is skewed within a genre;
    15 items per user at hours 0..14."""
    rng = np.random.default_rng(seed)
    g = np.arange(TOY_ITEMS) % TOY_GENRES
    rows = []
    for u in range(TOY_USERS):
        pool = np.where(g == u % TOY_GENRES)[0]
        p = 1.0 / (1 + np.arange(len(pool)))
        items = rng.choice(pool, size=15, replace=False, p=p / p.sum())
        for t, i in enumerate(items):
            rows.append((f"u{u}", f"i{i}", pd.Timestamp("2020-01-01") + pd.Timedelta(hours=int(t)), 1.0))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "value"])


@pytest.fixture(scope="session")
def toy():
    """Toy data with planted structure: ``toy.features(n_items, seed, prefix)``, ``toy.interactions(seed)`` and the
    constants ``GENRES, ITEMS, USERS, DIM``, ``FAST`` (ModelConfig overrides for quick training)."""
    return SimpleNamespace(
        features=_toy_features,
        interactions=_toy_interactions,
        GENRES=TOY_GENRES,
        ITEMS=TOY_ITEMS,
        USERS=TOY_USERS,
        DIM=TOY_DIM,
        FAST=dict(TOY_FAST),
    )


# --------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def movielens_slice():
    """``movielens_slice(dest, start, end, max_users=None, top_items=None) -> dest``: a slice of the bundled data in
    the GroupLens layout (usable from module- and session-scoped fixtures)."""
    return _write_movielens_slice


@pytest.fixture(scope="session")
def definitions():
    """The code location as Dagster loads it with the test environment's settings (bundled data, first day
    1996-03-29); resources resolve from the settings when a run starts."""
    from recsys_pipeline.definitions import build_definitions

    return build_definitions()


@pytest.fixture(scope="session")
def asset(definitions):
    """``asset(name)``: the code location's AssetsDefinition of that name."""
    return definitions.get_assets_def


@pytest.fixture(scope="session")
def check(definitions):
    """``check(name)``: the code location's AssetChecksDefinition of that name (callable with its resources)."""
    by_name = {key.name: c for c in definitions.asset_checks for key in c.check_keys}
    return by_name.__getitem__


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh RECSYS_HOME for this test."""
    path = tmp_path / "home"
    monkeypatch.setenv("RECSYS_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def fsdd_clips() -> list[Path]:
    """The four Free Spoken Digit Dataset recordings vendored under tests/fixtures/fsdd (CC BY-SA 4.0)."""
    return sorted(FSDD_DIR.glob("*.wav"))


@pytest.fixture(scope="session")
def posters_dir() -> Path:
    """The MovieLens posters in ../shared (never part of the repository); the test is skipped without them."""
    if not POSTERS_DIR.is_dir():
        pytest.skip(f"MovieLens posters not available ({POSTERS_DIR})")
    return POSTERS_DIR


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


@pytest.fixture(scope="session")
def item_item_model(toy):
    """``(features, interactions, model)``: a two-tower model with the item-item head (weight 0.5) fitted on all the
    toy interactions (what the fold-in, explanation and serving tests read; never modified by them)."""
    from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
    from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

    content, data = toy.features(), toy.interactions()
    config = ModelConfig(**dict(toy.FAST, val_fraction=0.0, item_item_weight=0.5, item_item_l2=5.0, seed=2))
    return content, data, TwoTowerRecommender(config, TrainerConfig(accelerator="cpu", devices=1)).fit(data, content)


def _free_gib() -> float:
    return shutil.disk_usage(tempfile.gettempdir()).free / 2**30


def pytest_sessionstart(session):
    session.config.stash[_FREE_AT_START] = _free_gib()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Free space where the suite writes (its temp folders: DuckDB files, MLflow stores, models; about 1 GB a run),
    at start and end: a full disk shows up as SQLite and DuckDB errors, far from the cause."""
    start, end = config.stash.get(_FREE_AT_START, float("nan")), _free_gib()
    low = " (LOW: tests that write a home fail with storage errors under about 3 GiB)" if min(start, end) < 3 else ""
    terminalreporter.write_line(
        f"free disk under {tempfile.gettempdir()}: {start:.1f} GiB at start, {end:.1f} at end{low}"
    )
