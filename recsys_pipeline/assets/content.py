"""Content assets and their checks: text / image / audio embeddings -> item_features."""

import time

import dagster as dg
import numpy as np

from recsys_pipeline.assets.metadata import declared_width, key_value_table, table_metadata
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


def _media_embeddings(context, modality: str, resource, warehouse_db: WarehouseResource) -> dg.MaterializeResult:
    """Shared body of image_embeddings / audio_embeddings: sync, then report the table, the counts and (in one
    table) the catalog size, where media is looked for and why items have none."""
    from recsys_pipeline.content.media import FAILURES_TABLE, sync_media_embeddings

    started = time.perf_counter()
    locator = resource.locator()
    built = []
    name = f"{modality}_embeddings"

    def encoder():  # built only when some item has a file
        built.append(resource.build())
        return built[-1]

    with warehouse_db.session() as con:
        catalog = con.execute(f"SELECT item_id, {modality}_uri AS uri FROM item_catalog ORDER BY item_id").df()
        report = sync_media_embeddings(
            con,
            modality,
            name,
            encoder,
            catalog["item_id"].tolist(),
            catalog["uri"].tolist(),
            locator,
        )
        sample = con.execute(
            f"SELECT item_id, uri, reason, detail FROM {FAILURES_TABLE} WHERE modality = ? AND reason <> 'missing' "
            "AND reason <> 'no_source' ORDER BY item_id LIMIT 20",
            [modality],
        ).df()
        # the width the table holds, else the encoder's (a table is created only once a vector is encoded)
        width = declared_width(con, name) or (built[0].dim if built else None)
        table = table_metadata(con, embedding_table(name, width))
    context.log.info(f"{name}: {report.metadata()}")
    details = {
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
            "model_id": report.model_id,
            "details": key_value_table(details),
            "failures_sample": dg.MetadataValue.md(sample.to_markdown(index=False) if len(sample) else "(none)"),
        }
    )


def content_assets() -> list[dg.AssetsDefinition]:
    """``text_embeddings``, ``image_embeddings``, ``audio_embeddings`` and ``item_features``."""

    @dg.asset(pool=DUCKDB_POOL, group_name="content", kinds={"duckdb", "pytorch"}, deps=["item_catalog"])
    def text_embeddings(
        context: dg.AssetExecutionContext, text_encoder: TextEncoderResource, warehouse_db: WarehouseResource
    ):
        """Mean-pooled, L2-normalised BERT-family embeddings of each item's text; only new or changed items are
        re-encoded (keyed by model id and a SHA-256 of the text)."""
        from recsys_pipeline.content.text import content_hash

        asset_started = time.perf_counter()
        encoder = text_encoder.build()
        with warehouse_db.session() as con:
            catalog = con.execute("SELECT item_id, text FROM item_catalog ORDER BY item_id").df()
            texts = catalog["text"].tolist()
            started = time.perf_counter()
            counts = warehouse.sync_embeddings(
                con,
                "text_embeddings",
                encoder.model_id,
                catalog["item_id"].tolist(),
                [content_hash(t) for t in texts],
                lambda positions: _encode_with_progress(encoder, [texts[i] for i in positions]),
            )
            seconds = time.perf_counter() - started
            table = table_metadata(con, embedding_table("text_embeddings", encoder.dim))
        context.log.info(f"text_embeddings: {counts}")
        return dg.MaterializeResult(
            metadata={
                **table,  # the width is the column type, FLOAT[dim]
                "seconds": round(time.perf_counter() - asset_started, 2),
                "encoded": counts["encoded"],
                "reused": counts["reused"],
                "removed": counts["removed"],
                "model_id": encoder.model_id,
                "encode_seconds": round(seconds, 2),
                "items_per_second": round(counts["encoded"] / seconds, 1) if counts["encoded"] else 0.0,
            }
        )

    @dg.asset(pool=DUCKDB_POOL, group_name="content", kinds={"duckdb", "pytorch"}, deps=["item_catalog"])
    def image_embeddings(
        context: dg.AssetExecutionContext, image_encoder: ImageEncoderResource, warehouse_db: WarehouseResource
    ):
        """Pooled, L2-normalised ImageNet-CNN features (timm) of each item's image (catalog ``image_uri`` or the
        configured pattern under the configured roots), keyed by model id and the SHA-256 of the image bytes: only
        new or changed images are encoded. Items without a usable image are listed in ``media_failures``."""
        return _media_embeddings(context, "image", image_encoder, warehouse_db)

    @dg.asset(pool=DUCKDB_POOL, group_name="content", kinds={"duckdb"}, deps=["item_catalog"])
    def audio_embeddings(
        context: dg.AssetExecutionContext, audio_encoder: AudioEncoderResource, warehouse_db: WarehouseResource
    ):
        """Fixed-size librosa feature summaries (or torchcrepe embeddings) of each item's audio clip, keyed by model
        id and the SHA-256 of the audio bytes. Items without a usable clip are listed in ``media_failures``."""
        return _media_embeddings(context, "audio", audio_encoder, warehouse_db)

    @dg.asset(
        pool=DUCKDB_POOL,
        group_name="content",
        kinds={"duckdb"},
        deps=["item_catalog", text_embeddings, image_embeddings, audio_embeddings],
    )
    def item_features(warehouse_db: WarehouseResource):
        """Per item: one vector per modality with a presence flag, plus genres and year (the model's content
        input)."""
        from recsys_pipeline.content.features import MODALITY_TABLES, build_item_features

        started = time.perf_counter()
        with warehouse_db.session() as con:
            counts = build_item_features(con)
            widths = {m: declared_width(con, "item_features", f"{m}_embedding") for m in MODALITY_TABLES}
            table = table_metadata(con, item_features_table(widths))
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
