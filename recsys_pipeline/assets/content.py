"""Content assets and their checks: text / image / audio embeddings -> item_features, on the daily partitions.

Day D of a content asset is the catalog as of D: the items added by the end of D (``item_catalog.added_at``).
Materializing it encodes those of them that are new or changed (keyed by model id and content hash: incremental)
and leaves the items added later as they are; a range run is the catalog as of its last day. Each day's
materialization counts the items added on it that have a vector (``dagster/partition_row_count``).
"""

import time
from datetime import datetime

import dagster as dg
import numpy as np
import pandas as pd

from recsys_pipeline.assets.metadata import (
    PARTITION_ROW_COUNT,
    add_daily_metadata,
    declared_width,
    key_value_table,
    table_metadata,
)
from recsys_pipeline.assets.partitions import window
from recsys_pipeline.data import warehouse
from recsys_pipeline.data.schema import embedding_table, item_features_table
from recsys_pipeline.instance import DUCKDB_POOL
from recsys_pipeline.resources import (
    AudioEncoderResource,
    ImageEncoderResource,
    TextEncoderResource,
    WarehouseResource,
)

UNIT_NORM_TOLERANCE = 1e-3  # float32 vectors normalised in float32: |norm - 1| is ~1e-7; 1e-3 flags unnormalised


def _encode_with_progress(encoder, texts: list[str]):
    """``encoder.encode(texts)`` with a progress bar on a terminal (none when stderr is a file or pipe)."""
    from tqdm import tqdm

    with tqdm(total=len(texts), desc="text_embeddings", unit="item", disable=None, leave=False) as bar:
        return encoder.encode(texts, progress=lambda done, total: bar.update(done - bar.n))


def _catalog_as_of(con, end: datetime, columns: str) -> tuple[pd.DataFrame, list[str]]:
    """``(items added before end, every catalog item id)``: ``columns`` of the catalog rows with ``added_at <
    end`` (ordered by item_id), and the ids of the whole table (the rows a sync keeps).

    Raises:
        dagster.Failure: no catalog, or one written by an older release (no ``added_at``).
    """
    if not warehouse.has_column(con, "item_catalog", "added_at"):
        raise dg.Failure("no item_catalog with added_at (or one of an older release): materialize item_catalog first")
    every = con.execute("SELECT item_id FROM item_catalog").df()
    due = con.execute(  # columns: literals of this module
        f"SELECT {columns} FROM item_catalog WHERE CAST(added_at AS TIMESTAMP) < ? ORDER BY item_id", [end]
    ).df()
    return due, every["item_id"].astype(str).tolist()


def _per_day_with_vectors(context, con, table: str | None) -> None:
    """Each day of the run: its items (added that day) that have a row in ``table`` (``None``: every item), as
    that day's ``dagster/partition_row_count``."""
    counts: dict[str, int] = {}
    if table is None or warehouse.table_exists(con, table):
        where = "" if table is None else f"WHERE c.item_id IN (SELECT item_id FROM {table})"  # a code constant
        counts = dict(
            con.execute(
                f"SELECT strftime(c.added_at, '%Y-%m-%d'), count(*) FROM item_catalog c {where} GROUP BY 1"
            ).fetchall()
        )
    add_daily_metadata(
        context, {k: {PARTITION_ROW_COUNT: dg.MetadataValue.int(int(counts.get(k, 0)))} for k in context.partition_keys}
    )


def _media_embeddings(context, modality: str, resource, warehouse_db: WarehouseResource) -> dg.MaterializeResult:
    """Shared body of image_embeddings / audio_embeddings: sync the catalog as of the run's last day, then report
    the table, the counts and (in one table) the catalog size, where media is looked for and why items have
    none."""
    from recsys_pipeline.content.media import FAILURES_TABLE, sync_media_embeddings

    started = time.perf_counter()
    locator = resource.locator()
    built = []
    name = f"{modality}_embeddings"

    def encoder():  # built only when some item has a file
        built.append(resource.build())
        return built[-1]

    _, end = window(context)
    with warehouse_db.session() as con:
        stored = warehouse.row_count(con, name) if warehouse.table_exists(con, name) else 0
        if not locator.roots and stored:
            # an unset setting is not a deleted file: a command run without the demo's RECSYS_IMAGE_ROOT would
            # otherwise empty the table (and every day's item features) without a word
            setting = f"RECSYS_{modality.upper()}_ROOT"
            context.log.warning(
                f"{name}: no {modality} folder is configured in this run ({setting} unset, no roots in the resource): "
                f"the {stored:,} stored vectors are kept as they are, not synced. Set {setting} to the folder(s) "
                "they came from to sync them again."
            )
            table = table_metadata(con, embedding_table(name, declared_width(con, name)))
            _per_day_with_vectors(context, con, name)
            return dg.MaterializeResult(
                metadata={
                    **table,
                    "seconds": round(time.perf_counter() - started, 2),
                    "kept without a source": stored,
                    "details": key_value_table(
                        {"as of (UTC, exclusive)": end.isoformat(), "roots": f"(none: {setting} unset)"}
                    ),
                }
            )
        catalog, every = _catalog_as_of(con, end, f"item_id, {modality}_uri AS uri")
        report = sync_media_embeddings(
            con,
            modality,
            name,
            encoder,
            catalog["item_id"].tolist(),
            catalog["uri"].tolist(),
            locator,
            keep=every,
        )
        sample = con.execute(
            f"SELECT item_id, uri, reason, detail FROM {FAILURES_TABLE} WHERE modality = ? AND reason <> 'missing' "
            "AND reason <> 'no_source' ORDER BY item_id LIMIT 20",
            [modality],
        ).df()
        # the width the table holds, else the encoder's (a table is created only once a vector is encoded)
        width = declared_width(con, name) or (built[0].dim if built else None)
        table = table_metadata(con, embedding_table(name, width))
        _per_day_with_vectors(context, con, name)
    context.log.info(f"{name}: {report.metadata()}")
    details = {
        "as of (UTC, exclusive)": end.isoformat(),
        "catalog items": report.total,
        "removed": report.removed,
        "encode seconds": report.encode_seconds,
        "roots": ", ".join(str(r) for r in locator.roots) or "(none)",
        "pattern": locator.pattern or "(catalog uri only)",
        **{f"missing: {reason}": n for reason, n in sorted(report.missing_by_reason.items())},
    }
    return dg.MaterializeResult(
        metadata={
            **table,
            "seconds": round(time.perf_counter() - started, 2),
            "decoded": report.decoded,
            "encoded": report.encoded,
            "reused": report.reused,
            "missing": report.missing,
            "items_per_second": round(report.encoded / report.encode_seconds, 1) if report.encoded else 0.0,
            "details": key_value_table({"model id": report.model_id or "(no file: no encoder loaded)", **details}),
            "failures_sample": dg.MetadataValue.md(sample.to_markdown(index=False) if len(sample) else "(none)"),
        }
    )


def content_assets(partitions: dg.DailyPartitionsDefinition) -> list[dg.AssetsDefinition]:
    """``text_embeddings``, ``image_embeddings``, ``audio_embeddings`` and ``item_features`` on the daily
    ``partitions`` (a range is one run: the catalog as of its last day)."""
    daily = dict(
        pool=DUCKDB_POOL,
        group_name="content",
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
    )

    @dg.asset(**daily, kinds={"duckdb", "pytorch"}, deps=["item_catalog"])
    def text_embeddings(
        context: dg.AssetExecutionContext, text_encoder: TextEncoderResource, warehouse_db: WarehouseResource
    ):
        """Mean-pooled, L2-normalised BERT-family embeddings of the text of each item added by day D; only new or
        changed items are encoded (keyed by model id and a SHA-256 of the text)."""
        from recsys_pipeline.content.text import content_hash

        asset_started = time.perf_counter()
        _, end = window(context)
        encoder = text_encoder.build()
        with warehouse_db.session() as con:
            catalog, every = _catalog_as_of(con, end, "item_id, text")
            texts = catalog["text"].tolist()
            started = time.perf_counter()
            counts = warehouse.sync_embeddings(
                con,
                "text_embeddings",
                encoder.model_id,
                catalog["item_id"].tolist(),
                [content_hash(t) for t in texts],
                lambda positions: _encode_with_progress(encoder, [texts[i] for i in positions]),
                keep=every,
            )
            seconds = time.perf_counter() - started
            table = table_metadata(con, embedding_table("text_embeddings", encoder.dim))
            _per_day_with_vectors(context, con, "text_embeddings")
        context.log.info(f"text_embeddings: {counts}")
        return dg.MaterializeResult(
            metadata={
                **table,  # the width is the column type, FLOAT[dim]
                "seconds": round(time.perf_counter() - asset_started, 2),
                "encoded": counts["encoded"],
                "reused": counts["reused"],
                "removed": counts["removed"],
                "encode_seconds": round(seconds, 2),
                "items_per_second": round(counts["encoded"] / seconds, 1) if counts["encoded"] else 0.0,
                "details": key_value_table(
                    {
                        "model id": encoder.model_id,
                        "as of (UTC, exclusive)": end.isoformat(),
                        "items synced": len(texts),
                    }
                ),
            }
        )

    @dg.asset(**daily, kinds={"duckdb", "pytorch"}, deps=["item_catalog"])
    def image_embeddings(
        context: dg.AssetExecutionContext, image_encoder: ImageEncoderResource, warehouse_db: WarehouseResource
    ):
        """Pooled, L2-normalised ImageNet-CNN features (timm) of each item's image (catalog ``image_uri`` or the
        configured pattern under the configured roots), keyed by model id and the SHA-256 of the image bytes: only
        new or changed images are encoded. Items without a usable image are listed in ``media_failures``. A run with
        no image folder configured (``RECSYS_IMAGE_ROOT`` unset) keeps the stored vectors as they are and warns."""
        return _media_embeddings(context, "image", image_encoder, warehouse_db)

    @dg.asset(**daily, kinds={"duckdb"}, deps=["item_catalog"])
    def audio_embeddings(
        context: dg.AssetExecutionContext, audio_encoder: AudioEncoderResource, warehouse_db: WarehouseResource
    ):
        """Fixed-size librosa feature summaries (or torchcrepe embeddings) of each item's audio clip, keyed by model
        id and the SHA-256 of the audio bytes. Items without a usable clip are listed in ``media_failures``."""
        return _media_embeddings(context, "audio", audio_encoder, warehouse_db)

    @dg.asset(
        **daily,
        kinds={"duckdb"},
        deps=["item_catalog", text_embeddings, image_embeddings, audio_embeddings],
    )
    def item_features(context: dg.AssetExecutionContext, warehouse_db: WarehouseResource):
        """Per catalog item: one vector per modality with a presence flag, plus genres, year and the day it was
        added (the model's content input; the model of day D reads the items added by D). The table is rebuilt
        whole from the catalog and the embedding tables (a join, seconds); items added after the run's last day
        keep the vectors their own days encoded."""
        from recsys_pipeline.content.features import MODALITY_TABLES, build_item_features

        started = time.perf_counter()
        _, end = window(context)
        with warehouse_db.session() as con:
            _catalog_as_of(con, end, "item_id")
            counts = build_item_features(con)
            widths = {m: declared_width(con, "item_features", f"{m}_embedding") for m in MODALITY_TABLES}
            table = table_metadata(con, item_features_table(widths))
            _per_day_with_vectors(context, con, None)
        present = {k: v for k, v in counts.items() if k.endswith("_present")}  # items with each modality
        return dg.MaterializeResult(metadata={**table, "seconds": round(time.perf_counter() - started, 2), **present})

    return [text_embeddings, image_embeddings, audio_embeddings, item_features]


def embedding_check(
    asset: dg.AssetsDefinition | str,
    table: str,
    expected_width: int | None = None,
    tolerance: float = UNIT_NORM_TOLERANCE,
) -> dg.AssetChecksDefinition:
    """An asset check named ``{table}_finite_unit_norm`` for a ``FLOAT[d]`` embedding table.

    Passes when the table has rows and every vector is finite, has the expected width (``expected_width``, or the
    width the column declares when ``None``) and unit L2 norm within ``tolerance``.

    Args:
        asset: the asset that writes ``table``.
        table: the table name (``item_id, model_id, content_hash, embedding FLOAT[d], encoded_at``).
        expected_width: the encoder's output width ``d``; ``None`` accepts the declared one.
        tolerance: the largest allowed ``|norm - 1|``.
    """

    @dg.asset_check(
        asset=asset,
        name=f"{table}_finite_unit_norm",
        description=f"Every {table} vector finite, of the expected width, with unit L2 norm.",
    )
    def _check(warehouse_db: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse_db.session(read_only=True) as con:
            if not warehouse.table_exists(con, table):
                return dg.AssetCheckResult(passed=False, metadata={"rows": 0, "error": f"no table {table}"})
            declared = con.execute(
                "SELECT data_type FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ? "
                "AND column_name = 'embedding'",
                [table],
            ).fetchall()
            vectors = con.execute(f"SELECT embedding FROM {table}").fetchnumpy()["embedding"]  # table: code constant
        widths = {len(v) for v in vectors}
        width = widths.pop() if len(widths) == 1 else 0
        matrix = np.stack(list(vectors)).astype(np.float32) if width else np.zeros((0, 0), np.float32)
        finite = bool(np.isfinite(matrix).all())
        norms = np.linalg.norm(matrix, axis=1) if matrix.size else np.ones(0)
        worst = float(np.nanmax(np.abs(norms - 1.0))) if norms.size and finite else (0.0 if finite else float("inf"))
        want = (
            expected_width
            if expected_width is not None
            else (
                int(declared[0][0].removeprefix("FLOAT[").removesuffix("]"))
                if declared and declared[0][0].startswith("FLOAT[")
                else None
            )
        )
        return dg.AssetCheckResult(
            passed=bool(len(vectors) > 0 and finite and width == want and worst < tolerance),
            metadata={
                "rows": len(vectors),
                "width": width,
                "expected_width": want or 0,
                "all_finite": finite,
                "max_norm_error": worst if np.isfinite(worst) else -1.0,
            },
        )

    return _check


def content_checks() -> list[dg.AssetChecksDefinition]:
    """The unit-norm check of every embedding table that has a fixed geometry (text here)."""
    return [embedding_check("text_embeddings", "text_embeddings")]
