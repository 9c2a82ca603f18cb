"""Asset checks, next to what they check: keys and duplicates of interactions, sanity of text embeddings."""

import dagster as dg
import numpy as np

from recsys_pipeline.assets.content import text_embeddings
from recsys_pipeline.assets.ingestion import interactions
from recsys_pipeline.resources import WarehouseResource


@dg.asset_check(asset=interactions, description="No empty keys and no duplicate (user_id, item_id, timestamp).")
def interactions_keys_and_duplicates(warehouse_db: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse_db.session(read_only=True) as con:
        empty_keys, duplicates = con.execute(
            "SELECT count(*) FILTER (WHERE user_id = '' OR item_id = ''), "
            "count(*) - (SELECT count(*) FROM (SELECT DISTINCT user_id, item_id, timestamp FROM interactions)) "
            "FROM interactions"
        ).fetchall()[0]
    return dg.AssetCheckResult(
        passed=bool(empty_keys == 0 and duplicates == 0),
        metadata={"empty_keys": int(empty_keys), "duplicate_events": int(duplicates)},
    )


@dg.asset_check(asset=text_embeddings, description="Every vector finite, of one width, with unit L2 norm.")
def text_embeddings_finite_unit_norm(warehouse_db: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse_db.session(read_only=True) as con:
        vectors = con.execute("SELECT embedding FROM text_embeddings").fetchnumpy()["embedding"]
    matrix = np.stack(list(vectors)).astype(np.float32) if len(vectors) else np.zeros((0, 0), np.float32)
    finite = bool(np.isfinite(matrix).all())
    norms = np.linalg.norm(matrix, axis=1) if matrix.size else np.ones(0)
    worst = float(np.abs(norms - 1.0).max()) if norms.size else 0.0
    return dg.AssetCheckResult(
        passed=finite and worst < 1e-3 and len(vectors) > 0,
        metadata={"rows": len(vectors), "width": int(matrix.shape[1]) if matrix.ndim == 2 else 0,
                  "all_finite": finite, "max_norm_error": worst},
    )


ALL_CHECKS = [interactions_keys_and_duplicates, text_embeddings_finite_unit_norm]
