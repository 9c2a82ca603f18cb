"""Item catalog: one row per item with title, genres, year, aggregated user tags and the text to encode."""

from __future__ import annotations

from datetime import date

import pandas as pd

from recsys_pipeline.data.cleaning import parse_timestamps
from recsys_pipeline.data.schema import ITEM_CATALOG

YEAR_IN_TITLE = r"\((\d{4})\)\s*$"
# Encoders read at most a few hundred tokens (MiniLM: 128 by default); a 1 MB description is cut, not stored whole.
MAX_TEXT_CHARS = 10_000
CATALOG_TABLE_COLUMNS = ITEM_CATALOG.column_names


def added_days(added_at: pd.Series, first_day: date | None = None) -> pd.Series:
    """The UTC day each item entered the catalog, from the source's ``added_at`` (a datetime64 column, or text:
    ISO 8601 with or without offset, or epoch seconds; ``cleaning.parse_timestamps``).

    An item without a usable value, or dated before ``first_day`` (the first daily partition), is dated
    ``first_day``: it has been in the catalog from the start. With ``first_day=None`` those items get the earliest
    day of the others (1970-01-01 when no item has one).

    Returns:
        ``datetime.date`` per item (object dtype), aligned with ``added_at``.
    """
    if pd.api.types.is_datetime64_any_dtype(added_at):
        stamps = pd.to_datetime(added_at)
        if getattr(stamps.dt, "tz", None) is not None:
            stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    else:
        stamps = parse_timestamps(added_at.astype(object).where(added_at.notna(), None))
    days = stamps.dt.floor("D")
    floor = pd.Timestamp(first_day) if first_day is not None else days.min()
    if pd.isna(floor):
        floor = pd.Timestamp("1970-01-01")
    days = days.where(days.notna() & (days >= floor), floor)
    return pd.Series([d.date() for d in days], index=added_at.index, dtype=object)


def build_item_catalog(
    items: pd.DataFrame,
    tags: pd.DataFrame,
    max_tags: int = 20,
    first_day: date | None = None,
    tags_in_text: bool = False,
) -> pd.DataFrame:
    """Build the ``item_catalog`` table.

    User-applied tags are kept (``tags_text``) but by default are not part of the text the encoder reads: users write
    them after interacting with an item, so a brand-new item has none, and which items have them follows their
    popularity. A model trained on tagged text and shown an untagged new item ranks it as it would an unpopular old
    one. Measured on ml-latest-small (``benchmarks/quality.py``, the tuned setting, split seeds 0-2; new items'
    Recall@20 among new items / in the whole catalogue, held-out items always untagged): trained on text with
    tags 0.183 / 0.015, trained on text without them 0.221 / 0.063 (``benchmarks/results/model_changes.md``,
    seventh session of 2026-12-07).

    Args:
        items: ``item_id, title, genres`` (``|``-separated str), ``extra_text``, ``image_uri``, ``audio_uri`` and
            optionally ``added_at`` (when the item entered the catalog; see :func:`added_days`).
        tags: ``item_id, tag``: one row per user-applied tag.
        max_tags: most frequent distinct tags kept per item (case-folded).
        first_day: the first daily partition (UTC); items without ``added_at`` or dated before it get it.
        tags_in_text: also put the tags in ``text`` (``RECSYS_USER_TAGS_IN_TEXT``; see above).

    Returns:
        One row per item: ``item_id`` (str), ``title`` (str), ``genres`` (list[str]), ``year`` (Int64, <NA> when
        the title carries no ``(YYYY)``), ``tags_text`` (str), ``text`` (the text-encoder input: title, genres,
        the tags when ``tags_in_text``, and extra text, cut at ``MAX_TEXT_CHARS`` characters), ``image_uri``,
        ``audio_uri``, ``added_at`` (``datetime.date``: the item's daily partition).

    Raises:
        ValueError: an empty or duplicated ``item_id`` (the catalog is the source of truth for item ids).
    """
    ids = items["item_id"].astype("string").str.strip()
    if ids.isna().any() or (ids == "").any():
        raise ValueError(f"item catalog: {int((ids.isna() | (ids == '')).sum())} rows without item_id")
    dup = ids.duplicated()
    if dup.any():
        raise ValueError(f"item catalog: {int(dup.sum())} duplicated item_id values, e.g. {ids[dup].iloc[0]!r}")
    title = items["title"].astype("string").fillna("").str.strip()
    genres = items["genres"].astype("string").fillna("").map(lambda g: [x for x in g.split("|") if x])
    year = pd.to_numeric(title.str.extract(YEAR_IN_TITLE, expand=False), errors="coerce").astype("Int64")

    tag_text = pd.Series("", index=ids.values, dtype=object)
    if len(tags):
        t = pd.DataFrame({"item_id": tags["item_id"].astype(str).str.strip(), "tag": tags["tag"].astype(str)})
        t["tag"] = t["tag"].str.strip().str.lower()
        t = t[t["tag"] != ""]
        counts = t.groupby(["item_id", "tag"]).size().rename("n").reset_index()
        counts = counts.sort_values(["item_id", "n", "tag"], ascending=[True, False, True])
        top = counts.groupby("item_id").head(max_tags).groupby("item_id")["tag"].agg(", ".join)
        tag_text = top.reindex(ids.values).fillna("")

    extra = items["extra_text"].astype("string").fillna("") if "extra_text" in items else ""
    frame = pd.DataFrame(
        {
            "item_id": ids.astype(str).values,
            "title": title.astype(str).values,
            "genres": genres.values,
            "year": year.values,
            "tags_text": pd.Series(tag_text.values, dtype=object).astype(str).values,
        }
    )
    genre_text = frame["genres"].map(", ".join)
    text = frame["title"] + ". Genres: " + genre_text + "."
    if tags_in_text:
        text = text.where(frame["tags_text"] == "", text + " Tags: " + frame["tags_text"] + ".")
    extra = pd.Series(extra, index=items.index).astype(str).values
    frame["text"] = [f"{t} {e}".strip()[:MAX_TEXT_CHARS] for t, e in zip(text, extra)]
    frame["image_uri"] = items["image_uri"].values
    frame["audio_uri"] = items["audio_uri"].values
    given = items["added_at"] if "added_at" in items else pd.Series(None, index=items.index, dtype=object)
    frame["added_at"] = added_days(given, first_day).values
    return frame[CATALOG_TABLE_COLUMNS]
