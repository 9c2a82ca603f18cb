import numpy as np
import pandas as pd

from recsys_pipeline.data import warehouse
from recsys_pipeline.resources import WarehouseResource


def test_checks_pass_on_clean_tables_and_fail_on_bad_ones(tmp_path, check):
    interactions_keys_and_duplicates = check("interactions_keys_and_duplicates")
    text_embeddings_finite_unit_norm = check("text_embeddings_finite_unit_norm")
    path = tmp_path / "w.duckdb"
    resource = WarehouseResource(path=str(path))
    rows = pd.DataFrame(
        {
            "user_id": ["u1", "u2"],
            "item_id": ["a", "a"],
            "timestamp": pd.to_datetime(["2020-01-01", "2020-01-01"]),
            "value": 1.0,
        }
    )
    unit = np.eye(2, 4, dtype=np.float32)
    with warehouse.session(path) as con:
        with warehouse.transaction(con, "interactions"):
            warehouse.insert_frame(con, "interactions", rows)
        warehouse.sync_embeddings(con, "text_embeddings", "m", ["a", "b"], ["h1", "h2"], lambda p: unit[p])
    assert interactions_keys_and_duplicates(warehouse_db=resource).passed
    assert text_embeddings_finite_unit_norm(warehouse_db=resource).passed

    with warehouse.session(path) as con:
        with warehouse.transaction(con, "interactions"):
            warehouse.insert_frame(con, "interactions", rows.head(1))  # an exact duplicate event
        warehouse.sync_embeddings(
            con,
            "text_embeddings",
            "m",
            ["a", "b"],
            ["h1", "h2x"],
            lambda p: np.full((len(p), 4), 2.0, dtype=np.float32),
        )  # norm 4, not 1
    dup = interactions_keys_and_duplicates(warehouse_db=resource)
    assert not dup.passed and dup.metadata["duplicate_events"].value == 1
    emb = text_embeddings_finite_unit_norm(warehouse_db=resource)
    assert not emb.passed and abs(emb.metadata["max_norm_error"].value - 3.0) < 1e-6
