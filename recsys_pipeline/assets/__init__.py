"""The Dagster assets, one module per area with its checks beside it: ``ingestion``, ``content``, ``model``,
``tuning``.

Assets are built by factories (``ingestion_assets(partitions)`` ...) because the daily partitions' first day is
configuration: the code location builds them when it loads (``definitions.build_definitions``), never at import.
"""

from recsys_pipeline.assets.content import content_assets, content_checks, embedding_check
from recsys_pipeline.assets.ingestion import ingestion_assets, ingestion_checks
from recsys_pipeline.assets.model import model_assets, model_checks
from recsys_pipeline.assets.partitions import daily_partitions
from recsys_pipeline.assets.tuning import tuning_assets

__all__ = [
    "daily_partitions",
    "ingestion_assets",
    "ingestion_checks",
    "content_assets",
    "content_checks",
    "embedding_check",
    "model_assets",
    "model_checks",
    "tuning_assets",
]
