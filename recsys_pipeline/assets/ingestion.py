"""Ingestion assets: raw_events → interactions (daily partitions), and item_catalog."""


import time
from pathlib import Path

import dagster as dg

from recsys_pipeline import warehouse
from recsys_pipeline.assets.partitions import daily_partitions, window
from recsys_pipeline.catalog import build_item_catalog
from recsys_pipeline.cleaning import clean_catalog_items, clean_events
from recsys_pipeline.resources import SourceResource, WarehouseResource
from recsys_pipeline.sources import DailyFileSource


@dg.asset(
    pool="duckdb",
    group_name="ingestion",
    kinds={"duckdb"},
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def raw_events(context: dg.AssetExecutionContext, source: SourceResource, warehouse_db: WarehouseResource):
    """Events as the source gave them (text columns), one UTC day per partition; a re-run replaces the window."""
    started = time.perf_counter()
    start, end = window(context)
    events = source.build().read_events(start, end)
    with warehouse_db.session() as con:
        n = warehouse.replace_window(con, "raw_events", "partition_date", start, end, events)
    days_with_events = int(events["partition_date"].nunique()) if n else 0
    return dg.MaterializeResult(
        metadata={
            "seconds": round(time.perf_counter() - started, 2),
            "rows": n,
            "unparseable_lines": int(events["parse_error"].notna().sum()),  # quarantined by interactions
            "window_start_utc": start.isoformat(),
            "window_end_utc": end.isoformat(),
            "days_with_events": days_with_events,
        }
    )


@dg.asset(
    pool="duckdb",
    group_name="ingestion",
    kinds={"duckdb"},
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[raw_events, "item_catalog"],
)
def interactions(context: dg.AssetExecutionContext, warehouse_db: WarehouseResource):
    """Typed, validated, de-duplicated events; rejected rows go to ``quarantine`` with their reason."""
    started = time.perf_counter()
    start, end = window(context)
    with warehouse_db.session() as con:
        raw = con.execute(
            "SELECT * FROM raw_events WHERE partition_date >= ?::TIMESTAMP AND partition_date < ?::TIMESTAMP "
            "ORDER BY partition_date, source, source_row",
            [start, end],
        ).df()
        items = con.execute("SELECT item_id FROM item_catalog").df()["item_id"] if warehouse.table_exists(
            con, "item_catalog"
        ) else None
        if items is None:
            raise dg.Failure("interactions needs item_catalog: materialize item_catalog first")
        clean, quarantined = clean_events(raw, start, end, known_items=set(items))
        with warehouse.transaction(con):
            con.execute("DELETE FROM interactions WHERE timestamp >= ? AND timestamp < ?", [start, end])
            con.execute(
                "DELETE FROM quarantine WHERE stage = 'interactions' AND partition_date >= ?::TIMESTAMP "
                "AND partition_date < ?::TIMESTAMP",
                [start, end],
            )
            warehouse.insert_frame(con, "interactions", clean)
            warehouse.insert_frame(con, "quarantine", quarantined)
    reasons = quarantined["reason"].value_counts().to_dict() if len(quarantined) else {}
    return dg.MaterializeResult(
        metadata={
            "seconds": round(time.perf_counter() - started, 2),
            "rows": len(clean),
            "raw_rows": len(raw),
            "quarantined": len(quarantined),
            "quarantine_reasons": dg.MetadataValue.json({str(k): int(v) for k, v in reasons.items()}),
            "users": int(clean["user_id"].nunique()),
            "items": int(clean["item_id"].nunique()),
        }
    )


@dg.asset(pool="duckdb", group_name="ingestion", kinds={"duckdb"})
def item_catalog(source: SourceResource, warehouse_db: WarehouseResource):
    """One row per item: title, genres, year, user tags as text, the text to encode, image/audio URIs."""
    started = time.perf_counter()
    src = source.build()
    items, tags = src.read_catalog()
    name = Path(src.catalog_path).name if isinstance(src, DailyFileSource) else "movielens catalog"
    kept, quarantined = clean_catalog_items(items, source=name)
    catalog = build_item_catalog(kept, tags)
    with warehouse_db.session() as con:
        with warehouse.transaction(con):  # catalog and its quarantine rows change together
            warehouse.replace_table(con, "item_catalog", catalog, own_transaction=False)
            con.execute("DELETE FROM quarantine WHERE stage = 'item_catalog'")
            warehouse.insert_frame(con, "quarantine", quarantined)
    reasons = quarantined["reason"].value_counts().to_dict()
    return dg.MaterializeResult(
        metadata={
            "seconds": round(time.perf_counter() - started, 2),
            "rows": len(catalog),
            "quarantined": len(quarantined),
            "quarantine_reasons": dg.MetadataValue.json({str(k): int(v) for k, v in reasons.items()}),
            "with_tags": int((catalog["tags_text"] != "").sum()),
            "with_year": int(catalog["year"].notna().sum()),
            "preview": dg.MetadataValue.md(catalog[["item_id", "title", "year"]].head(10).to_markdown(index=False)),
        }
    )
