"""The registry layer: MLflow tracking (``tracking``, ``runs``), the champion gate as pure functions (``gate``), the
model registry (``model_registry``: versions, aliases, loading) and the pyfunc (``pyfunc_model``). Imports
``evaluation``, ``models``, ``content``, ``data``, ``settings``; no Dagster."""
