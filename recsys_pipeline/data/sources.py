"""Readers for event logs and item catalogs (no Dagster import).

Two kinds of source share one contract, ``EventSource``:

- ``MovieLensSource``: an extracted GroupLens release: ml-latest-small / ml-latest / ml-20m / ml-25m
  (``ratings.csv``, ``movies.csv``, ``tags.csv``), ml-1m (``ratings.dat``/``movies.dat``, ``::``-separated) or
  ml-100k (``u.data`` tab-separated, ``u.item`` pipe-separated). ``MovieLensSource()`` reads the bundled
  ml-latest-small.
- ``DailyFileSource``: a user's own data: one event file per UTC day named ``YYYY-MM-DD.csv|.parquet|.jsonl``
  with columns ``user_id, item_id, timestamp[, value]``, plus an item catalog file with columns
  ``item_id, title[, genres][, description …][, image_uri][, audio_uri][, added_at]`` (``added_at``: when the item
  entered the catalog, ISO 8601 or epoch seconds: its UTC day is the item's daily partition).

Raw events are returned as text, exactly as the source gave them (the ``interactions`` stage parses, validates
and quarantines); each row carries ``source`` (file name) and ``source_row`` (0-based data row in that file).

Daily CSV and JSON Lines event files are read line by line, so one bad line never fails the whole file: a line that
cannot be parsed (wrong field count, unbalanced quote, a field over 128 KiB, bytes that are not UTF-8, invalid
JSON) becomes a raw row with ``parse_error`` (the reason) and ``raw_line`` (its text, cut at
``MAX_RAW_LINE_CHARS``) and is quarantined by the ``interactions`` stage. Event values never span lines, so a line
is a record. Whole-file errors remain for a missing column, a header that is not UTF-8, a Parquet file that cannot
be read, and for MovieLens releases and catalog files (a catalog text may legitimately hold quoted line breaks).
"""

from __future__ import annotations

import abc
import csv
import functools
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd

from recsys_pipeline.data.schema import LANDING_REJECTIONS, RAW_EVENTS
from recsys_pipeline.settings import BUNDLED_FIRST_DAY, BUNDLED_LAST_DAY, BUNDLED_MOVIELENS_DIR, Settings

RAW_EVENT_COLUMNS = RAW_EVENTS.column_names
MAX_RAW_LINE_CHARS = 1000  # text of an unparseable line kept for diagnosis; the file itself stays the record
CATALOG_COLUMNS = ["item_id", "title", "genres", "extra_text", "image_uri", "audio_uri", "added_at"]
EVENT_FILE_SUFFIXES = (".csv", ".parquet", ".jsonl")
_DATE_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.(csv|parquet|jsonl)$")
# Why a landing file is not ingested (``landing_rejections.reason``).
LANDING_REJECTION_REASONS = ("unreadable_name", "not_a_daily_file", "impossible_date", "future_date", "empty_file")


class SourceError(ValueError):
    """A source is missing, unreadable or not in a supported layout."""


class EventSource(abc.ABC):
    """Contract: events by UTC day window, and the item catalog."""

    @abc.abstractmethod
    def first_date(self) -> date:
        """First UTC day holding an event (the start of the daily partitions)."""

    @abc.abstractmethod
    def last_date(self) -> date:
        """Last UTC day holding an event."""

    @abc.abstractmethod
    def read_events(self, start: datetime, end: datetime) -> pd.DataFrame:
        """Raw events of the UTC days in ``[start, end)`` (naive UTC datetimes at midnight).

        Returns a DataFrame with ``RAW_EVENT_COLUMNS``: ``partition_date`` (datetime64 day), ``user_id``,
        ``item_id``, ``timestamp_raw``, ``value_raw`` (str or None), ``source`` (str), ``source_row`` (int64),
        ``parse_error`` (None, or why the line could not be parsed; its other fields are then None) and
        ``raw_line`` (None, or the unparseable line's text).
        """

    @abc.abstractmethod
    def read_catalog(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(items, tags)``: items with ``CATALOG_COLUMNS`` (genres as a ``|``-separated str, may be empty;
        ``added_at``: when the item entered the catalog, as the source says it (text, or a datetime64 day), None
        when it does not say), tags with ``item_id, tag`` (one row per user tag; may be empty)."""


def _as_text(series: pd.Series) -> pd.Series:
    """Object column of str/None (NaN → None), keeping the source's text."""
    out = series.astype("string").astype(object)
    return out.where(series.notna(), None)


def _epoch_day(seconds: pd.Series) -> pd.Series:
    return pd.to_datetime(seconds, unit="s", utc=True).dt.tz_localize(None).dt.floor("D")


@dataclass
class MovieLensSource(EventSource):
    """An extracted GroupLens MovieLens release; ``path=None`` reads the bundled ml-latest-small.

    Raises:
        SourceError: the folder holds no known ratings file, or a ratings timestamp is not integer seconds.
    """

    path: str | Path | None = None

    @property
    def root(self) -> Path:
        return Path(self.path) if self.path else BUNDLED_MOVIELENS_DIR

    def _layout(self) -> str:
        root = self.root
        if not root.is_dir():
            raise SourceError(f"MovieLens folder not found: {root}")
        if (root / "ratings.csv").exists():
            return "csv"
        if (root / "ratings.dat").exists():
            return "dat"
        if (root / "u.data").exists():
            return "100k"
        raise SourceError(f"{root}: no ratings.csv (ml-latest, ml-25m), ratings.dat (ml-1m) or u.data (ml-100k)")

    @functools.cached_property
    def _ratings(self) -> pd.DataFrame:
        layout, root = self._layout(), self.root
        names = ["user_id", "item_id", "value_raw", "timestamp_raw"]
        if layout == "csv":
            name = "ratings.csv"
            frame = pd.read_csv(root / name, dtype=str, keep_default_na=False)
            frame = frame.rename(
                columns={"userId": "user_id", "movieId": "item_id", "rating": "value_raw", "timestamp": "timestamp_raw"}
            )[names]
        elif layout == "dat":
            name = "ratings.dat"
            frame = pd.read_csv(root / name, sep="::", engine="python", names=names, dtype=str, encoding="latin-1")
        else:
            name = "u.data"
            frame = pd.read_csv(root / name, sep="\t", names=names, dtype=str)
        seconds = pd.to_numeric(frame["timestamp_raw"], errors="coerce")
        bad = seconds.isna() | (seconds < 0)
        if bad.any():
            first = int(bad.idxmax())
            raise SourceError(
                f"{root / name}: {int(bad.sum())} ratings with a timestamp that is not epoch seconds "
                f"(first at data row {first}: {frame['timestamp_raw'].iloc[first]!r})"
            )
        frame["partition_date"] = _epoch_day(seconds)
        frame["source"] = name
        frame["source_row"] = pd.RangeIndex(len(frame), dtype="int64")
        frame["parse_error"] = None
        frame["raw_line"] = None
        return frame[RAW_EVENT_COLUMNS].sort_values(["partition_date", "source_row"], kind="stable")

    def first_date(self) -> date:
        return self._ratings["partition_date"].min().date()

    def last_date(self) -> date:
        return self._ratings["partition_date"].max().date()

    def read_events(self, start: datetime, end: datetime) -> pd.DataFrame:
        days = self._ratings["partition_date"]
        lo, hi = days.searchsorted(pd.Timestamp(start)), days.searchsorted(pd.Timestamp(end))
        return self._ratings.iloc[lo:hi].reset_index(drop=True)

    def read_catalog(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The movies and their tags. A release says nothing of when a movie was added: ``added_at`` is the UTC day
        of its first rating or tag (None for a movie with neither)."""
        layout, root = self._layout(), self.root
        tags = pd.DataFrame({"item_id": pd.Series(dtype=object), "tag": pd.Series(dtype=object)})
        tag_days = pd.Series(dtype="datetime64[ns]")
        if layout == "csv":
            items = pd.read_csv(root / "movies.csv", dtype=str, keep_default_na=False)
            items = items.rename(columns={"movieId": "item_id"})
            if (root / "tags.csv").exists():
                tags = pd.read_csv(root / "tags.csv", dtype=str, keep_default_na=False)
                tags = tags.rename(columns={"movieId": "item_id"})
                if "timestamp" in tags.columns:
                    seconds = pd.to_numeric(tags["timestamp"], errors="coerce")
                    ok = seconds.notna() & (seconds >= 0)
                    tag_days = _epoch_day(seconds[ok]).groupby(tags.loc[ok, "item_id"].str.strip()).min()
                tags = tags[["item_id", "tag"]]
        elif layout == "dat":
            items = pd.read_csv(
                root / "movies.dat",
                sep="::",
                engine="python",
                names=["item_id", "title", "genres"],
                dtype=str,
                encoding="latin-1",
            )
        else:
            genre_names = [
                "unknown",
                "Action",
                "Adventure",
                "Animation",
                "Children",
                "Comedy",
                "Crime",
                "Documentary",
                "Drama",
                "Fantasy",
                "Film-Noir",
                "Horror",
                "Musical",
                "Mystery",
                "Romance",
                "Sci-Fi",
                "Thriller",
                "War",
                "Western",
            ]  # column order of u.item, from the ml-100k README
            raw = pd.read_csv(
                root / "u.item",
                sep="|",
                header=None,
                dtype=str,
                encoding="latin-1",
                names=["item_id", "title", "release", "video_release", "imdb_url", *genre_names],
            )
            flags = raw[genre_names[1:]].eq("1")
            genres = flags.apply(lambda row: "|".join(g for g, on in row.items() if on), axis=1)
            items = pd.DataFrame({"item_id": raw["item_id"], "title": raw["title"], "genres": genres})
        items["genres"] = items["genres"].replace("(no genres listed)", "")
        items["extra_text"] = ""
        items["image_uri"] = None
        items["audio_uri"] = None
        rating_days = self._ratings.groupby(self._ratings["item_id"].str.strip())["partition_date"].min()
        first = pd.concat([rating_days, tag_days]).groupby(level=0).min()
        items["added_at"] = items["item_id"].astype(str).str.strip().map(first).astype("datetime64[ns]")
        return items[CATALOG_COLUMNS].reset_index(drop=True), tags.reset_index(drop=True)


def _read_table_file(path: Path) -> pd.DataFrame:
    """Read a CSV, Parquet or JSON Lines file with every column as text.

    A 0-byte file gives an empty frame. Bytes that are not UTF-8 are an error, never replaced silently.

    Raises:
        SourceError: unknown suffix or a file that cannot be parsed (the parser's message is kept).
    """
    if path.suffix in EVENT_FILE_SUFFIXES and path.stat().st_size == 0:
        return pd.DataFrame()  # an empty file is a day without events
    try:
        if path.suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        if path.suffix == ".parquet":
            return pd.read_parquet(path).astype(object)
        if path.suffix == ".jsonl":
            return pd.read_json(path, lines=True, dtype=False).astype(object)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot be read: {exc}") from exc
    raise SourceError(f"{path}: unsupported file type (use {', '.join(EVENT_FILE_SUFFIXES)})")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_RAW_LINE_CHARS else text[:MAX_RAW_LINE_CHARS] + "…"


def _not_json(constant: str) -> None:
    """``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (RFC 8259), though Python's parser reads them: a line
    holding one is malformed (quarantined), never a silent NaN (which would read as no value)."""
    raise ValueError(f"{constant} is not a JSON value")


def _read_event_lines(path: Path) -> pd.DataFrame:
    """Read a CSV (with header) or JSON Lines event file line by line, keeping the lines that cannot be parsed.

    Returns one row per non-blank data line: the file's columns as str/None, ``source_row`` (int64: 0-based data
    line, blank lines counted, so ``line number - 2`` for CSV and ``- 1`` for JSON Lines), ``parse_error`` (None or
    the reason) and ``raw_line`` (None or the bad line's text, non-UTF-8 bytes shown as ``\\xNN``). A 0-byte file
    gives an empty frame.

    Raises:
        SourceError: the CSV header is missing, not UTF-8 or malformed, or the file holds NUL bytes (not text).
    """
    data = path.read_bytes()
    if not data.strip():
        return pd.DataFrame()
    if b"\x00" in data:
        raise SourceError(f"{path}: holds NUL bytes; not a text file")
    lines = data.removeprefix(b"\xef\xbb\xbf").splitlines()  # UTF-8 byte-order mark
    header: list[str] = []
    if path.suffix == ".csv":
        try:
            header = [name.strip() for name in next(csv.reader([lines[0].decode("utf-8")], strict=True))]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise SourceError(f"{path}: header line cannot be read: {exc}") from exc
        lines = lines[1:]
    texts = [_decode_or_none(raw) for raw in lines]  # None: not UTF-8
    good_rows: list[list] = []
    bad_rows: list[dict] = []
    plain = b'"' not in data  # no quoting anywhere: a comma split is the CSV parse
    limit = csv.field_size_limit()  # the csv module's own cap (128 KiB), applied to both paths
    for number, text in enumerate(texts):
        if text is None:
            raw = lines[number]
            bad_rows.append(
                {
                    "source_row": number,
                    "parse_error": f"not UTF-8 (byte {_bad_utf8_offset(raw)})",
                    "raw_line": _clip(raw.decode("utf-8", errors="backslashreplace")),
                }
            )
            continue
        if not text.strip():
            continue
        try:
            if header:
                fields = text.split(",") if plain else next(csv.reader([text], strict=True))
                if len(fields) != len(header):
                    raise ValueError(f"{len(fields)} fields, header has {len(header)}")
                if plain and len(text) > limit and any(len(f) > limit for f in fields):
                    raise csv.Error(f"field larger than field limit ({limit})")
                good_rows.append([*fields, number])
            else:
                parsed = json.loads(text, parse_constant=_not_json)
                if not isinstance(parsed, dict):
                    raise ValueError(f"a JSON {type(parsed).__name__}, not an object")
                good_rows.append({**parsed, "source_row": number})
        except (csv.Error, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            kind = "CSV" if header else "JSON"
            bad_rows.append(
                {"source_row": number, "parse_error": f"malformed {kind} line: {exc}", "raw_line": _clip(text)}
            )
    if header:
        good = pd.DataFrame(good_rows, columns=[*header, "source_row"], dtype=object)
        good[header] = good[header].replace("", None)  # an empty field is no value, as pandas reads it
    else:
        good = pd.DataFrame.from_records(good_rows) if good_rows else pd.DataFrame(columns=["source_row"])
    if not bad_rows:
        return good.assign(parse_error=None, raw_line=None)
    frame = pd.concat([good, pd.DataFrame(bad_rows)], ignore_index=True)
    return frame.sort_values("source_row", kind="stable").reset_index(drop=True)


def _flag_non_scalar_ids(raw: pd.DataFrame) -> None:
    """Set ``parse_error`` (where none yet) on rows whose ``user_id`` or ``item_id`` is not a scalar (a JSON object
    or array, a Parquet struct or list): an id must be one value, never the text of a container."""
    for col in ("user_id", "item_id"):
        kind = raw[col].map(_container_kind)
        mask = kind.notna() & raw["parse_error"].isna()
        if mask.any():
            raw["parse_error"] = raw["parse_error"].astype(object)
            raw.loc[mask, "parse_error"] = "id not a scalar: " + col + " is " + kind[mask]


def _container_kind(value: object) -> str | None:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) >= 1:
        return "an array"
    return None


def _decode_or_none(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _bad_utf8_offset(raw: bytes) -> int:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    return -1


@dataclass(frozen=True)
class LandingRejection:
    """A landing-folder entry that is not ingested: ``name`` (printable: bytes that are not UTF-8 as ``\\x..``
    escapes), ``reason`` (one of ``LANDING_REJECTION_REASONS``), a human ``detail`` and the size in bytes (``None``
    when it could not be read)."""

    name: str
    reason: str
    detail: str
    size_bytes: int | None = None


@dataclass
class LandingScan:
    """One listing of a landing folder: the ingestable files by UTC day (sorted by name) and the rejections."""

    files: dict[date, list[Path]] = field(default_factory=dict)
    rejections: list[LandingRejection] = field(default_factory=list)

    def reason_counts(self) -> dict[str, int]:
        """``reason -> number of files`` of the rejections."""
        counts: dict[str, int] = {}
        for r in self.rejections:
            counts[r.reason] = counts.get(r.reason, 0) + 1
        return counts

    def rejections_frame(self, recorded_at: datetime) -> pd.DataFrame:
        """The rejections as ``landing_rejections`` rows (``data.schema.LANDING_REJECTIONS``), stamped
        ``recorded_at`` (naive UTC)."""
        frame = pd.DataFrame(
            {
                "file_name": pd.Series([r.name for r in self.rejections], dtype=object),
                "reason": pd.Series([r.reason for r in self.rejections], dtype=object),
                "detail": pd.Series([r.detail for r in self.rejections], dtype=object),
                "size_bytes": pd.array([r.size_bytes for r in self.rejections], dtype="Int64"),
                "recorded_at": pd.Series([recorded_at] * len(self.rejections), dtype="datetime64[us]"),
            }
        )
        return frame[LANDING_REJECTIONS.column_names]


def _printable(name: str) -> str:
    """``name`` as UTF-8 text: undecodable bytes (surrogate escapes from the file system) become ``\\x..``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def scan_landing_folder(folder: str | Path, today: date | None = None) -> LandingScan:
    """List ``folder`` (no file is opened): every ``YYYY-MM-DD.csv|parquet|jsonl`` file of a real UTC day before
    ``today`` (default: today, UTC; so at most yesterday) that is not empty is ingestable; every other entry is a
    :class:`LandingRejection` with its reason (``unreadable_name``: the name is not UTF-8; ``not_a_daily_file``:
    another name, or not a regular file; ``impossible_date``: e.g. ``2024-02-30.csv``; ``future_date``: today or
    later, ingested once the day is over; ``empty_file``: 0 bytes). A missing folder gives an empty scan.
    """
    today = today or datetime.now(UTC).date()
    scan = LandingScan()
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return scan
    for path in entries:
        name = _printable(path.name)
        try:
            size = int(path.stat().st_size)
        except OSError as exc:
            scan.rejections.append(LandingRejection(name, "not_a_daily_file", f"cannot stat: {exc.strerror}"))
            continue
        if name != path.name:
            detail = "the file name is not valid UTF-8; rename it YYYY-MM-DD.csv|parquet|jsonl"
            scan.rejections.append(LandingRejection(name, "unreadable_name", detail, size))
            continue
        match = _DATE_FILE.match(path.name)
        if not match or not path.is_file():
            detail = "not a regular file" if match else "the name is not YYYY-MM-DD.csv|parquet|jsonl"
            scan.rejections.append(LandingRejection(name, "not_a_daily_file", detail, size))
            continue
        try:
            day = date.fromisoformat(match.group(1))
        except ValueError:
            detail = f"{match.group(1)} is not a real date (YYYY-MM-DD)"
            scan.rejections.append(LandingRejection(name, "impossible_date", detail, size))
            continue
        if day >= today:
            detail = f"{day} is not over yet (UTC today is {today}): ingested once the day is over"
            scan.rejections.append(LandingRejection(name, "future_date", detail, size))
            continue
        if size == 0:
            scan.rejections.append(LandingRejection(name, "empty_file", "the file is empty (0 bytes)", 0))
            continue
        scan.files.setdefault(day, []).append(path)
    return scan


@dataclass
class DailyFileSource(EventSource):
    """A folder of daily event files (``YYYY-MM-DD.csv|.parquet|.jsonl``, one UTC day each) and a catalog file.

    Raises:
        SourceError: the folder or catalog is missing, a file lacks a required column, or no event file exists.
    """

    events_dir: str | Path
    catalog_path: str | Path

    def scan(self, today: date | None = None) -> LandingScan:
        """The folder's ingestable files by UTC day and its rejected entries (:func:`scan_landing_folder`; the
        catalog file, when it sits in that folder, is not a rejection).

        Raises:
            SourceError: the folder is missing.
        """
        folder = Path(self.events_dir)
        if not folder.is_dir():
            raise SourceError(f"events folder not found: {folder}")
        scan = scan_landing_folder(folder, today)
        catalog = Path(self.catalog_path)
        if catalog.parent.resolve() == folder.resolve():
            scan.rejections = [r for r in scan.rejections if r.name != catalog.name]
        return scan

    def files_by_day(self) -> dict[date, list[Path]]:
        """The ingestable event files by UTC day (at most yesterday), sorted by name; an entry that cannot be
        ingested is left out here and listed by :meth:`scan` with its reason.

        Raises:
            SourceError: the folder is missing or holds no ingestable daily file.
        """
        return self._files()

    def _files(self) -> dict[date, list[Path]]:
        scan = self.scan()
        if not scan.files:
            rejected = f" ({len(scan.rejections)} rejected: {scan.reason_counts()})" if scan.rejections else ""
            raise SourceError(
                f"{self.events_dir}: no ingestable daily event files named YYYY-MM-DD.csv|.parquet|.jsonl{rejected}"
            )
        return scan.files

    def first_date(self) -> date:
        return min(self._files())

    def last_date(self) -> date:
        return max(self._files())

    def read_events(self, start: datetime, end: datetime) -> pd.DataFrame:
        frames = []
        for day, paths in self._files().items():
            if not (start.date() <= day < end.date()):
                continue
            for path in paths:
                raw = _read_table_file(path) if path.suffix == ".parquet" else _read_event_lines(path)
                if raw.empty and not len(raw.columns):
                    continue
                missing = {"user_id", "item_id", "timestamp"} - set(raw.columns)
                if missing and path.suffix == ".jsonl" and len(raw) and raw["parse_error"].notna().all():
                    missing = set()  # no line parsed at all: every line is quarantined with its reason
                if missing:
                    raise SourceError(f"{path}: missing column(s) {sorted(missing)}")
                for col in ("user_id", "item_id", "timestamp", "value", "parse_error", "raw_line"):
                    if col not in raw.columns:
                        raw[col] = None
                _flag_non_scalar_ids(raw)
                rows = raw["source_row"] if "source_row" in raw.columns else pd.RangeIndex(len(raw))
                value = raw["value"]
                frames.append(
                    pd.DataFrame(
                        {
                            "partition_date": pd.Timestamp(day),
                            "user_id": _as_text(raw["user_id"]),
                            "item_id": _as_text(raw["item_id"]),
                            "timestamp_raw": _as_text(raw["timestamp"]),
                            "value_raw": _as_text(value),
                            "source": path.name,
                            "source_row": pd.Series(rows, index=raw.index).astype("int64"),
                            "parse_error": _as_text(raw["parse_error"]),
                            "raw_line": _as_text(raw["raw_line"]),
                        }
                    )
                )
        if not frames:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in RAW_EVENT_COLUMNS}).astype(
                {"partition_date": "datetime64[us]", "source_row": "int64"}
            )
        return pd.concat(frames, ignore_index=True)[RAW_EVENT_COLUMNS]

    def read_catalog(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        path = Path(self.catalog_path)
        if not path.is_file():
            raise SourceError(f"catalog file not found: {path}")
        raw = _read_table_file(path)
        missing = {"item_id", "title"} - set(raw.columns)
        if missing:
            raise SourceError(f"{path}: missing column(s) {sorted(missing)}")
        known = {"item_id", "title", "genres", "image_uri", "audio_uri", "tags", "added_at"}
        text_columns = [c for c in raw.columns if c not in known]
        items = pd.DataFrame({"item_id": _as_text(raw["item_id"]), "title": _as_text(raw["title"]).fillna("")})
        items["genres"] = _as_text(raw["genres"]).fillna("") if "genres" in raw.columns else ""
        items["extra_text"] = (
            raw[text_columns].astype("string").fillna("").agg(" ".join, axis=1).str.strip() if text_columns else ""
        )
        for col in ("image_uri", "audio_uri", "added_at"):
            items[col] = _as_text(raw[col]) if col in raw.columns else None
        tags = pd.DataFrame({"item_id": pd.Series(dtype=object), "tag": pd.Series(dtype=object)})
        if "tags" in raw.columns:
            split = raw[["item_id", "tags"]].dropna().assign(tag=lambda f: f["tags"].astype(str).str.split("|"))
            tags = split.explode("tag")[["item_id", "tag"]].astype(str)
        return items[CATALOG_COLUMNS], tags.reset_index(drop=True)


def day_window(day: date) -> tuple[datetime, datetime]:
    """``[midnight, next midnight)`` of a UTC day as naive datetimes."""
    start = datetime(day.year, day.month, day.day)
    return start, start + timedelta(days=1)


def build_source(
    kind: str = "movielens",
    movielens_path: str | Path | None = None,
    events_dir: str | Path | None = None,
    catalog_path: str | Path | None = None,
) -> EventSource:
    """The source of ``kind``: ``"movielens"`` (``movielens_path``, ``None`` = the bundled ml-latest-small) or
    ``"daily_files"`` (``events_dir`` and ``catalog_path``). Nothing is read here.

    Raises:
        SourceError: an unknown kind, or ``daily_files`` without its two paths.
    """
    if kind == "movielens":
        return MovieLensSource(movielens_path or None)
    if kind == "daily_files":
        if not events_dir or not catalog_path:
            raise SourceError(
                "source kind 'daily_files' needs events_dir and catalog_path (RECSYS_EVENTS_DIR, RECSYS_CATALOG_PATH)"
            )
        return DailyFileSource(events_dir, catalog_path)
    raise SourceError(f"unknown source kind {kind!r}: use 'movielens' or 'daily_files'")


def partitions_start(settings: Settings) -> date:
    """The first daily partition, without parsing any data file: ``RECSYS_PARTITIONS_START`` if set; for a
    daily-files source, the earliest ``YYYY-MM-DD`` file name in its folder (a listing; a missing or empty folder
    falls back to the default so the code location still loads); else the bundled data's first day (1996-03-29).
    """
    if settings.partitions_start is not None:
        return settings.partitions_start
    if settings.source_kind == "daily_files" and settings.events_dir is not None:
        days = listed_days(settings.events_dir)
        if days:
            return days[0]
    return BUNDLED_FIRST_DAY


def partitions_end(settings: Settings) -> date | None:
    """The last daily partition of a static source, without parsing any data file: ``RECSYS_PARTITIONS_END`` if
    set; the bundled data's last day (2018-09-24) when the source is the bundled MovieLens; else ``None``: a growing
    source, whose partitions run to yesterday (UTC)."""
    if settings.partitions_end is not None:
        return settings.partitions_end
    if settings.source_kind == "movielens" and settings.movielens_path is None:
        return BUNDLED_LAST_DAY
    return None


def listed_days(folder: str | Path, today: date | None = None) -> list[date]:
    """The UTC days with an ingestable file in ``folder`` (:func:`scan_landing_folder`: real dates before
    ``today``, UTC, non-empty), sorted; a listing, no file is opened; a missing folder gives ``[]``."""
    return sorted(scan_landing_folder(folder, today).files)
