"""Two-tower multimodal recommender: content, modules, Lightning module/datamodule, trained model, training.

No Dagster import here: usable from a notebook or plain pytest.
"""

from .content import ItemContent, genres_multi_hot, item_table
from .datamodule import InteractionDataModule
from .lightning_module import BestStateCallback, RecommenderModule
from .modules import ConcatFusion, CrossNetworkV2, ItemTower, ModalityAttentionFusion, TwoTowerModel, UserTower
from .recommender import (
    ModelConfig,
    PopularityRecommender,
    RandomRecommender,
    Recommender,
    TrainedRecommender,
    TrainerConfig,
    train_recommender,
)

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
