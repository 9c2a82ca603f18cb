"""The schema module is the one declaration of every table: DuckDB creates exactly what it declares."""

import duckdb
import pandas as pd
import pytest

from recsys_pipeline.data import warehouse
from recsys_pipeline.data.schema import INTERACTIONS, RECOMMENDATIONS, TABLES, embedding_table, item_features_table


def declared_vs_created(con, table) -> tuple[list, list]:
    con.execute(f"CREATE TABLE {table.name} ({table.ddl()})")
    got = [
        tuple(r)
        for r in con.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_name = ? "
            "ORDER BY ordinal_position",
            [table.name],
        ).fetchall()
    ]
    return table.information_schema(), got


@pytest.mark.parametrize(
    "table",
    [*TABLES.values(), embedding_table("text_embeddings", 384), item_features_table({"text": 384, "image": None})],
    ids=lambda t: t.name,
)
def test_every_declared_table_is_created_with_its_declared_types(table):
    con = duckdb.connect()
    expected, got = declared_vs_created(con, table)
    assert got == expected


def test_replace_table_enforces_the_declared_columns_and_keeps_the_old_rows_on_failure(tmp_path):
    good = pd.DataFrame(
        {
            "partition_date": [pd.Timestamp("2024-01-01")],
            "user_id": ["u"],
            "rank": [1],
            "item_id": ["i"],
            "score": [0.5],
            "strategy": ["personalized"],
            "model_run_id": ["r"],
            "model_version": ["1"],
            "produced_on": [pd.Timestamp("2024-01-01")],
            "model_partition_date": [None],
            "explanation": [None],
            "extra": ["ignored"],
        }
    )
    with warehouse.session(tmp_path / "w.duckdb") as con:
        assert warehouse.replace_table(con, RECOMMENDATIONS, good) == 1
        assert con.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'recommendations' "
            "AND column_name = 'produced_on'"
        ).fetchall() == [("DATE",)]
        with pytest.raises(KeyError, match="lacks column"):
            warehouse.replace_table(con, RECOMMENDATIONS, good.drop(columns="strategy"))
        with pytest.raises(duckdb.Error):
            warehouse.replace_table(con, RECOMMENDATIONS, good.assign(rank=["not a number"]))
        assert con.execute("SELECT user_id, rank FROM recommendations").fetchall() == [("u", 1)]


def test_ensure_schema_adds_columns_an_older_release_lacked(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE raw_events (partition_date DATE NOT NULL, user_id VARCHAR, item_id VARCHAR, "
        "timestamp_raw VARCHAR, value_raw VARCHAR, source VARCHAR NOT NULL, source_row BIGINT NOT NULL)"
    )
    con.execute("INSERT INTO raw_events VALUES ('2020-01-01', 'u', 'i', '0', '1', 'f.csv', 0)")
    con.close()
    with warehouse.session(path) as con:
        columns = [
            r[0]
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'raw_events' "
                "ORDER BY ordinal_position"
            ).fetchall()
        ]
        assert columns[-2:] == ["parse_error", "raw_line"]
        assert con.execute("SELECT user_id, parse_error FROM raw_events").fetchall() == [("u", None)]
        assert warehouse.read_interactions(con).columns.tolist() == INTERACTIONS.column_names
