"""Model hyperparameters and Lightning ``Trainer`` settings (GPU / DDP by configuration)."""

from __future__ import annotations

import dataclasses

import dagster as dg
import pydantic

from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
from recsys_pipeline.settings import get_settings

_TYPES = {"int": int, "float": float, "bool": bool, "str": str}

# Every ModelConfig field as an optional override; the defaults stay in ModelConfig (shown in each description).
ModelOverrides = pydantic.create_model(
    "ModelOverrides",
    __base__=dg.Config,
    __doc__="ModelConfig overrides: a field left unset keeps ModelConfig's default.",
    **{
        f.name: (
            (_TYPES[f.type] if isinstance(f.type, str) else f.type) | None,
            pydantic.Field(None, description=f"ModelConfig.{f.name} (default {f.default!r})"),
        )
        for f in dataclasses.fields(ModelConfig)
    },
)


class TrainingResource(dg.ConfigurableResource):
    """``model``: ``ModelConfig`` overrides (unset fields keep its defaults; ``RECSYS_MAX_EPOCHS`` caps epochs).
    Trainer: ``accelerator`` (``auto`` uses a GPU when present), ``devices`` (``auto``, a count ``"2"`` or a list
    ``"0,1"``), ``strategy`` (``ddp`` with ``devices`` > 1 trains data-parallel), ``precision``, ``num_nodes``,
    ``num_threads``; unset: ``RECSYS_ACCELERATOR`` etc., else ``TrainerConfig``'s defaults. ``warm_start``: retrain
    from the champion's weights (``recommender_model``; unset: ``RECSYS_WARM_START``, default off).
    """

    accelerator: str | None = None
    devices: str | None = None
    strategy: str | None = None
    precision: str | None = None
    num_nodes: int | None = None
    num_threads: int | None = None
    warm_start: bool | None = None
    model: ModelOverrides = pydantic.Field(default_factory=ModelOverrides)

    def build_model_config(self, tuned: dict | None = None) -> ModelConfig:
        """``ModelConfig``: its defaults, then ``tuned`` (``model_tuning``'s chosen params), then
        ``RECSYS_MAX_EPOCHS`` (a cap the tests and the demo set), then the overrides set here (a field the user
        set wins over tuning).

        Raises:
            ValueError: an override outside its range.
        """
        overrides = dict(tuned or {})
        max_epochs = get_settings().max_epochs
        if max_epochs is not None:
            overrides["max_epochs"] = max_epochs
        overrides.update(self.model.model_dump(exclude_none=True))
        return ModelConfig(**overrides)

    def fixed_fields(self) -> list[str]:
        """The ``ModelConfig`` fields set here or by ``RECSYS_MAX_EPOCHS``: tuning leaves them as they are."""
        fixed = list(self.model.model_dump(exclude_none=True))
        if get_settings().max_epochs is not None and "max_epochs" not in fixed:
            fixed.append("max_epochs")
        return fixed

    def warm_start_default(self) -> bool:
        """Whether ``recommender_model`` warm starts when its run config does not say (``RECSYS_WARM_START``)."""
        return self.warm_start if self.warm_start is not None else get_settings().warm_start

    def build_trainer_config(self) -> TrainerConfig:
        s = get_settings()
        devices: object = self.devices or s.devices
        if isinstance(devices, str) and devices.isdigit():
            devices = int(devices)
        given = {
            "accelerator": self.accelerator or s.accelerator,
            "devices": devices,
            "strategy": self.strategy or s.strategy,
            "precision": self.precision or s.precision,
            "num_nodes": self.num_nodes or s.num_nodes,
            "num_threads": self.num_threads,
        }
        return TrainerConfig(**{k: v for k, v in given.items() if v is not None})
