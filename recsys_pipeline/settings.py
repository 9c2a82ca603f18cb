"""Where the product writes: one home folder, ``RECSYS_HOME`` (default ``./.recsys``).

Layout under the home::

    warehouse.duckdb      DuckDB warehouse (every table)
    mlflow.db             MLflow tracking + registry store (SQLite)
    mlartifacts/          MLflow artifacts
    dagster/              Dagster instance (DAGSTER_HOME)
    published/            read-only snapshots for serving (``recommendations.parquet``), replaced atomically
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = ".recsys"
BUNDLED_MOVIELENS_DIR = Path(__file__).parent / "data" / "ml-latest-small"


@dataclass(frozen=True)
class HomePaths:
    """Every path the product writes to, derived from one home folder."""

    root: Path

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    @property
    def published(self) -> Path:
        return self.root / "published"

    def ensure(self) -> "HomePaths":
        """Create the folders (idempotent) and write the Dagster instance config if missing."""
        self.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        cfg = self.dagster_home / "dagster.yaml"
        if not cfg.exists():
            project_cfg = Path(__file__).resolve().parent.parent / "dagster.yaml"
            text = project_cfg.read_text() if project_cfg.exists() else DAGSTER_YAML
            cfg.write_text(text)
        return self


# Used when the package is installed without the project's dagster.yaml beside it.
DAGSTER_YAML = """\
# Dagster instance settings for recsys_pipeline.
# `recsys` copies this file to $RECSYS_HOME/dagster/dagster.yaml and sets DAGSTER_HOME there, so every run,
# schedule tick and event is stored under the project home (SQLite) and shows in the UI.
# recsys_pipeline/settings.py holds the same text (DAGSTER_YAML) for installs without this file: keep them equal.
telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
concurrency:
  runs:
    max_concurrent_runs: 2
  pools:
    # DuckDB lets one process write the warehouse file at a time. Every asset that writes it is in the `duckdb`
    # pool; one slot per pool serializes those steps across runs (a backfill and a schedule tick) and within a
    # multiprocess run. Op granularity: also enforced for in-process runs (`recsys demo`), not only queued ones.
    default_limit: 1
    granularity: op
run_monitoring:
  # A run that ended without freeing its slot (its process was killed, then the run was marked failed or
  # canceled in the UI) gets the slot back after this many seconds (needs `dagster-daemon`, run by `dagster dev`).
  enabled: true
  free_slots_after_run_end_seconds: 60
"""


def home_paths(home: str | os.PathLike[str] | None = None) -> HomePaths:
    """Resolve the home folder: the argument, else ``$RECSYS_HOME``, else ``./.recsys`` (made absolute)."""
    root = Path(home or os.environ.get("RECSYS_HOME") or DEFAULT_HOME).expanduser().resolve()
    return HomePaths(root)
