"""The models layer: one ``Recommender`` contract (``base``), one folder per model: ``popularity``, ``random``,
``two_tower`` (nn.Modules, LightningModule, DataModule, the trained recommender and its train entry point).

Imports ``content``, ``data`` and ``settings`` only; no Dagster, no MLflow.
"""
