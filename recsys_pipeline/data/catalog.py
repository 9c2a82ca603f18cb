"""Item catalog: one row per item with title, genres, year, aggregated user tags and the text to encode."""

from __future__ import annotations

import pandas as pd

from recsys_pipeline.data.schema import ITEM_CATALOG

YEAR_IN_TITLE = r"\((\d{4})\)\s*$"
# Encoders read at most a few hundred tokens (MiniLM: 128 by default); a 1 MB description is cut, not stored whole.
MAX_TEXT_CHARS = 10_000
CATALOG_TABLE_COLUMNS = ITEM_CATALOG.column_names


def build_item_catalog(items: pd.DataFrame, tags: pd.DataFrame, max_tags: int = 20) -> pd.DataFrame:
    """Build the ``item_catalog`` table.

    Args:
        items: ``item_id, title, genres`` (``|``-separated str), ``extra_text``, ``image_uri``, ``audio_uri``.
        tags: ``item_id, tag``: one row per user-applied tag.
        max_tags: most frequent distinct tags kept per item (case-folded).

    Returns:
        One row per item: ``item_id`` (str), ``title`` (str), ``genres`` (list[str]), ``year`` (Int64, <NA> when
        the title carries no ``(YYYY)``), ``tags_text`` (str), ``text`` (the text-encoder input: title, genres,
        tags and extra text, cut at ``MAX_TEXT_CHARS`` characters), ``image_uri``, ``audio_uri``.

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
    text = text.where(frame["tags_text"] == "", text + " Tags: " + frame["tags_text"] + ".")
    extra = pd.Series(extra, index=items.index).astype(str).values
    frame["text"] = [f"{t} {e}".strip()[:MAX_TEXT_CHARS] for t, e in zip(text, extra)]
    frame["image_uri"] = items["image_uri"].values
    frame["audio_uri"] = items["audio_uri"].values
    return frame[CATALOG_TABLE_COLUMNS]
