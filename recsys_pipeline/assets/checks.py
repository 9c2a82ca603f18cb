"""Asset checks, next to what they check.

- ``interactions``: schema, non-null non-empty keys, no duplicate events, every event inside its partition's UTC
  day (and inside the partitions' range).
- embedding tables: ``embedding_check(asset, table)`` builds "finite, expected width, unit L2 norm" for any
  ``FLOAT[d]`` embedding table (text here; image and audio tables reuse it).
- ``model_evaluation``: a *blocking* gate: our model's NDCG@10 must not fall below the popularity baseline on any
  evaluated protocol; when it does, ``recommendations`` (downstream) is not materialized in that run.
"""

from collections.abc import Sequence

import dagster as dg
import numpy as np
import pandas as pd

from recsys_pipeline import warehouse
from recsys_pipeline.assets.content import text_embeddings
from recsys_pipeline.assets.ingestion import interactions
from recsys_pipeline.assets.model import model_evaluation
from recsys_pipeline.assets.partitions import daily_partitions
from recsys_pipeline.resources import WarehouseResource

# (column, DuckDB type, nullable) of ``interactions``, as ``warehouse.TABLES`` declares it.
INTERACTIONS_SCHEMA = [
    ("user_id", "VARCHAR", "NO"), ("item_id", "VARCHAR", "NO"), ("timestamp", "TIMESTAMP", "NO"),
    ("value", "DOUBLE", "NO"),
]
UNIT_NORM_TOLERANCE = 1e-3  # float32 vectors normalised in float32: |norm - 1| is ~1e-7; 1e-3 flags unnormalised


@dg.asset_check(asset=interactions, description="Columns and types as declared; keys NOT NULL.")
def interactions_schema(warehouse_db: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse_db.session(read_only=True) as con:
        got = [tuple(r) for r in con.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_name = 'interactions' ORDER BY ordinal_position"
        ).fetchall()]
    return dg.AssetCheckResult(
        passed=got == INTERACTIONS_SCHEMA,
        metadata={"columns": dg.MetadataValue.json([list(c) for c in got]),
                  "expected": dg.MetadataValue.json([list(c) for c in INTERACTIONS_SCHEMA])},
    )


@dg.asset_check(asset=interactions, description="No null or empty keys and no duplicate (user_id, item_id, timestamp).")
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
    asset=interactions,
    description="Every event lies inside its partition's UTC day: a raw_events row of that day partition gave it, "
    "and it falls within the partitions' range.",
)
def interactions_inside_partition_window(warehouse_db: WarehouseResource) -> dg.AssetCheckResult:
    first = daily_partitions.start.replace(tzinfo=None)
    last_window = daily_partitions.get_last_partition_window()
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
        metadata={"before_first_partition": int(before), "after_last_partition": int(after),
                  "without_raw_row_in_their_day": int(orphans), "partitions_start_utc": first.isoformat(),
                  "partitions_end_utc": end.isoformat()},
    )


def embedding_check(
    asset: dg.AssetsDefinition | str, table: str, expected_width: int | None = None,
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

    @dg.asset_check(asset=asset, name=f"{table}_finite_unit_norm",
                    description=f"Every {table} vector finite, of the expected width, with unit L2 norm.")
    def _check(warehouse_db: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse_db.session(read_only=True) as con:
            if not warehouse.table_exists(con, table):
                return dg.AssetCheckResult(passed=False, metadata={"rows": 0, "error": f"no table {table}"})
            declared = con.execute(
                "SELECT data_type FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ? "
                "AND column_name = 'embedding'", [table]
            ).fetchall()
            vectors = con.execute(f"SELECT embedding FROM {table}").fetchnumpy()["embedding"]  # table: code constant
        widths = {len(v) for v in vectors}
        width = widths.pop() if len(widths) == 1 else 0
        matrix = np.stack(list(vectors)).astype(np.float32) if width else np.zeros((0, 0), np.float32)
        finite = bool(np.isfinite(matrix).all())
        norms = np.linalg.norm(matrix, axis=1) if matrix.size else np.ones(0)
        worst = float(np.nanmax(np.abs(norms - 1.0))) if norms.size and finite else (0.0 if finite else float("inf"))
        want = expected_width if expected_width is not None else (
            int(declared[0][0].removeprefix("FLOAT[").removesuffix("]")) if declared and declared[0][0].startswith(
                "FLOAT[") else None)
        return dg.AssetCheckResult(
            passed=bool(len(vectors) > 0 and finite and width == want and worst < tolerance),
            metadata={"rows": len(vectors), "width": width, "expected_width": want or 0, "all_finite": finite,
                      "max_norm_error": worst if np.isfinite(worst) else -1.0},
        )

    return _check


text_embeddings_finite_unit_norm = embedding_check(text_embeddings, "text_embeddings")


def ndcg_against_popularity(metrics: pd.DataFrame, protocols: Sequence[str] | None = None) -> dict:
    """Compare our NDCG@10 with the popularity baseline's, per evaluated protocol.

    Args:
        metrics: ``evaluation_metrics`` rows ``protocol, model, metric, value`` (``runs.evaluate_and_log``).
        protocols: protocols to compare; ``None`` = every protocol with both ``ours`` and ``popularity``.

    Returns:
        ``{"passed": bool, "protocols": {protocol: {"ours": float, "popularity": float}}, "reason": str}``;
        ``passed`` is False when no protocol has both figures (no evidence is not a pass).
    """
    rows = metrics[(metrics["metric"] == "ndcg_at_10") & metrics["model"].isin(["ours", "popularity"])]
    wide = rows.pivot_table(index="protocol", columns="model", values="value", aggfunc="first")
    wide = wide.dropna() if {"ours", "popularity"} <= set(wide.columns) else wide.iloc[0:0]
    if protocols is not None:
        wide = wide[wide.index.isin(list(protocols))]
    figures = {str(p): {"ours": float(r["ours"]), "popularity": float(r["popularity"])} for p, r in wide.iterrows()}
    losing = [p for p, f in figures.items() if not f["ours"] >= f["popularity"]]
    if not figures:
        return {"passed": False, "protocols": {}, "reason": "no protocol with NDCG@10 for ours and popularity"}
    reason = ("ours >= popularity on " + ", ".join(figures)) if not losing else "; ".join(
        f"{p}: ours NDCG@10 {figures[p]['ours']:.4f} < popularity {figures[p]['popularity']:.4f}" for p in losing)
    return {"passed": not losing, "protocols": figures, "reason": reason}


@dg.asset_check(
    asset=model_evaluation,
    blocking=True,
    description="Gate: our NDCG@10 is at least the popularity baseline's on every evaluated protocol; otherwise "
    "recommendations are not published in this run.",
)
def model_beats_popularity(warehouse_db: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse_db.session(read_only=True) as con:
        if not warehouse.table_exists(con, "evaluation_metrics"):
            return dg.AssetCheckResult(passed=False, metadata={"reason": "no evaluation_metrics table"})
        metrics = con.execute("SELECT protocol, model, metric, value FROM evaluation_metrics").df()
    verdict = ndcg_against_popularity(metrics)
    return dg.AssetCheckResult(
        passed=verdict["passed"],
        description=verdict["reason"],
        metadata={"reason": verdict["reason"], "ndcg_at_10": dg.MetadataValue.json(verdict["protocols"])},
    )


ALL_CHECKS = [
    interactions_schema,
    interactions_keys_and_duplicates,
    interactions_inside_partition_window,
    text_embeddings_finite_unit_norm,
    model_beats_popularity,
]
