"""Dagster resources: one ``ConfigurableResource`` per concern, every field optional. An unset field is resolved
when a run uses it, from ``Settings`` (the environment at that moment) or the library's own default, so importing
the code location reads nothing and the launchpad shows what a user can override."""

from recsys_pipeline.resources.encoders import AudioEncoderResource, ImageEncoderResource, TextEncoderResource
from recsys_pipeline.resources.home import HomeResource, WarehouseResource
from recsys_pipeline.resources.mlflow import MLflowResource
from recsys_pipeline.resources.source import SourceResource
from recsys_pipeline.resources.training import ModelOverrides, TrainingResource
from recsys_pipeline.settings import HomePaths, get_settings

__all__ = [
    "HomeResource",
    "WarehouseResource",
    "SourceResource",
    "TextEncoderResource",
    "ImageEncoderResource",
    "AudioEncoderResource",
    "MLflowResource",
    "TrainingResource",
    "ModelOverrides",
    "default_resources",
    "resources_for_home",
]


def default_resources() -> dict:
    """Every resource with nothing set: each resolves from ``Settings`` when a run starts."""
    return {
        "home": HomeResource(),
        "warehouse_db": WarehouseResource(),
        "source": SourceResource(),
        "text_encoder": TextEncoderResource(),
        "image_encoder": ImageEncoderResource(),
        "audio_encoder": AudioEncoderResource(),
        "mlflow": MLflowResource(),
        "training": TrainingResource(),
    }


def resources_for_home(home: str, **overrides) -> dict:
    """:func:`default_resources` pinned to the home folder ``home`` (warehouse, MLflow store and published
    snapshots under it; on the postgres profile the MLflow store is the server's), with ``overrides`` (resource key
    -> resource) on top. For tests and notebooks."""
    paths = HomePaths.at(home)
    tracking_uri = get_settings().mlflow_tracking_uri(paths)
    resources = {
        **default_resources(),
        "home": HomeResource(root=str(paths.root)),
        "warehouse_db": WarehouseResource(path=str(paths.warehouse)),
        "mlflow": MLflowResource(tracking_uri=tracking_uri, artifact_location=str(paths.mlflow_artifacts)),
        "image_encoder": ImageEncoderResource(cache_dir=str(paths.model_cache)),
    }
    resources.update(overrides)
    return resources
