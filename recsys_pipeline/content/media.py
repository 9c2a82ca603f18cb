"""Item media (images, audio): locating files safely, hashing their bytes, and syncing their embeddings.

Where a file comes from: the catalog's ``image_uri`` / ``audio_uri`` when set, else a file-name ``pattern`` such as
``"{item_id}.jpg"``. A relative path is looked up under the configured ``roots`` only; an absolute path (or
``file://`` URI) is accepted only when it lies inside one of the roots once resolved (``..`` and symlinks that
lead outside a root are refused). Remote URIs (``http://`` …) are refused: runs never touch the network.

Anything that goes wrong for one item (no source, file missing, outside the roots, unreadable, empty, too big,
corrupt, wrong format, too many pixels, audio too short) marks that item's modality missing with a reason; the run
goes on. :func:`sync_media_embeddings` stores embeddings through :func:`recsys_pipeline.data.warehouse.sync_embeddings`
(keyed by the encoder's model id and the SHA-256 of the file bytes, so unchanged files are never re-encoded) and
lists each failure in the ``media_failures`` table. A failure is never stored as a vector.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import duckdb
import numpy as np
import pandas as pd

from recsys_pipeline.data import warehouse
from recsys_pipeline.data.schema import MEDIA_FAILURES

__all__ = [
    "MediaLocator",
    "MediaFailure",
    "EncodeOutcome",
    "MediaEncoder",
    "MediaSyncReport",
    "sync_media_embeddings",
    "bytes_hash",
    "FAILURES_TABLE",
    "MEDIA_DEFAULTS",
]

FAILURES_TABLE = MEDIA_FAILURES.name
# Per modality: the file name used for items without a URI (``None``: catalog URIs only) and the size cap.
MEDIA_DEFAULTS: dict[str, dict] = {
    "image": {"pattern": "{item_id}.jpg", "max_bytes": 50_000_000},
    "audio": {"pattern": None, "max_bytes": 200_000_000},
}
# Reasons that depend only on the file bytes (and the encoder): a file with the same hash fails again, so it is
# not decoded again on the next run.
BYTES_REASONS = frozenset({"corrupt", "unsupported_format", "too_many_pixels", "too_short", "decode_error"})


def bytes_hash(data: bytes) -> str:
    """SHA-256 hex digest (64 lowercase hex chars) of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class MediaFailure:
    """Why one item has no vector for a modality. ``reason`` is a short code (see module docstring)."""

    reason: str
    detail: str = ""


class MediaLocator:
    """Finds an item's media file under configured roots.

    Args:
        roots: directories the files may come from (relative URIs are tried under each, in order).
        pattern: file name used when an item has no URI, formatted with ``item_id`` (e.g. ``"{item_id}.jpg"``);
            ``None``/empty = only catalog URIs.
        max_bytes: files larger than this are refused (``too_large``) before being read.

    Raises:
        ValueError: ``pattern`` does not contain ``{item_id}``. (A pattern or URI that leads outside the roots is
            not an error of the run: each such item fails with ``outside_roots``.)
    """

    def __init__(self, roots: Sequence[str | Path], pattern: str | None = None, max_bytes: int = 50_000_000):
        self.roots = [Path(r).expanduser().resolve() for r in roots if str(r).strip()]
        self.pattern = pattern or None
        if self.pattern is not None and "{item_id}" not in self.pattern:
            raise ValueError(f"media pattern {self.pattern!r} must contain '{{item_id}}'")
        self.max_bytes = int(max_bytes)

    def __repr__(self) -> str:
        return f"MediaLocator(roots={[str(r) for r in self.roots]}, pattern={self.pattern!r})"

    @classmethod
    def for_modality(
        cls, modality: str, roots: Sequence[str | Path], pattern: str | None = None, max_bytes: int | None = None
    ) -> MediaLocator:
        """A locator with :data:`MEDIA_DEFAULTS` of ``modality`` for what is not given (``pattern=""``: URIs only).

        Raises:
            KeyError: an unknown modality. ValueError: see the class.
        """
        defaults = MEDIA_DEFAULTS[modality]
        return cls(
            roots,
            defaults["pattern"] if pattern is None else (pattern or None),
            defaults["max_bytes"] if max_bytes is None else max_bytes,
        )

    def _inside_roots(self, path: Path) -> Path | None:
        resolved = path.resolve()  # follows symlinks: a link out of the root resolves outside it
        return resolved if any(resolved.is_relative_to(root) for root in self.roots) else None

    def locate(self, item_id: str, uri: object = None) -> tuple[str | None, Path | MediaFailure]:
        """Return ``(uri_used, path)`` or ``(uri_used, MediaFailure)``.

        ``uri`` is the catalog value (``None``/NaN/empty = use ``pattern``). Failure reasons: ``no_source``,
        ``remote_uri``, ``outside_roots``, ``missing``.
        """
        text = None if uri is None or pd.isna(uri) else str(uri).strip()
        if not text:
            if self.pattern is None:
                return None, MediaFailure("no_source", "no URI in the catalog and no file pattern configured")
            text = self.pattern.format(item_id=item_id)
        if not self.roots:
            return text, MediaFailure("no_source", "no media root configured")
        parsed = urlparse(text)
        if parsed.scheme and parsed.scheme != "file" and len(parsed.scheme) > 1:  # 1 char: a Windows drive letter
            return text, MediaFailure("remote_uri", f"scheme {parsed.scheme!r} is not read (no network)")
        raw = Path(unquote(parsed.path) if parsed.scheme == "file" else text).expanduser()
        candidates = [raw] if raw.is_absolute() else [root / raw for root in self.roots]
        outside = False
        for candidate in candidates:
            inside = self._inside_roots(candidate)
            if inside is None:
                outside = True
                continue
            if inside.is_file():
                return text, inside
        if outside:
            return text, MediaFailure("outside_roots", "path resolves outside every configured root")
        return text, MediaFailure("missing", "file not found under the configured roots")

    def read(self, path: Path) -> bytes | MediaFailure:
        """The file's bytes, or a failure: ``unreadable``, ``empty`` (0 bytes), ``too_large`` (> ``max_bytes``)."""
        try:
            size = path.stat().st_size
            if size == 0:
                return MediaFailure("empty", "zero-length file")
            if size > self.max_bytes:
                return MediaFailure("too_large", f"{size} bytes > max {self.max_bytes}")
            data = path.read_bytes()
        except OSError as exc:
            return MediaFailure("unreadable", f"{type(exc).__name__}: {exc}")
        return data if data else MediaFailure("empty", "zero-length file")


@dataclass
class EncodeOutcome:
    """What an encoder made of a batch of files.

    Attributes:
        vectors: ``(n_ok, d)`` float32, row ``j`` belongs to ``positions[j]``.
        positions: positions (in the input) that were embedded.
        failures: ``position -> MediaFailure`` for the rest.
    """

    vectors: np.ndarray
    positions: list[int]
    failures: dict[int, MediaFailure] = field(default_factory=dict)


class MediaEncoder(Protocol):
    """``model_id`` (str), ``dim`` (int) and ``encode_files(paths) -> EncodeOutcome``."""

    model_id: str
    dim: int

    def encode_files(self, paths: Sequence[Path]) -> EncodeOutcome: ...


@dataclass
class MediaSyncReport:
    """Counts of one media sync (all ints; ``missing_by_reason`` maps reason -> items).

    ``decoded``: files handed to the encoder (new or changed bytes, not known to fail); ``encoded``: rows written;
    ``reused``: rows kept because bytes and model id are unchanged; ``removed``: rows dropped (file gone or bad).
    """

    modality: str
    model_id: str
    total: int
    embedded: int
    decoded: int
    encoded: int
    reused: int
    removed: int
    missing: int
    missing_by_reason: dict[str, int]
    encode_seconds: float

    def metadata(self) -> dict:
        return {
            "rows": self.embedded,
            "total": self.total,
            "decoded": self.decoded,
            "encoded": self.encoded,
            "reused": self.reused,
            "removed": self.removed,
            "missing": self.missing,
            "model_id": self.model_id,
            "encode_seconds": round(self.encode_seconds, 2),
            **{f"missing_{reason}": n for reason, n in sorted(self.missing_by_reason.items())},
        }


def _previous_failures(con: duckdb.DuckDBPyConnection, modality: str, model_id: str) -> dict[str, tuple[str, str, str]]:
    if not warehouse.table_exists(con, FAILURES_TABLE):
        return {}
    rows = con.execute(
        f"SELECT item_id, content_hash, reason, detail FROM {FAILURES_TABLE} "
        "WHERE modality = ? AND model_id = ? AND content_hash IS NOT NULL",
        [modality, model_id],
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3] or "") for r in rows if r[2] in BYTES_REASONS}


def sync_media_embeddings(
    con: duckdb.DuckDBPyConnection,
    modality: str,
    table: str,
    encoder: MediaEncoder | Callable[[], MediaEncoder],
    item_ids: Sequence[str],
    uris: Sequence[object],
    locator: MediaLocator,
    keep: Sequence[str] | None = None,
) -> MediaSyncReport:
    """Embed every item's media file into ``table``; list the items without one in ``media_failures``.

    Items whose file bytes (SHA-256) and encoder ``model_id`` match the stored row are reused; a file that failed to
    decode before with the same bytes is not decoded again. ``table`` then holds exactly the items with a good
    file; ``media_failures`` holds one row per other catalog item for this ``modality`` (replaced each run).

    Args:
        modality: ``"image"`` or ``"audio"`` (the ``media_failures.modality`` value).
        encoder: a :class:`MediaEncoder`, or a no-argument factory of one, called only when at least one file was
            found (loading a CNN for a catalog without images is wasted time).
        table: embeddings table (``item_id, model_id, content_hash, embedding FLOAT[d], encoded_at``).
        item_ids, uris: the catalog, aligned (``uris[i]`` may be ``None``).
        keep: the items whose rows (vectors and failures) stay when they are not in ``item_ids`` (e.g. the whole
            catalog when ``item_ids`` are its items as of one day); ``None``: ``item_ids``, the whole catalog.

    Returns:
        a :class:`MediaSyncReport`.

    Raises:
        ValueError: ``item_ids`` and ``uris`` differ in length; an encoder returns rows of the wrong width.
        RuntimeError: the stored rows changed during the run (another writer), so an item lacks its new vector;
            nothing is written (``sync_embeddings`` rolls back).
    """
    if len(item_ids) != len(uris):
        raise ValueError(f"item_ids ({len(item_ids)}) and uris ({len(uris)}) differ in length")
    failures: dict[int, tuple[str | None, MediaFailure, str | None]] = {}  # position -> (uri, failure, hash)
    located: dict[int, tuple[str | None, Path, str]] = {}  # position -> (uri, path, hash)
    for i, (item, uri) in enumerate(zip(item_ids, uris)):
        used, where = locator.locate(str(item), uri)
        if isinstance(where, MediaFailure):
            failures[i] = (used, where, None)
            continue
        data = locator.read(where)
        if isinstance(data, MediaFailure):
            failures[i] = (used, data, None)
            continue
        located[i] = (used, where, bytes_hash(data))

    if located and callable(encoder) and not hasattr(encoder, "encode_files"):
        encoder = encoder()
    model_id = getattr(encoder, "model_id", "") if located else ""
    stored = warehouse.embedding_hashes(con, table, model_id)
    known_bad = _previous_failures(con, modality, model_id)
    to_encode = []
    for i, (used, _, digest) in located.items():
        item = str(item_ids[i])
        prior = known_bad.get(item)
        if prior is not None and prior[0] == digest:
            failures[i] = (used, MediaFailure(prior[1], prior[2]), digest)
        elif stored.get(item) != digest:
            to_encode.append(i)

    started = time.perf_counter()
    outcome = encoder.encode_files([located[i][1] for i in to_encode]) if to_encode else None
    seconds = time.perf_counter() - started
    new_vectors: dict[str, np.ndarray] = {}
    if outcome is not None:
        for j, pos in enumerate(outcome.positions):
            new_vectors[str(item_ids[to_encode[pos]])] = outcome.vectors[j]
        for pos, failure in outcome.failures.items():
            i = to_encode[pos]
            failures[i] = (located[i][0], failure, located[i][2])

    good = [i for i in located if i not in failures]
    good_ids = [str(item_ids[i]) for i in good]

    def vectors_for(positions: list[int]) -> np.ndarray:
        missing = [good_ids[p] for p in positions if good_ids[p] not in new_vectors]
        if missing:  # the stored hashes changed under us (a concurrent writer): refuse rather than guess
            raise RuntimeError(f"{table}: {len(missing)} items need encoding but were not encoded, e.g. {missing[:3]}")
        return np.stack([new_vectors[good_ids[p]] for p in positions]).astype(np.float32)

    # keep: the stored vectors of items outside this sync stay (None: only this sync's good items stay)
    synced, good_set = {str(i) for i in item_ids}, set(good_ids)
    kept = None if keep is None else [str(i) for i in keep if str(i) not in synced or str(i) in good_set]
    counts = warehouse.sync_embeddings(
        con, table, model_id, good_ids, [located[i][2] for i in good], vectors_for, keep=kept
    )

    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    rows = pd.DataFrame(
        {
            "item_id": [str(item_ids[i]) for i in sorted(failures)],
            "modality": modality,
            "uri": [failures[i][0] for i in sorted(failures)],
            "reason": [failures[i][1].reason for i in sorted(failures)],
            "detail": [failures[i][1].detail[:500] for i in sorted(failures)],
            "content_hash": [failures[i][2] for i in sorted(failures)],
            "model_id": model_id or None,
            "recorded_at": now,
        },
        columns=MEDIA_FAILURES.column_names,
    ).astype({"uri": object, "content_hash": object})
    con.execute(f"CREATE TABLE IF NOT EXISTS {FAILURES_TABLE} ({MEDIA_FAILURES.ddl()})")
    with warehouse.transaction(con, FAILURES_TABLE):
        if keep is None:
            con.execute(f"DELETE FROM {FAILURES_TABLE} WHERE modality = ?", [modality])
        else:  # this sync's items, and items gone from the catalog; the others' failures stay
            outside = pd.DataFrame({"item_id": sorted({str(i) for i in keep} - synced)}, dtype=object)
            con.register("_outside_items", outside)
            con.execute(
                f"DELETE FROM {FAILURES_TABLE} WHERE modality = ? "
                "AND item_id NOT IN (SELECT item_id FROM _outside_items)",
                [modality],
            )
            con.unregister("_outside_items")
        warehouse.insert_frame(con, FAILURES_TABLE, rows)

    by_reason = Counter(f.reason for _, f, _ in failures.values())
    return MediaSyncReport(
        modality=modality,
        model_id=model_id,
        total=len(item_ids),
        embedded=len(good_ids),
        decoded=len(to_encode),
        encoded=int(counts["encoded"]),
        reused=int(counts["reused"]),
        removed=int(counts["removed"]),
        missing=len(failures),
        missing_by_reason=dict(sorted(by_reason.items())),
        encode_seconds=seconds,
    )
