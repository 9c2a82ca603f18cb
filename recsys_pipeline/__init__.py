"""recsys_pipeline: a multimodal recommender pipeline.

Library modules (no Dagster import): ``settings``, ``sources``, ``cleaning``, ``catalog``, ``warehouse``,
``encoders``, ``features``, ``model``, ``metrics``, ``evaluation``.
Orchestration: ``assets``, ``resources``, ``definitions``.
"""

__version__ = "0.1.0"
