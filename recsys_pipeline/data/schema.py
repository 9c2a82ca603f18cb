"""The schema of every warehouse table: one declaration each, read by the DDL, the writers, the checks and tests.

Conventions (``DESIGN.md``): ``user_id`` / ``item_id`` are ``VARCHAR``; event times are naive ``TIMESTAMP`` in UTC;
a partition is a UTC day (``DATE``); embeddings are ``FLOAT[d]`` arrays. Tables whose width depends on an encoder
(the embedding tables, ``item_features``) are declared by functions of that width.

Example::

    >>> INTERACTIONS.ddl()
    'user_id VARCHAR NOT NULL, item_id VARCHAR NOT NULL, timestamp TIMESTAMP NOT NULL, value DOUBLE NOT NULL'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "Column",
    "Table",
    "RAW_EVENTS",
    "INTERACTIONS",
    "QUARANTINE",
    "ITEM_CATALOG",
    "MEDIA_FAILURES",
    "LANDING_REJECTIONS",
    "RECOMMENDATIONS",
    "EVALUATION_METRICS",
    "EVALUATION_RANKED_LISTS",
    "EVALUATION_GROUND_TRUTH",
    "EVALUATION_ABLATION",
    "MODEL_TUNING",
    "TABLES",
    "EVENT_TABLES",
    "embedding_table",
    "item_features_table",
]


@dataclass(frozen=True)
class Column:
    """One column: ``name``, DuckDB ``sql_type``, whether it may be NULL, and what it holds."""

    name: str
    sql_type: str
    nullable: bool = True
    description: str = ""

    def ddl(self) -> str:
        return f"{self.name} {self.sql_type}" + ("" if self.nullable else " NOT NULL")


@dataclass(frozen=True)
class Table:
    """A table: its name, its columns in order, and a one-line description."""

    name: str
    columns: tuple[Column, ...]
    description: str = ""
    primary_key: str | None = None

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        """The column ``name``. Raises ``KeyError`` naming the table's columns."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}; it has {self.column_names}")

    def ddl(self) -> str:
        """The column list of ``CREATE TABLE name (...)``."""
        parts = [c.ddl() for c in self.columns]
        if self.primary_key:
            parts.append(f"PRIMARY KEY ({self.primary_key})")
        return ", ".join(parts)

    def information_schema(self) -> list[tuple[str, str, str]]:
        """``(column_name, data_type, is_nullable)`` rows as DuckDB's ``information_schema.columns`` reports them."""
        return [(c.name, c.sql_type, "YES" if c.nullable else "NO") for c in self.columns]


def _col(name: str, sql_type: str, nullable: bool = True, description: str = "") -> Column:
    return Column(name, sql_type, nullable, description)


RAW_EVENTS = Table(
    "raw_events",
    (
        _col("partition_date", "DATE", False, "UTC day of the source file or of the epoch timestamp"),
        _col("user_id", "VARCHAR", description="as the source gave it"),
        _col("item_id", "VARCHAR", description="as the source gave it"),
        _col("timestamp_raw", "VARCHAR", description="epoch seconds or ISO 8601, as the source gave it"),
        _col("value_raw", "VARCHAR", description="rating or other value, as the source gave it"),
        _col("source", "VARCHAR", False, "file name"),
        _col("source_row", "BIGINT", False, "0-based data row in that file"),
        _col("parse_error", "VARCHAR", description="why the line could not be parsed (then quarantined)"),
        _col("raw_line", "VARCHAR", description="the unparseable line's text, cut at 1,000 characters"),
    ),
    "events as the source gave them, text columns, one UTC day per partition",
)

INTERACTIONS = Table(
    "interactions",
    (
        _col("user_id", "VARCHAR", False),
        _col("item_id", "VARCHAR", False),
        _col("timestamp", "TIMESTAMP", False, "naive UTC"),
        _col("value", "DOUBLE", False, "the source's value; 1.0 when it gave none"),
    ),
    "typed, validated, de-duplicated events",
)

QUARANTINE = Table(
    "quarantine",
    (
        _col("stage", "VARCHAR", False, "the stage that rejected the row: interactions or item_catalog"),
        _col("partition_date", "DATE"),
        _col("reason", "VARCHAR", False),
        _col("user_id", "VARCHAR"),
        _col("item_id", "VARCHAR"),
        _col("timestamp_raw", "VARCHAR"),
        _col("value_raw", "VARCHAR"),
        _col("source", "VARCHAR"),
        _col("source_row", "BIGINT"),
        _col("raw_line", "VARCHAR"),
    ),
    "rejected rows with their reason",
)

ITEM_CATALOG = Table(
    "item_catalog",
    (
        _col("item_id", "VARCHAR", False),
        _col("title", "VARCHAR", False),
        _col("genres", "VARCHAR[]", False),
        _col("year", "BIGINT", description="release year from a trailing (YYYY) in the title"),
        _col("tags_text", "VARCHAR", False, "the most frequent user tags, comma-separated"),
        _col("text", "VARCHAR", False, "the text encoder's input"),
        _col("image_uri", "VARCHAR"),
        _col("audio_uri", "VARCHAR"),
        _col(
            "added_at",
            "DATE",
            False,
            "UTC day the item entered the catalog (its daily partition): the catalog's added_at, else "
            "(MovieLens) the day of its first rating or tag, else the first partition",
        ),
    ),
    "one row per item: title, genres, year, tags, the text to encode, media URIs, the day it was added",
    primary_key="item_id",
)

MEDIA_FAILURES = Table(
    "media_failures",
    (
        _col("item_id", "VARCHAR", False),
        _col("modality", "VARCHAR", False, "image or audio"),
        _col("uri", "VARCHAR"),
        _col("reason", "VARCHAR", False, "missing, outside_roots, corrupt, too_many_pixels, ..."),
        _col("detail", "VARCHAR"),
        _col("content_hash", "VARCHAR", description="SHA-256 of the file bytes when they were read"),
        _col("model_id", "VARCHAR"),
        _col("recorded_at", "TIMESTAMP", False),
    ),
    "catalog items without a usable image or audio file, with the reason",
)

LANDING_REJECTIONS = Table(
    "landing_rejections",
    (
        _col("file_name", "VARCHAR", False, "as listed; bytes that are not UTF-8 as \\x.. escapes"),
        _col("reason", "VARCHAR", False, "unreadable_name, not_a_daily_file, impossible_date, future_date, empty_file"),
        _col("detail", "VARCHAR", False),
        _col("size_bytes", "BIGINT"),
        _col("recorded_at", "TIMESTAMP", False, "UTC time of the listing"),
    ),
    "entries of the daily_files landing folder that were not ingested, with the reason (the latest listing)",
)

RECOMMENDATIONS = Table(
    "recommendations",
    (
        _col("partition_date", "DATE", False, "UTC day of the lists (the asset's daily partition)"),
        _col("user_id", "VARCHAR", False),
        _col("rank", "BIGINT", False, "1 = best"),
        _col("item_id", "VARCHAR", False),
        _col("score", "FLOAT", False),
        _col("strategy", "VARCHAR", False, "personalized, folded_in or cold_user_prior (serving.publish)"),
        _col("model_run_id", "VARCHAR", False, "MLflow run of the champion"),
        _col("model_version", "VARCHAR", False, "registry version of the champion"),
        _col("produced_on", "DATE", False, "UTC day the run made the lists (wall clock)"),
        _col("model_partition_date", "DATE", description="partition date of the champion version (NULL: older)"),
        _col(
            "explanation",
            "VARCHAR",
            description='JSON {"because": [the user\'s item ids raising it most], "contributions": [score drops], '
            '"modalities": {name: share}} (NULL: not explained)',
        ),
    ),
    "top-K per user by the champion of the day, seen items excluded; one set of lists per partition_date",
)

_DAY = Column("partition_date", "DATE", False, "UTC day of the evaluated model (the asset's daily partition)")

EVALUATION_METRICS = Table(
    "evaluation_metrics",
    (
        _DAY,
        _col("protocol", "VARCHAR", False),
        _col("model", "VARCHAR", False, "ours or popularity"),
        _col("metric", "VARCHAR", False, "recall_at_20, ndcg_at_10, coverage, ..."),
        _col("value", "DOUBLE"),
        _col("mlflow_run_id", "VARCHAR", False),
    ),
    "figures per protocol and model",
)

EVALUATION_RANKED_LISTS = Table(
    "evaluation_ranked_lists",
    (
        _DAY,
        _col("protocol", "VARCHAR", False),
        _col("model", "VARCHAR", False),
        _col("user_id", "VARCHAR", False),
        _col("rank", "BIGINT", False),
        _col("item_id", "VARCHAR", False),
        _col("score", "FLOAT", False),
        _col("mlflow_run_id", "VARCHAR", False),
    ),
    "the evaluated top-K lists, to recompute any figure",
)

EVALUATION_GROUND_TRUTH = Table(
    "evaluation_ground_truth",
    (
        _DAY,
        _col("protocol", "VARCHAR", False),
        _col("user_id", "VARCHAR", False),
        _col("item_id", "VARCHAR", False),
        _col("mlflow_run_id", "VARCHAR", False),
    ),
    "the held-out interactions of each protocol",
)

EVALUATION_ABLATION = Table(
    "evaluation_ablation",
    (
        _DAY,
        _col("variant", "VARCHAR", False),
        _col("modalities", "VARCHAR", False),
        _col("fusion", "VARCHAR", False),
        _col("status", "VARCHAR", False, "trained, evaluation model, same as ..., skipped: ..."),
        _col("protocol", "VARCHAR", False),
        _col("metric", "VARCHAR", False),
        _col("value", "DOUBLE"),
        _col("mlflow_run_id", "VARCHAR", False),
    ),
    "the modality ablation on the evaluation's splits",
)

MODEL_TUNING = Table(
    "model_tuning",
    (
        _col("tuned_at", "TIMESTAMP", False, "when the search ended (naive UTC)"),
        _col("protocol", "VARCHAR", False, "whose validation split the trials were judged on"),
        _col("metric", "VARCHAR", False, "the validation figure, e.g. ndcg_at_10"),
        _col("trial", "BIGINT", False, "0 = the configured model (the default)"),
        _col("params", "VARCHAR", False, "the trial's ModelConfig overrides, JSON"),
        _col("value", "DOUBLE", False, "validation figure of the trial"),
        _col("seconds", "DOUBLE", False, "fit + evaluation time of the trial"),
        _col("chosen", "BOOLEAN", False, "the best trial: recommender_model trains with its params"),
        _col("mlflow_run_id", "VARCHAR", False, "the search's parent run (each trial is a child run)"),
    ),
    "the latest hyperparameter search (model_tuning): one row per trial",
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        RAW_EVENTS,
        INTERACTIONS,
        QUARANTINE,
        ITEM_CATALOG,
        MEDIA_FAILURES,
        LANDING_REJECTIONS,
        RECOMMENDATIONS,
        EVALUATION_METRICS,
        EVALUATION_RANKED_LISTS,
        EVALUATION_GROUND_TRUTH,
        EVALUATION_ABLATION,
        MODEL_TUNING,
    )
}
# Created on every connection for writing: ingestion appends to them window by window.
EVENT_TABLES = (RAW_EVENTS, INTERACTIONS, QUARANTINE)


def embedding_table(name: str, dim: int | None) -> Table:
    """An embeddings table (``text_embeddings``, ``image_embeddings``, ``audio_embeddings``) of width ``dim``
    (``None``: no vector encoded yet, width unknown: ``FLOAT[]``, as in :func:`item_features_table`)."""
    width = f"FLOAT[{int(dim)}]" if dim else "FLOAT[]"
    return Table(
        name,
        (
            _col("item_id", "VARCHAR", False),
            _col("model_id", "VARCHAR", False, "encoder id: hub name, path, or architecture + weights hash"),
            _col("content_hash", "VARCHAR", False, "SHA-256 of the encoded text or file bytes"),
            _col("embedding", width, False, "L2-normalised where the model expects cosine geometry"),
            _col("encoded_at", "TIMESTAMP", False),
        ),
        f"one {dim}-d vector per item with usable content" if dim else "one vector per item with usable content",
        primary_key="item_id",
    )


def item_features_table(modality_dims: Mapping[str, int | None]) -> Table:
    """``item_features`` for modalities ``name -> width`` (``None``: no vectors yet, an untyped NULL array)."""
    columns = [_col("item_id", "VARCHAR", False)]
    for name, dim in modality_dims.items():
        columns.append(
            _col(
                f"{name}_embedding",
                f"FLOAT[{int(dim)}]" if dim else "FLOAT[]",
                description="NULL when the item lacks it",
            )
        )
        columns.append(_col(f"{name}_present", "BOOLEAN", False))
    columns += [
        _col("genres", "VARCHAR[]", False),
        _col("year", "INTEGER", description="NULL when unknown"),
        _col("added_at", "DATE", False, "UTC day the item entered the catalog (item_catalog.added_at)"),
    ]
    return Table(
        "item_features",
        tuple(columns),
        "per item: one vector per modality with a presence flag, genres, year and the day it was added (the "
        "model's content input)",
    )
