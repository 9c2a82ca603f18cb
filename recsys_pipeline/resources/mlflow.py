"""The MLflow tracking store, the experiment, the registered model and the champion / challenger policy."""

from __future__ import annotations

import dagster as dg

from recsys_pipeline.settings import get_settings


class MLflowResource(dg.ConfigurableResource):
    """MLflow store (unset: the profile's, ``Settings.mlflow_tracking_uri``: the SQLite store ``<home>/mlflow.db``, or
    on the postgres profile the server of ``RECSYS_POSTGRES_URL``; artifacts under ``<home>/mlartifacts`` either way),
    experiment and registry name, and the gate: ``champion_metric`` (``{protocol}.{model}.{metric}`` of
    ``model_evaluation``, higher = better) and ``champion_min_margin`` decide when a new model version takes the
    ``champion`` alias (``registry.gate.ChampionPolicy``; unset: its defaults).
    """

    tracking_uri: str | None = None
    artifact_location: str | None = None
    experiment_name: str = "recsys_pipeline"
    registered_model_name: str = "recsys_ranker"
    champion_metric: str | None = None
    champion_min_margin: float | None = None

    def resolved_tracking_uri(self) -> str:
        """``tracking_uri``, or the profile's store (``sqlite:///<home>/mlflow.db`` or ``postgresql+psycopg2://...``).

        Raises:
            SettingsError: ``RECSYS_PROFILE=postgres`` without a usable ``RECSYS_POSTGRES_URL``.
        """
        return self.tracking_uri or get_settings().mlflow_tracking_uri()

    def champion_policy(self):
        from recsys_pipeline.registry.gate import ChampionPolicy

        given = {
            k: v
            for k, v in {"metric": self.champion_metric, "min_margin": self.champion_min_margin}.items()
            if v is not None
        }
        return ChampionPolicy(**given)

    def experiment_id(self) -> str:
        """The experiment's id, created (with the artifact location) when missing."""
        from recsys_pipeline.registry import tracking

        tracking.quiet()
        location = self.artifact_location or str(get_settings().paths.mlflow_artifacts)
        return tracking.experiment_id(self.resolved_tracking_uri(), self.experiment_name, location)
