"""Two-tower multimodal recommender: content, modules, Lightning module/datamodule, trained model, training.

No Dagster import here: usable from a notebook or plain pytest.
"""

import importlib

# Lazy exports (PEP 562): `recsys_pipeline.model.content` is needed by light processes (asset definitions, Dagster
# code servers, the CLI) that must not pay for importing Lightning.
_EXPORTS = {
    "ItemContent": "content",
    "genres_multi_hot": "content",
    "item_table": "content",
    "InteractionDataModule": "datamodule",
    "RecommenderModule": "lightning_module",
    "BestStateCallback": "lightning_module",
    "ModalityAttentionFusion": "modules",
    "ConcatFusion": "modules",
    "CrossNetworkV2": "modules",
    "ItemTower": "modules",
    "UserTower": "modules",
    "TwoTowerModel": "modules",
    "ModelConfig": "recommender",
    "TrainerConfig": "recommender",
    "Recommender": "recommender",
    "PopularityRecommender": "recommender",
    "RandomRecommender": "recommender",
    "TrainedRecommender": "recommender",
    "train_recommender": "recommender",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ItemContent",
    "genres_multi_hot",
    "item_table",
    "InteractionDataModule",
    "RecommenderModule",
    "BestStateCallback",
    "ModalityAttentionFusion",
    "ConcatFusion",
    "CrossNetworkV2",
    "ItemTower",
    "UserTower",
    "TwoTowerModel",
    "ModelConfig",
    "TrainerConfig",
    "Recommender",
    "PopularityRecommender",
    "RandomRecommender",
    "TrainedRecommender",
    "train_recommender",
]
