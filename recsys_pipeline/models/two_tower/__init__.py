"""The two-tower recommender: ``config`` (ModelConfig, TrainerConfig), ``modules`` (plain nn.Modules: fusion, DCN-V2,
towers), ``lightning_module`` (optimisation), ``datamodule`` (index maps, validation split, loaders),
``recommender`` (``TwoTowerRecommender``: the ``Recommender`` contract), ``train`` (entry point, DDP-ready).

Exports are lazy (PEP 562): ``ModelConfig`` is needed by light processes (the code location, the CLI) that must not
pay for importing torch and Lightning.
"""

import importlib

_EXPORTS = {
    "ModelConfig": "config",
    "TrainerConfig": "config",
    "TwoTowerRecommender": "recommender",
    "RecommenderModule": "lightning_module",
    "InteractionDataModule": "datamodule",
    "item_table": "item_tensors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
