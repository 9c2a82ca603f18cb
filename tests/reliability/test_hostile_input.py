"""Hostile input: every bad line or row is loaded-around and quarantined with its reason, or is a clear error
that leaves the previous tables as they were. Nothing is dropped silently and no value reaches SQL as text."""

import json
from datetime import date, datetime

import dagster as dg
import pytest

from recsys_pipeline.assets import daily_partitions, ingestion_assets
from recsys_pipeline.data import warehouse
from recsys_pipeline.data.catalog import MAX_TEXT_CHARS
from recsys_pipeline.data.sources import DailyFileSource
from recsys_pipeline.resources import SourceResource, WarehouseResource
from recsys_pipeline.settings import get_settings
from tests.reliability.support import growing_settings

raw_events, interactions, item_catalog = ingestion_assets(daily_partitions(growing_settings()))

pytestmark = pytest.mark.reliability

INJECTION = "1'); DROP TABLE interactions;--"
MEGABYTE = "x" * 1_000_000


def setup(tmp_path, events: dict[str, bytes], catalog: bytes = b"item_id,title\na,Alpha\nb,Beta\n") -> dict:
    folder = tmp_path / "events"
    folder.mkdir(exist_ok=True)
    for name, data in events.items():
        (folder / name).write_bytes(data)
    (tmp_path / "items.csv").write_bytes(catalog)
    resources = {
        "warehouse_db": WarehouseResource(path=str(tmp_path / "w.duckdb")),
        "source": SourceResource(kind="daily_files", events_dir=str(folder), catalog_path=str(tmp_path / "items.csv")),
    }
    return resources


def ingest(resources, key: str, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [raw_events, interactions, item_catalog],
        resources=resources,
        partition_key=key,
        selection=[raw_events, interactions],
        raise_on_error=raise_on_error,
    )


def query(tmp_path, sql: str, params=()):
    with warehouse.session(tmp_path / "w.duckdb", read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


HOSTILE_CSV = b"\n".join(
    [
        b"user_id,item_id,timestamp,value",
        b"u1,a,2024-01-05T10:00:00Z,4",  # 0 good
        b"u2,a,2024-01-05T10:00:00Z,4,surplus",  # 1 wrong field count
        b"u3,a",  # 2 wrong field count
        b'u4,"a,2024-01-05T10:00:00Z,4',  # 3 unbalanced quote (must not swallow line 4)
        b"u5,b,2024-01-05T11:00:00Z,5",  # 4 good
        b"caf\xe9,a,2024-01-05T10:00:00Z,4",  # 5 latin-1 byte
        b"u6,a,NaN,4",  # 6 NaN timestamp
        b"u7,a,-86400,4",  # 7 negative epoch: 1969-12-31
        b"u8,a,9999-12-31T00:00:00Z,4",  # 8 far future ISO
        b"u9,a,99999999999999,4",  # 9 far future epoch
        b"u1,a,2024-01-05T10:00:00Z,4",  # 10 duplicate of 0
        b"u1,zzz,2024-01-05T10:00:00Z,4",  # 11 item not in the catalog
        b'"' + INJECTION.encode() + b'",b,2024-01-05T12:00:00Z,3',  # 12 good: odd id kept verbatim
        b'"say ""hi""",b,2024-01-05T12:00:00Z,3',  # 13 good: id with quotes
        b"u10,b,2024-01-05T12:00:00Z,abc",  # 14 value not a number
        b"u11,b,2024-01-05T12:00:00Z," + MEGABYTE.encode(),  # 15 1 MB field
        b"",  # 16 blank: skipped, still counted
        b"u12," + INJECTION.encode() + b",2024-01-05T12:00:00Z,1",  # 17 injection as item id: unknown item
    ]
)


def test_bad_lines_are_quarantined_and_good_lines_load(tmp_path):
    resources = setup(tmp_path, {"2024-01-05.csv": HOSTILE_CSV})
    assert dg.materialize(
        [item_catalog], resources=resources, partition_key=item_catalog.partitions_def.get_last_partition_key()
    ).success
    result = ingest(resources, "2024-01-05")
    meta = result.asset_materializations_for_node("interactions")[0].metadata
    raw_meta = result.asset_materializations_for_node("raw_events")[0].metadata

    good = query(tmp_path, "SELECT user_id, item_id, value FROM interactions ORDER BY ALL")
    assert good == [(INJECTION, "b", 3.0), ('say "hi"', "b", 3.0), ("u1", "a", 4.0), ("u5", "b", 5.0)]
    reasons = dict(query(tmp_path, "SELECT source_row, reason FROM quarantine WHERE stage = 'interactions'"))
    assert reasons == {
        1: "malformed CSV line: 5 fields, header has 4",
        2: "malformed CSV line: 2 fields, header has 4",
        3: "malformed CSV line: unexpected end of data",
        5: "not UTF-8 (byte 3)",
        6: "unparseable timestamp",
        7: "timestamp outside partition",
        8: "timestamp outside partition",
        9: "unparseable timestamp",
        10: "duplicate event",
        11: "unknown item",
        14: "invalid value",
        15: "malformed CSV line: field larger than field limit (131072)",
        17: "unknown item",
    }
    # every non-blank line is accounted for, in raw_events and in the metadata
    assert raw_meta["dagster/partition_row_count"].value == 17 and raw_meta["unparseable_lines"].value == 5
    assert meta["dagster/partition_row_count"].value == 4 and meta["dagster/row_count"].value == len(good)
    assert meta["quarantined"].value == 13 and meta["raw_rows"].value == 17
    assert sum(meta["quarantine_reasons"].value.values()) == 13
    lines = dict(query(tmp_path, "SELECT source_row, raw_line FROM quarantine WHERE raw_line IS NOT NULL"))
    assert lines[5] == "caf\\xe9,a,2024-01-05T10:00:00Z,4"
    assert lines[3] == 'u4,"a,2024-01-05T10:00:00Z,4'
    assert len(lines[15]) == 1001 and lines[15].endswith("…")  # the 1 MB line is kept cut, for diagnosis
    tables = {r[0] for r in query(tmp_path, "SELECT table_name FROM information_schema.tables")}
    assert {"interactions", "raw_events", "quarantine", "item_catalog"} <= tables


def test_jsonl_bad_lines_are_quarantined(tmp_path):
    lines = [
        json.dumps({"user_id": "u1", "item_id": "a", "timestamp": "2024-01-05T10:00:00Z"}).encode(),
        b'{"user_id": "u2", "item_id": "a", "timestamp": ',  # truncated JSON
        b'["u3", "a", "2024-01-05T10:00:00Z"]',  # not an object
        b'{"user_id": "caf\xe9", "item_id": "a", "timestamp": "2024-01-05T10:00:00Z"}',
        json.dumps({"user_id": 7, "item_id": "b", "timestamp": 1704450000, "value": None}).encode(),  # numbers
        json.dumps({"user_id": "u4", "item_id": "a"}).encode(),  # no timestamp key
        b'{"user_id": "u6", "item_id": "a", "timestamp": "2024-01-05T11:00:00Z", "value": NaN}',  # not JSON
    ]
    resources = setup(tmp_path, {"2024-01-05.jsonl": b"\n".join(lines)})
    assert dg.materialize(
        [item_catalog], resources=resources, partition_key=item_catalog.partitions_def.get_last_partition_key()
    ).success
    ingest(resources, "2024-01-05")
    assert query(tmp_path, "SELECT user_id, item_id, value FROM interactions ORDER BY ALL") == [
        ("7", "b", 1.0),
        ("u1", "a", 1.0),
    ]
    reasons = dict(query(tmp_path, "SELECT source_row, reason FROM quarantine"))
    assert reasons[1].startswith("malformed JSON line: Expecting value")
    assert reasons[2] == "malformed JSON line: a JSON list, not an object"
    assert reasons[3] == "not UTF-8 (byte 16)"
    assert reasons[5] == "missing timestamp"
    assert reasons[6] == "malformed JSON line: NaN is not a JSON value"  # not a silent 'no value' (1.0)
    assert len(reasons) == 5


def test_undecodable_file_is_a_clear_error_and_keeps_the_previous_state(tmp_path):
    good = b"user_id,item_id,timestamp\nu1,a,2024-01-05T10:00:00Z\n"
    resources = setup(tmp_path, {"2024-01-05.csv": good})
    assert dg.materialize(
        [item_catalog], resources=resources, partition_key=item_catalog.partitions_def.get_last_partition_key()
    ).success
    assert ingest(resources, "2024-01-05").success
    before = query(tmp_path, "SELECT * FROM interactions ORDER BY ALL"), query(tmp_path, "SELECT * FROM raw_events")
    for bad in (
        b"us\xe9r_id,item_id,timestamp\nu1,a,2024-01-05T10:00:00Z\n",  # header not UTF-8
        b"\x00\x01\x02PK\x03\x04 binary",  # not text at all
        b"user,item_id,timestamp\nu1,a,2024-01-05T10:00:00Z\n",
    ):  # required column missing
        (tmp_path / "events" / "2024-01-05.csv").write_bytes(bad)
        result = ingest(resources, "2024-01-05", raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.to_string()
        assert "recsys_pipeline.data.sources.SourceError: " in failure and "2024-01-05.csv: " in failure
        after = query(tmp_path, "SELECT * FROM interactions ORDER BY ALL"), query(tmp_path, "SELECT * FROM raw_events")
        assert after == before


def test_catalog_bad_rows_are_quarantined_with_a_count(tmp_path):
    catalog = (
        b"item_id,title,description\n"
        b"a,Alpha,first\n"
        b",No id,x\n"
        b"a,Alpha again,dup\n"
        + b"i" * 300
        + b",Long id,x\n"
        + b"b,Beta,"
        + MEGABYTE.encode()
        + b"\n"
        + b'"'
        + INJECTION.encode()
        + b'",Odd,x\n'
    )
    resources = setup(tmp_path, {"2024-01-05.csv": b"user_id,item_id,timestamp\n"}, catalog=catalog)
    for _ in range(2):  # a re-run replaces the catalog's quarantine rows
        result = dg.materialize(
            [item_catalog], resources=resources, partition_key=item_catalog.partitions_def.get_last_partition_key()
        )
        meta = result.asset_materializations_for_node("item_catalog")[0].metadata
        assert meta["dagster/row_count"].value == 3 and meta["quarantined"].value == 3
        assert meta["quarantine_reasons"].value == {"missing item_id": 1, "duplicate item_id": 1, "id too long": 1}
    rows = dict(query(tmp_path, "SELECT item_id, length(text) FROM item_catalog"))
    assert set(rows) == {"a", "b", INJECTION} and rows["b"] == MAX_TEXT_CHARS
    assert query(tmp_path, "SELECT source, source_row, reason FROM quarantine ORDER BY source_row") == [
        ("items.csv", 1, "missing item_id"),
        ("items.csv", 2, "duplicate item_id"),
        ("items.csv", 3, "id too long"),
    ]


def test_values_that_are_not_dates_are_clear_errors(tmp_path, monkeypatch):
    from recsys_pipeline.assets.model import _day_end
    from recsys_pipeline.cli import _day
    from recsys_pipeline.settings import SettingsError

    resources = setup(tmp_path, {"2024-01-05.csv": b"user_id,item_id,timestamp\n"})
    for key in ("2024-13-01", "yesterday", "2024-01-05'; DROP TABLE raw_events;--"):
        with pytest.raises(dg.DagsterError, match="partition"):
            ingest(resources, key)
    monkeypatch.setenv("RECSYS_PARTITIONS_START", "1st of May")
    with pytest.raises(SettingsError, match="RECSYS_PARTITIONS_START='1st of May': Input should be a valid date"):
        get_settings()
    with pytest.raises(dg.Failure, match="temporal_cutoff='2024-02-30' is not a YYYY-MM-DD date"):
        _day_end("2024-02-30", "temporal_cutoff")
    assert _day_end("2024-02-28", "temporal_cutoff") == datetime(2024, 2, 29)
    with pytest.raises(ValueError, match="--start 'soon' is not a YYYY-MM-DD date"):
        _day("soon", "--start")
    (tmp_path / "events" / "2024-02-30.csv").write_text("user_id,item_id,timestamp\n")
    source = DailyFileSource(tmp_path / "events", tmp_path / "items.csv")
    assert source.first_date() == date(2024, 1, 5)  # an impossible date is a rejection, never an error
    assert [(r.name, r.reason) for r in source.scan().rejections] == [("2024-02-30.csv", "impossible_date")]


def test_media_uris_outside_the_roots_are_refused_and_never_read(tmp_path, monkeypatch):
    from pathlib import Path

    from recsys_pipeline.content.media import FAILURES_TABLE, MediaLocator, sync_media_embeddings

    root = tmp_path / "media"
    root.mkdir()
    secret = tmp_path / "outside" / "secret.jpg"
    secret.parent.mkdir()
    secret.write_bytes(b"\xff\xd8 not for the pipeline")
    (root / "link.jpg").symlink_to(secret)
    (root / "sub").mkdir()
    hostile = {
        "dotdot": "../../etc/passwd",
        "dotdot_in_root": "sub/../../outside/secret.jpg",
        "absolute": str(secret),
        "file_uri": secret.as_uri(),
        "symlink": "link.jpg",
    }
    locator = MediaLocator([root])
    for item, uri in hostile.items():
        used, failure = locator.locate(item, uri)
        assert used == uri and failure.reason == "outside_roots", item
        assert failure.detail == "path resolves outside every configured root"

    opened: list[Path] = []
    real_read_bytes, real_open = Path.read_bytes, Path.open
    monkeypatch.setattr(Path, "read_bytes", lambda self: opened.append(self.resolve()) or real_read_bytes(self))
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: opened.append(self.resolve()) or real_open(self, *a, **k))

    def no_encoder():
        raise AssertionError("no file inside the roots: the encoder must not be loaded")

    with warehouse.session(tmp_path / "w.duckdb") as con:
        report = sync_media_embeddings(
            con, "image", "image_embeddings", no_encoder, list(hostile), list(hostile.values()), locator
        )
        rows = con.execute(f"SELECT item_id, reason FROM {FAILURES_TABLE} ORDER BY item_id").fetchall()
    assert rows == sorted((item, "outside_roots") for item in hostile)
    assert report.metadata()["missing_outside_roots"] == len(hostile) and report.metadata()["rows"] == 0
    assert not [p for p in opened if not p.is_relative_to(root.resolve()) and p.suffix != ".duckdb"]


def test_ids_that_are_json_objects_or_arrays_are_quarantined(tmp_path):
    import pandas as pd

    lines = [
        json.dumps({"user_id": {"nested": 1}, "item_id": "a", "timestamp": "2024-01-05T10:00:00Z"}),
        json.dumps({"user_id": "u1", "item_id": ["a", "b"], "timestamp": "2024-01-05T10:00:00Z"}),
        json.dumps({"user_id": "u2", "item_id": "a", "timestamp": "2024-01-05T11:00:00Z"}),
    ]
    resources = setup(
        tmp_path,
        {"2024-01-05.jsonl": "\n".join(lines).encode(), "2024-01-06.csv": b""},  # and a 0-byte day
    )
    pd.DataFrame(
        {"user_id": [["u3"], ["u4", "u5"]], "item_id": ["a", "b"], "timestamp": ["2024-01-07T10:00:00Z"] * 2}
    ).to_parquet(tmp_path / "events" / "2024-01-07.parquet")
    assert dg.materialize(
        [item_catalog], resources=resources, partition_key=item_catalog.partitions_def.get_last_partition_key()
    ).success
    ingest(resources, "2024-01-05")
    assert query(tmp_path, "SELECT user_id, item_id FROM interactions") == [("u2", "a")]
    assert query(tmp_path, "SELECT source_row, reason FROM quarantine ORDER BY source_row") == [
        (0, "id not a scalar: user_id is an object"),
        (1, "id not a scalar: item_id is an array"),
    ]
    ingest(resources, "2024-01-07")
    assert query(tmp_path, "SELECT count(*) FROM interactions WHERE timestamp >= '2024-01-07'") == [(0,)]
    assert (
        query(tmp_path, "SELECT reason FROM quarantine WHERE source = '2024-01-07.parquet'")
        == [("id not a scalar: user_id is an array",)] * 2
    )
    empty = ingest(resources, "2024-01-06")  # the empty file: a rejection with its reason, not silently 0 rows
    assert empty.asset_materializations_for_node("raw_events")[0].metadata["landing_rejections"].value == 1
    assert query(tmp_path, "SELECT file_name, reason, size_bytes FROM landing_rejections") == [
        ("2024-01-06.csv", "empty_file", 0)
    ]


def test_error_bodies_echo_at_most_200_characters_of_an_id(tmp_path):
    import pandas as pd
    from fastapi.testclient import TestClient

    from recsys_pipeline.serving.app import create_app
    from recsys_pipeline.serving.snapshot import ITEMS, publish_snapshot
    from recsys_pipeline.settings import HomePaths

    paths = HomePaths.at(tmp_path / "home")
    recs = pd.DataFrame(
        {"user_id": ["1"], "rank": [1], "item_id": ["a"], "score": [1.0], "strategy": ["personalized"]}
    ).assign(model_run_id="r", model_version="1", produced_on=date(2024, 1, 1))
    items = pd.DataFrame({"item_id": ["a"], "title": ["Alpha"], "users": [1], "rank": [1]})
    publish_snapshot(paths, items, ITEMS)
    publish_snapshot(paths, recs)
    long_id = "x" * 20_000
    response = TestClient(create_app(paths)).get(f"/recommendations/{long_id}")
    assert response.status_code == 404
    assert response.json()["user_id"] == "x" * 200 + "…"
    assert len(response.content) < 1_000

    guarded = TestClient(create_app(paths, api_key="s3cret"))  # RECSYS_API_KEY
    assert guarded.get("/recommendations/1").status_code == 401
    assert guarded.get("/health", headers={"X-API-Key": "wrong"}).json()["error"] == "unauthorized"
    answer = guarded.get("/recommendations/1", headers={"X-API-Key": "s3cret"})
    assert answer.status_code == 200 and answer.json()["items"][0]["item_id"] == "a"
