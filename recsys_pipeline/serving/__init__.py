"""The serving layer: what is published (``publish``: every user's top-K by the champion, the items / popularity
snapshot), the atomic Parquet snapshots (``snapshot``) and the FastAPI app (``app``, ``recsys serve``). Imports the
layers below it; no Dagster."""
