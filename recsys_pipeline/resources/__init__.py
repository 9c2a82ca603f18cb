"""Dagster resources: the configuration a user edits. Local vs. production is a different instance, not an ``if``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import dagster as dg
import duckdb

from recsys_pipeline import warehouse
from recsys_pipeline.settings import HomePaths
from recsys_pipeline.sources import DailyFileSource, EventSource, MovieLensSource


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file."""

    path: str

    @contextlib.contextmanager
    def session(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        with warehouse.session(self.path, read_only=read_only) as con:
            yield con


class SourceResource(dg.ConfigurableResource):
    """Where events and the item catalog come from.

    ``kind="movielens"``: an extracted GroupLens release at ``movielens_path`` (empty = the bundled
    ml-latest-small). ``kind="daily_files"``: ``events_dir`` of ``YYYY-MM-DD.csv|.parquet|.jsonl`` files and a
    ``catalog_path`` file.
    """

    kind: str = "movielens"
    movielens_path: Optional[str] = None
    events_dir: Optional[str] = None
    catalog_path: Optional[str] = None

    def build(self) -> EventSource:
        if self.kind == "movielens":
            return MovieLensSource(self.movielens_path or None)
        if self.kind == "daily_files":
            if not self.events_dir or not self.catalog_path:
                raise ValueError("source kind 'daily_files' needs events_dir and catalog_path (RECSYS_EVENTS_DIR, RECSYS_CATALOG_PATH)")
            return DailyFileSource(self.events_dir, self.catalog_path)
        raise ValueError(f"unknown source kind {self.kind!r}: use 'movielens' or 'daily_files'")


class TextEncoderResource(dg.ConfigurableResource):
    """The BERT-family text encoder: ``model`` is a hub name or a local directory (empty = packaged MiniLM)."""

    model: Optional[str] = None
    batch_size: int = 64
    max_length: int = 128
    num_threads: Optional[int] = None
    local_files_only: bool = True

    def build(self):
        from recsys_pipeline.encoders import TextEncoder

        return TextEncoder(
            self.model or None,
            batch_size=self.batch_size,
            max_length=self.max_length,
            num_threads=self.num_threads,
            local_files_only=self.local_files_only,
        )



def _roots(text: str) -> list[str]:
    return [r for r in text.split(os.pathsep) if r.strip()]


class ImageEncoderResource(dg.ConfigurableResource):
    """Item images and the CNN that embeds them.

    ``roots``: folders images may be read from, joined with ``os.pathsep`` (relative catalog ``image_uri`` values and
    ``pattern`` are resolved under them; nothing outside is read). ``pattern``: file name for items without an
    ``image_uri`` (``{item_id}`` is replaced), empty = catalog URIs only. ``model``: a timm name (empty = packaged
    EfficientNet-Lite0); ``weights_file``: a local state dict for it (e.g. ResNet-18/50 weights); ``max_pixels``:
    larger images are marked missing (``too_many_pixels``) without decoding.
    """

    roots: str = ""
    pattern: str = "{item_id}.jpg"
    model: Optional[str] = None
    weights_file: Optional[str] = None
    cache_dir: Optional[str] = None
    batch_size: int = 32
    num_workers: int = 0
    max_pixels: int = 40_000_000
    max_bytes: int = 50_000_000
    local_files_only: bool = True

    def locator(self):
        from recsys_pipeline.media import MediaLocator

        return MediaLocator(_roots(self.roots), self.pattern or None, self.max_bytes)

    def build(self):
        from recsys_pipeline.encoders.image import ImageEncoder

        return ImageEncoder(
            self.model or None, weights_file=self.weights_file or None, cache_dir=self.cache_dir or None,
            batch_size=self.batch_size, num_workers=self.num_workers, max_pixels=self.max_pixels,
            local_files_only=self.local_files_only,
        )


class AudioEncoderResource(dg.ConfigurableResource):
    """Item audio clips and how they are embedded.

    ``roots`` / ``pattern`` as for images (default pattern empty: catalog ``audio_uri`` only). ``kind``: ``librosa``
    (180-d feature summary) or ``crepe`` (torchcrepe embedding, ``crepe_model`` ``tiny``/``full``).
    """

    roots: str = ""
    pattern: str = ""
    kind: str = "librosa"
    sample_rate: int = 16000
    window_seconds: float = 3.0
    min_seconds: float = 0.1
    crepe_model: str = "tiny"
    max_bytes: int = 200_000_000

    def locator(self):
        from recsys_pipeline.media import MediaLocator

        return MediaLocator(_roots(self.roots), self.pattern or None, self.max_bytes)

    def build(self):
        from recsys_pipeline.encoders.audio import AudioEncoder

        return AudioEncoder(
            self.kind, sample_rate=self.sample_rate, window_seconds=self.window_seconds,
            min_seconds=self.min_seconds, crepe_model=self.crepe_model,
        )


def image_encoder_from_env(paths: HomePaths | None = None) -> ImageEncoderResource:
    """``ImageEncoderResource`` from ``RECSYS_IMAGE_ROOT`` (``os.pathsep``-separated folders; unset = no images),
    ``RECSYS_IMAGE_PATTERN`` (default ``{item_id}.jpg``), ``RECSYS_IMAGE_MODEL``, ``RECSYS_IMAGE_WEIGHTS``; converted
    weights are cached under ``<home>/models``."""
    env = os.environ
    return ImageEncoderResource(
        roots=os.pathsep.join(str(Path(r).expanduser().resolve()) for r in _roots(env.get("RECSYS_IMAGE_ROOT", ""))),
        pattern=env.get("RECSYS_IMAGE_PATTERN", "{item_id}.jpg"),
        model=env.get("RECSYS_IMAGE_MODEL") or None,
        weights_file=env.get("RECSYS_IMAGE_WEIGHTS") or None,
        cache_dir=str(paths.root / "models") if paths is not None else None,
    )


def audio_encoder_from_env() -> AudioEncoderResource:
    """``AudioEncoderResource`` from ``RECSYS_AUDIO_ROOT``, ``RECSYS_AUDIO_PATTERN`` (default empty) and
    ``RECSYS_AUDIO_ENCODER`` (``librosa`` | ``crepe``)."""
    env = os.environ
    return AudioEncoderResource(
        roots=os.pathsep.join(str(Path(r).expanduser().resolve()) for r in _roots(env.get("RECSYS_AUDIO_ROOT", ""))),
        pattern=env.get("RECSYS_AUDIO_PATTERN", ""),
        kind=env.get("RECSYS_AUDIO_ENCODER", "librosa"),
    )


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking store, experiment and registry name, and the champion / challenger policy.

    ``champion_metric`` (``{protocol}.{model}.{metric}`` of ``model_evaluation``, higher = better) and
    ``champion_min_margin`` decide when a new model version takes the ``champion`` alias
    (``publish.ChampionPolicy``).
    """

    tracking_uri: str
    artifact_location: str
    experiment_name: str = "recsys_pipeline"
    registered_model_name: str = "recsys_ranker"
    champion_metric: str = "user_last_fraction.ours.ndcg_at_10"
    champion_min_margin: float = 0.0

    def champion_policy(self):
        from recsys_pipeline.publish import ChampionPolicy

        return ChampionPolicy(self.champion_metric, self.champion_min_margin)

    def experiment_id(self) -> str:
        from recsys_pipeline import tracking

        tracking.quiet()
        return tracking.experiment_id(self.tracking_uri, self.experiment_name, self.artifact_location)


class TrainingResource(dg.ConfigurableResource):
    """Model hyperparameters and Lightning ``Trainer`` settings (GPU / DDP by configuration).

    Empty hyperparameters keep ``ModelConfig``'s defaults. ``devices`` is ``"auto"``, a count (``"2"``) or a list
    (``"0,1"``); ``strategy="ddp"`` with ``devices`` > 1 trains data-parallel.
    """

    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    num_nodes: int = 1
    num_threads: Optional[int] = None
    max_epochs: Optional[int] = None
    embedding_dim: Optional[int] = None
    fusion: Optional[str] = None
    loss: Optional[str] = None
    history_length: Optional[int] = None  # 0 turns the user-history pooling off
    history_dropout: Optional[float] = None
    seed: Optional[int] = None

    def build_model_config(self):
        from recsys_pipeline.model import ModelConfig

        overrides = {
            k: v
            for k, v in {
                "max_epochs": self.max_epochs,
                "embedding_dim": self.embedding_dim,
                "fusion": self.fusion,
                "loss": self.loss,
                "history_length": self.history_length,
                "history_dropout": self.history_dropout,
                "seed": self.seed,
            }.items()
            if v is not None
        }
        return ModelConfig(**overrides)

    def build_trainer_config(self):
        from recsys_pipeline.model import TrainerConfig

        devices: object = self.devices
        if isinstance(devices, str) and devices.isdigit():
            devices = int(devices)
        return TrainerConfig(
            accelerator=self.accelerator,
            devices=devices,
            strategy=self.strategy,
            precision=self.precision,
            num_nodes=self.num_nodes,
            num_threads=self.num_threads,
        )


def source_from_env() -> SourceResource:
    """``SourceResource`` from ``RECSYS_SOURCE_KIND``, ``RECSYS_MOVIELENS_PATH``, ``RECSYS_EVENTS_DIR``,
    ``RECSYS_CATALOG_PATH`` (unset: the bundled ml-latest-small)."""
    return SourceResource(
        kind=os.environ.get("RECSYS_SOURCE_KIND", "movielens"),
        movielens_path=os.environ.get("RECSYS_MOVIELENS_PATH") or None,
        events_dir=os.environ.get("RECSYS_EVENTS_DIR") or None,
        catalog_path=os.environ.get("RECSYS_CATALOG_PATH") or None,
    )


def training_from_env() -> TrainingResource:
    """``TrainingResource`` with Trainer settings from ``RECSYS_ACCELERATOR``, ``RECSYS_DEVICES``,
    ``RECSYS_STRATEGY``, ``RECSYS_PRECISION`` and ``RECSYS_MAX_EPOCHS`` where set."""
    env = os.environ
    return TrainingResource(
        accelerator=env.get("RECSYS_ACCELERATOR", "auto"),
        devices=env.get("RECSYS_DEVICES", "auto"),
        strategy=env.get("RECSYS_STRATEGY", "auto"),
        precision=env.get("RECSYS_PRECISION", "32-true"),
        max_epochs=int(env["RECSYS_MAX_EPOCHS"]) if env.get("RECSYS_MAX_EPOCHS") else None,
    )


def default_resources(paths: HomePaths) -> dict[str, dg.ConfigurableResource]:
    """The local setup: everything under the home folder, the source from the environment (default: bundled
    MovieLens), the packaged MiniLM, CPU/GPU chosen by Lightning."""
    return {
        "warehouse_db": WarehouseResource(path=str(paths.warehouse)),
        "source": source_from_env(),
        "text_encoder": TextEncoderResource(),
        "image_encoder": image_encoder_from_env(paths),
        "audio_encoder": audio_encoder_from_env(),
        "mlflow": MLflowResource(tracking_uri=paths.mlflow_tracking_uri, artifact_location=str(paths.mlflow_artifacts)),
        "training": training_from_env(),
    }
