"""Published snapshots (no Dagster import): what readers (`recsys recommend`, `recsys serve`) use instead of the
DuckDB file, so that a materialization holding DuckDB's single-writer lock never blocks or breaks them.

A snapshot is one Parquet file under ``$RECSYS_HOME/published/``, written to a temporary file in the same folder,
fsynced, then moved into place with ``os.replace`` (atomic on POSIX): a reader sees the previous file or the new
one, never a partial one. A writer killed before the move leaves only its temporary file (named with its process
id); the next publish removes those of dead processes.

By day: the lists of UTC day D are ``published/days/D/recommendations.parquet`` (with ``items.parquet`` beside
them), and ``published/current.json`` (``{"date": "YYYY-MM-DD"}``, replaced the same atomic way) names the day
readers answer from by default. Publishing a day writes its files first and moves the pointer last, so a reader
never sees a day's lists without their items; a rollback moves only the pointer. A home written before days
(``published/recommendations.parquet``, no pointer) is read as it is.

Layout::

    published/current.json                      {"date": "2018-09-24", ...}: the current day
    published/days/2018-09-24/recommendations.parquet, items.parquet
    published/days/2018-09-24/model.json        {"folder": "model-<id>", ...}: the day's champion, for fold-in
    published/days/2018-09-24/model-<id>/       what ``Recommender.save`` wrote (``POST /recommendations``)
    published/days/2018-09-23/...               kept for RECSYS_RETENTION_DAYS days

A day's model is written to a new ``model-<id>`` folder (``.model-<id>.tmp`` until complete), then ``model.json``
is replaced atomically to name it, then the folder it named before is deleted: a reader sees the old model or the
new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pandas as pd

from recsys_pipeline.settings import HomePaths, pause_point

RECOMMENDATIONS = "recommendations"
ITEMS = "items"  # item_id, title, users, rank: titles and the popularity fallback (serving.publish.items_snapshot)
CURRENT = "current"  # published/current.json: the day readers answer from by default
DAYS_FOLDER = "days"
MODEL_POINTER = "model.json"  # published/days/D/model.json: names the day's model folder


def day_folder(paths: HomePaths, day: date) -> Path:
    """``$RECSYS_HOME/published/days/<YYYY-MM-DD>``: the snapshots of one UTC day."""
    return paths.published / DAYS_FOLDER / day.isoformat()


def snapshot_path(paths: HomePaths, name: str = RECOMMENDATIONS, day: date | None = None) -> Path:
    """The file of snapshot ``name``: of UTC day ``day``; with ``None``, of the current day
    (:func:`current_day`), or ``published/<name>.parquet`` when no day was ever published (a home from before
    days, or a snapshot published without a day)."""
    if day is None:
        day = current_day(paths)
    if day is None:
        return paths.published / f"{name}.parquet"
    return day_folder(paths, day) / f"{name}.parquet"


def _replace_atomically(target: Path, write, pause: str) -> Path:
    """Write ``target`` through ``write(handle)`` into a temporary file beside it, fsync, move it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    stem = target.name.split(".", 1)[0]
    remove_dead_temporaries(target.parent, stem)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}-{os.getpid()}-", suffix=".parquet.tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a server running as another user must read it
        pause_point(pause)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def publish_snapshot(
    paths: HomePaths, frame: pd.DataFrame, name: str = RECOMMENDATIONS, day: date | None = None
) -> Path:
    """Atomically replace the snapshot ``name`` of UTC day ``day`` (``None``: ``published/<name>.parquet``, the
    snapshot of a home without days) with ``frame``; returns its path. The current-day pointer is not touched
    (:func:`set_current_day`).

    Raises:
        OSError: the folder is not writable (the previous snapshot is left untouched).
    """
    target = day_folder(paths, day) / f"{name}.parquet" if day is not None else paths.published / f"{name}.parquet"
    return _replace_atomically(
        target, lambda handle: frame.to_parquet(handle, index=False), f"published/{name}.before_replace"
    )


def publish_model(paths: HomePaths, day: date, save: Callable[[Path], None], **info: str) -> Path:
    """Publish UTC day ``day``'s model: ``save(folder)`` writes it into a new folder, then the day's
    ``model.json`` names it (atomically, with ``info`` such as the model version), then older model folders of the
    day are deleted. Returns the new folder.

    Raises:
        OSError: the day folder is not writable; whatever ``save`` raises (the previous model stays published).
    """
    folder = day_folder(paths, day)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"model-{uuid.uuid4().hex[:12]}"
    tmp = folder / f".{name}.tmp"
    try:
        save(tmp)
        for path in (tmp, *tmp.rglob("*")):  # a server running as another user must read it
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.rename(tmp, folder / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    text = json.dumps({"folder": name, **info}, sort_keys=True).encode()
    _replace_atomically(folder / MODEL_POINTER, lambda handle: handle.write(text), "published/model.before_replace")
    for stale in folder.glob("model-*"):  # the one named before, and any a crash left behind
        if stale.name != name and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    for stale in folder.glob(".model-*.tmp"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return folder / name


def published_model(paths: HomePaths, day: date) -> tuple[Path, dict] | None:
    """``(folder, info)`` of UTC day ``day``'s published model (``info``: what :func:`publish_model` recorded),
    or ``None`` when the day has none (published before models were, or not at all)."""
    pointer = day_folder(paths, day) / MODEL_POINTER
    try:
        info = json.loads(pointer.read_text())
    except FileNotFoundError:
        return None
    folder = day_folder(paths, day) / str(info.get("folder", ""))
    return (folder, info) if info.get("folder") and folder.is_dir() else None


def current_day(paths: HomePaths) -> date | None:
    """The UTC day ``published/current.json`` names; ``None`` when no day was published yet.

    Raises:
        ValueError: the pointer file is not what :func:`set_current_day` writes.
    """
    pointer = paths.published / f"{CURRENT}.json"
    try:
        text = pointer.read_text()
    except FileNotFoundError:
        return None
    try:
        return date.fromisoformat(json.loads(text)["date"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{pointer}: not a published-day pointer ({exc})") from None


def set_current_day(paths: HomePaths, day: date, **info: str) -> Path:
    """Point readers at the snapshots of UTC day ``day`` (atomically: ``published/current.json``, with ``info``
    such as the Dagster run that moved it).

    Raises:
        FileNotFoundError: day ``day`` has no published recommendations.
    """
    if not (day_folder(paths, day) / f"{RECOMMENDATIONS}.parquet").exists():
        raise FileNotFoundError(f"no published recommendations of {day} under {day_folder(paths, day)}")
    text = json.dumps({"date": day.isoformat(), **info}, sort_keys=True).encode()
    return _replace_atomically(
        paths.published / f"{CURRENT}.json", lambda handle: handle.write(text), f"published/{CURRENT}.before_replace"
    )


def describe_days(days: list[date]) -> str:
    """``"2018-09-01 .. 2018-09-24 (24 days)"`` of ascending ``days``, ``"none"`` when empty: how error messages
    name the published days."""
    if not days:
        return "none"
    return f"{days[0]} .. {days[-1]} ({len(days)} day{'s' if len(days) != 1 else ''})"


def published_days(paths: HomePaths, name: str = RECOMMENDATIONS) -> list[date]:
    """The UTC days with a published snapshot ``name``, ascending."""
    folder = paths.published / DAYS_FOLDER
    if not folder.is_dir():
        return []
    days = []
    for entry in folder.iterdir():
        try:
            day = date.fromisoformat(entry.name)
        except ValueError:
            continue
        if (entry / f"{name}.parquet").exists():
            days.append(day)
    return sorted(days)


def remove_days_before(paths: HomePaths, cutoff: date) -> list[date]:
    """Delete the published days before ``cutoff`` (retention), except the current day; returns those removed."""
    keep = current_day(paths)
    removed = []
    for day in published_days(paths):
        if day < cutoff and day != keep:
            shutil.rmtree(day_folder(paths, day), ignore_errors=True)
            removed.append(day)
    return removed


def remove_dead_temporaries(folder: Path, name: str) -> list[Path]:
    """Remove the temporary files ``.<name>-<pid>-*.parquet.tmp`` of writers that are no longer running (killed
    before their move); a live writer's file is kept. Returns the removed paths."""
    removed = []
    for tmp in folder.glob(f".{name}-*-*.parquet.tmp"):
        pid = tmp.name[len(name) + 2 :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def read_snapshot(paths: HomePaths, name: str = RECOMMENDATIONS, day: date | None = None) -> pd.DataFrame:
    """The snapshot ``name`` of UTC day ``day`` (``None``: the current day, see :func:`snapshot_path`).

    Raises:
        FileNotFoundError: nothing published yet (or not for that day).
    """
    target = snapshot_path(paths, name, day)
    try:
        handle = open(target, "rb")  # noqa: SIM115  (closed by the `with handle` below, after the None check)
    except FileNotFoundError:
        when = f" of {day}" if day is not None else ""
        raise FileNotFoundError(f"no published {name}{when} at {target}: materialize `{name}` first") from None
    # One open file for the whole read: reading by path, pyarrow opens the file again for the data pages, and a
    # publish in between paired the old footer with the new file ("Couldn't deserialize thrift").
    with handle:
        return pd.read_parquet(handle)


MAX_ECHO_CHARS = 200  # at most this much of a caller's id is echoed back (HTTP error bodies, the CLI's errors)


def echoed_id(text: str) -> str:
    """``text`` cut to :data:`MAX_ECHO_CHARS` characters (marked with ``…``), for echoing a caller's id back; a lone
    surrogate (JSON ``"\\ud800"``, no UTF-8 text) is written as its escape, so the echo can be encoded."""
    text = text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
