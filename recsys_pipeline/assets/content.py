"""Content assets: text_embeddings → item_features."""


import time

import dagster as dg

from recsys_pipeline import warehouse
from recsys_pipeline.assets.ingestion import item_catalog
from recsys_pipeline.features import build_item_features
from recsys_pipeline.resources import TextEncoderResource, WarehouseResource


@dg.asset(group_name="content", kinds={"duckdb", "pytorch"}, deps=[item_catalog])
def text_embeddings(context: dg.AssetExecutionContext, text_encoder: TextEncoderResource, warehouse_db: WarehouseResource):
    """Mean-pooled, L2-normalised BERT-family embeddings of each item's text; only new or changed items are
    re-encoded (keyed by model id and a SHA-256 of the text)."""
    from recsys_pipeline.encoders import content_hash

    encoder = text_encoder.build()
    with warehouse_db.session() as con:
        catalog = con.execute("SELECT item_id, text FROM item_catalog ORDER BY item_id").df()
        texts = catalog["text"].tolist()
        hashes = [content_hash(t) for t in texts]
        started = time.perf_counter()
        counts = warehouse.sync_embeddings(
            con,
            "text_embeddings",
            encoder.model_id,
            catalog["item_id"].tolist(),
            hashes,
            lambda positions: encoder.encode([texts[i] for i in positions]),
        )
        seconds = time.perf_counter() - started
    context.log.info(f"text_embeddings: {counts}")
    return dg.MaterializeResult(
        metadata={
            **counts,
            "rows": counts["total"],
            "model_id": encoder.model_id,
            "dim": encoder.dim,
            "encode_seconds": round(seconds, 2),
            "items_per_second": round(counts["encoded"] / seconds, 1) if counts["encoded"] else 0.0,
        }
    )


@dg.asset(group_name="content", kinds={"duckdb"}, deps=[item_catalog, text_embeddings])
def item_features(warehouse_db: WarehouseResource):
    """Per item: one vector per modality with a presence flag, plus genres and year (the model's content input)."""
    with warehouse_db.session() as con:
        counts = build_item_features(con)
    return dg.MaterializeResult(metadata={"rows": counts["items"], **counts})
