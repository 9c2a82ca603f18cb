"""Ingestion assets and their checks, on the daily partitions: raw_events -> interactions, and item_catalog (the
catalog as of each day)."""

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd

from recsys_pipeline.assets.metadata import PARTITION_ROW_COUNT, add_daily_metadata, table_metadata
from recsys_pipeline.assets.partitions import window
from recsys_pipeline.data import warehouse
from recsys_pipeline.data.catalog import build_item_catalog
from recsys_pipeline.data.cleaning import clean_catalog_items, clean_events
from recsys_pipeline.data.schema import INTERACTIONS, ITEM_CATALOG, LANDING_REJECTIONS, RAW_EVENTS
from recsys_pipeline.data.sources import DailyFileSource, MovieLensSource
from recsys_pipeline.instance import DUCKDB_POOL
from recsys_pipeline.resources import SourceResource, WarehouseResource


def _reasons(quarantined) -> dg.MetadataValue:
    counts = quarantined["reason"].value_counts().to_dict() if len(quarantined) else {}
    return dg.MetadataValue.json({str(k): int(v) for k, v in counts.items()})


def _per_day(context: dg.AssetExecutionContext, window: bool = False, **counts: pd.Series) -> dict[str, dict]:
    """Each day of the run with its own counts (``counts``: name -> a day per row, datetime64; the name ``rows``
    becomes ``dagster/partition_row_count``), 0 on a day without rows, and with ``window`` its ``window_*_utc``."""
    by_day = {}
    for name, days in counts.items():
        per_day = pd.to_datetime(days).dt.normalize().value_counts()
        per_day.index = per_day.index.strftime("%Y-%m-%d")
        by_day[name] = per_day
    out = {}
    for key in context.partition_keys:
        start = datetime.fromisoformat(key)
        entries: dict = {}
        if window:
            entries = {"window_start_utc": start.isoformat(), "window_end_utc": (start + timedelta(days=1)).isoformat()}
        for name, per_day in by_day.items():
            entries[PARTITION_ROW_COUNT if name == "rows" else name] = dg.MetadataValue.int(int(per_day.get(key, 0)))
        out[key] = entries
    return out


def ingestion_assets(partitions: dg.DailyPartitionsDefinition) -> list[dg.AssetsDefinition]:
    """``raw_events``, ``interactions`` and ``item_catalog`` on ``partitions`` (a range is one run)."""

    @dg.asset(
        pool=DUCKDB_POOL,
        group_name="ingestion",
        kinds={"duckdb"},
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def raw_events(context: dg.AssetExecutionContext, source: SourceResource, warehouse_db: WarehouseResource):
        """Events as the source gave them (text columns), one UTC day per partition; a re-run replaces the window.
        For a ``daily_files`` source the landing folder's entries that cannot be ingested (impossible or future
        date, empty file, unreadable name, other names) replace ``landing_rejections`` with their reasons and are
        counted in the metadata; they never stop the other days."""
        started = time.perf_counter()
        start, end = window(context)
        src = source.build()
        rejected: dict = {}
        if isinstance(src, DailyFileSource):
            scan = src.scan()
            with warehouse_db.session() as con:
                warehouse.replace_table(
                    con, LANDING_REJECTIONS, scan.rejections_frame(datetime.now(UTC).replace(tzinfo=None))
                )
            for rejection in scan.rejections:
                context.log.warning(
                    f"landing file {rejection.name} not ingested: {rejection.reason}: {rejection.detail}"
                )
            rejected = {
                "landing_rejections": len(scan.rejections),
                "landing_rejection_reasons": dg.MetadataValue.json(scan.reason_counts()),
            }
        first = partitions.start.date()
        if isinstance(src, MovieLensSource) and src.first_date() < first:
            raise dg.Failure(
                f"{src.root} has ratings from {src.first_date()}, before the first partition {first}: "
                f"set RECSYS_PARTITIONS_START={src.first_date()} so that no event is left out"
            )
        events = src.read_events(start, end)
        with warehouse_db.session() as con:
            n = warehouse.replace_window(con, "raw_events", "partition_date", start, end, events)
            table = table_metadata(con, RAW_EVENTS, partition_rows=n)
        add_daily_metadata(context, _per_day(context, window=True, rows=events["partition_date"]))
        return dg.MaterializeResult(
            metadata={
                **table,  # row_count: the whole table; partition_row_count and window: each day's own (_per_day)
                "seconds": round(time.perf_counter() - started, 2),
                "unparseable_lines": int(events["parse_error"].notna().sum()),  # quarantined by interactions
                "window_start_utc": start.isoformat(),
                "window_end_utc": end.isoformat(),
                "days_with_events": int(events["partition_date"].nunique()) if n else 0,
                **rejected,
            }
        )

    @dg.asset(
        pool=DUCKDB_POOL,
        group_name="ingestion",
        kinds={"duckdb"},
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[raw_events, "item_catalog"],
    )
    def interactions(context: dg.AssetExecutionContext, warehouse_db: WarehouseResource):
        """Typed, validated, de-duplicated events; rejected rows go to ``quarantine`` with their reason (an item the
        catalog does not hold, or holds from a later day, included)."""
        started = time.perf_counter()
        start, end = window(context)
        with warehouse_db.session() as con:
            if not warehouse.table_exists(con, "item_catalog"):
                raise dg.Failure("interactions needs item_catalog: materialize item_catalog first")
            raw = con.execute(
                "SELECT * FROM raw_events WHERE partition_date >= ?::TIMESTAMP AND partition_date < ?::TIMESTAMP "
                "ORDER BY partition_date, source, source_row",
                [start, end],
            ).df()
            if not warehouse.has_column(con, "item_catalog", "added_at"):
                raise dg.Failure("item_catalog was written by an older release: materialize item_catalog first")
            items = con.execute("SELECT item_id, added_at FROM item_catalog").fetchall()
            clean, quarantined = clean_events(raw, start, end, known_items=dict(items))
            with warehouse.transaction(con, "interactions"):
                con.execute("DELETE FROM interactions WHERE timestamp >= ? AND timestamp < ?", [start, end])
                con.execute(
                    "DELETE FROM quarantine WHERE stage = 'interactions' AND partition_date >= ?::TIMESTAMP "
                    "AND partition_date < ?::TIMESTAMP",
                    [start, end],
                )
                warehouse.insert_frame(con, "interactions", clean)
                warehouse.insert_frame(con, "quarantine", quarantined)
            table = table_metadata(con, INTERACTIONS, partition_rows=len(clean))
        days = _per_day(context, rows=clean["timestamp"], quarantined=quarantined["partition_date"])
        add_daily_metadata(context, days)
        return dg.MaterializeResult(
            metadata={
                **table,
                "seconds": round(time.perf_counter() - started, 2),
                "raw_rows": len(raw),
                "quarantined": len(quarantined),
                "quarantine_reasons": _reasons(quarantined),
                "users": int(clean["user_id"].nunique()),
                "items": int(clean["item_id"].nunique()),
            }
        )

    @dg.asset(
        pool=DUCKDB_POOL,
        group_name="ingestion",
        kinds={"duckdb"},
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def item_catalog(context: dg.AssetExecutionContext, source: SourceResource, warehouse_db: WarehouseResource):
        """The catalog as of day D: one row per item that entered it by the end of D (``added_at``: the catalog's
        own column, else, for MovieLens, the day of the item's first rating or tag, else the first partition), with
        title, genres, year, user tags as text, the text to encode and image/audio URIs. A run replaces the rows
        of the items added by its last day, from the catalog as the source holds it now; rows of items added later
        are left as they are (their own days write them). Each day's materialization counts the items added on it
        (``dagster/partition_row_count``)."""
        started = time.perf_counter()
        _, end = window(context)
        src = source.build()
        items, tags = src.read_catalog()
        name = Path(src.catalog_path).name if isinstance(src, DailyFileSource) else "movielens catalog"
        kept, quarantined = clean_catalog_items(items, source=name)
        catalog = build_item_catalog(kept, tags, first_day=partitions.start.date(), tags_in_text=source.tags_in_text())
        as_of = catalog[pd.to_datetime(catalog["added_at"]) < end].reset_index(drop=True)
        # catalog and its quarantine rows change together
        with warehouse_db.session() as con:
            with warehouse.transaction(con, "item_catalog"):
                if not warehouse.has_column(con, "item_catalog", "added_at"):
                    warehouse.replace_table(con, ITEM_CATALOG, as_of, own_transaction=False)  # first or older table
                else:
                    con.register("_as_of_items", as_of[["item_id"]])
                    con.execute(
                        "DELETE FROM item_catalog WHERE CAST(added_at AS TIMESTAMP) < ? "
                        "OR item_id IN (SELECT item_id FROM _as_of_items)",
                        [end],
                    )
                    con.unregister("_as_of_items")
                    warehouse.insert_frame(con, "item_catalog", as_of[ITEM_CATALOG.column_names])
                con.execute("DELETE FROM quarantine WHERE stage = 'item_catalog'")
                warehouse.insert_frame(con, "quarantine", quarantined)
            table = table_metadata(con, ITEM_CATALOG, partition_rows=len(as_of))
        add_daily_metadata(context, _per_day(context, rows=pd.to_datetime(as_of["added_at"])))
        return dg.MaterializeResult(
            metadata={
                **table,  # row_count: the whole table; partition_row_count: each day's items added (_per_day)
                "seconds": round(time.perf_counter() - started, 2),
                "as_of_utc": end.isoformat(),  # items added before this instant
                "quarantined": len(quarantined),
                "quarantine_reasons": _reasons(quarantined),
                "with_tags": int((as_of["tags_text"] != "").sum()),
                "preview": dg.MetadataValue.md(
                    as_of[["item_id", "title", "year", "added_at"]].head(10).to_markdown(index=False)
                ),
            }
        )

    return [raw_events, interactions, item_catalog]


def ingestion_checks(partitions: dg.DailyPartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    """Checks of ``interactions``: schema, keys and duplicates, every event inside its partition's UTC day."""

    @dg.asset_check(asset="interactions", description="Columns and types as data.schema declares them.")
    def interactions_schema(warehouse_db: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse_db.session(read_only=True) as con:
            got = [
                tuple(r)
                for r in con.execute(
                    "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                    "WHERE table_schema = 'main' AND table_name = 'interactions' ORDER BY ordinal_position"
                ).fetchall()
            ]
        expected = INTERACTIONS.information_schema()
        return dg.AssetCheckResult(
            passed=got == expected,
            metadata={
                "columns": dg.MetadataValue.json([list(c) for c in got]),
                "expected": dg.MetadataValue.json([list(c) for c in expected]),
            },
        )

    @dg.asset_check(
        asset="interactions", description="No null or empty keys and no duplicate (user_id, item_id, timestamp)."
    )
    def interactions_keys_and_duplicates(warehouse_db: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse_db.session(read_only=True) as con:
            empty_keys, duplicates = con.execute(
                "SELECT count(*) FILTER (WHERE coalesce(trim(user_id), '') = '' OR coalesce(trim(item_id), '') = '' "
                "OR timestamp IS NULL), "
                "count(*) - (SELECT count(*) FROM (SELECT DISTINCT user_id, item_id, timestamp FROM interactions)) "
                "FROM interactions"
            ).fetchall()[0]
        return dg.AssetCheckResult(
            passed=bool(empty_keys == 0 and duplicates == 0),
            metadata={"empty_keys": int(empty_keys), "duplicate_events": int(duplicates)},
        )

    @dg.asset_check(
        asset="interactions",
        description="Every event lies inside its partition's UTC day: a raw_events row of that day partition gave "
        "it, and it falls within the partitions' range.",
    )
    def interactions_inside_partition_window(warehouse_db: WarehouseResource) -> dg.AssetCheckResult:
        first = partitions.start.replace(tzinfo=None)
        last_window = partitions.get_last_partition_window()
        end = last_window.end.replace(tzinfo=None) if last_window else first
        with warehouse_db.session(read_only=True) as con:
            before, after, orphans = con.execute(
                "SELECT count(*) FILTER (WHERE i.timestamp < ?), count(*) FILTER (WHERE i.timestamp >= ?), "
                "count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM raw_events r "
                "  WHERE r.partition_date = CAST(i.timestamp AS DATE) "
                "  AND trim(r.user_id) = i.user_id AND trim(r.item_id) = i.item_id)) "
                "FROM interactions i",
                [first, end],
            ).fetchall()[0]
        return dg.AssetCheckResult(
            passed=bool(before == 0 and after == 0 and orphans == 0),
            metadata={
                "before_first_partition": int(before),
                "after_last_partition": int(after),
                "without_raw_row_in_their_day": int(orphans),
                "partitions_start_utc": first.isoformat(),
                "partitions_end_utc": end.isoformat(),
            },
        )

    return [interactions_schema, interactions_keys_and_duplicates, interactions_inside_partition_window]
