"""The evaluation layer: protocols (splits and their settings), metrics (Recall@K, NDCG@K, coverage), ``evaluate``
through ``Recommender.recommend``, and the modality ablation. Imports ``models``, ``content``, ``data``,
``settings``; no Dagster, no MLflow."""
