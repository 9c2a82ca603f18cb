"""Published snapshots (no Dagster import): what readers (`recsys recommend`, `recsys serve`) use instead of the
DuckDB file, so that a materialization holding DuckDB's single-writer lock never blocks or breaks them.

A snapshot is one Parquet file under ``$RECSYS_HOME/published/``, written to a temporary file in the same folder,
fsynced, then moved into place with ``os.replace`` (atomic on POSIX): a reader sees the previous file or the new
one, never a partial one. A writer killed before the move leaves only its temporary file (named with its process
id); the next publish removes those of dead processes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pandas as pd

from recsys_pipeline.settings import HomePaths, pause_point

RECOMMENDATIONS = "recommendations"
ITEMS = "items"  # item_id, title, users, rank: titles and the popularity fallback (serving.publish.items_snapshot)


def snapshot_path(paths: HomePaths, name: str = RECOMMENDATIONS) -> Path:
    """``$RECSYS_HOME/published/<name>.parquet``."""
    return paths.published / f"{name}.parquet"


def publish_snapshot(paths: HomePaths, frame: pd.DataFrame, name: str = RECOMMENDATIONS) -> Path:
    """Atomically replace the snapshot ``name`` with ``frame``; returns its path.

    Raises:
        OSError: the folder is not writable (the previous snapshot is left untouched).
    """
    target = snapshot_path(paths, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(target.parent, name)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-{os.getpid()}-", suffix=".parquet.tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            frame.to_parquet(handle, index=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a server running as another user must read it
        pause_point(f"published/{name}.before_replace")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


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


def read_snapshot(paths: HomePaths, name: str = RECOMMENDATIONS) -> pd.DataFrame:
    """The current snapshot ``name``.

    Raises:
        FileNotFoundError: nothing has been published yet.
    """
    target = snapshot_path(paths, name)
    try:
        handle = open(target, "rb")  # noqa: SIM115  (closed by the `with handle` below, after the None check)
    except FileNotFoundError:
        raise FileNotFoundError(f"no published {name} at {target}: materialize `{name}` first") from None
    # One open file for the whole read: reading by path, pyarrow opens the file again for the data pages, and a
    # publish in between paired the old footer with the new file ("Couldn't deserialize thrift").
    with handle:
        return pd.read_parquet(handle)
