"""One ``Settings`` object: every environment variable the product reads, listed once, read when asked for.

Nothing here runs at import. :func:`get_settings` reads the environment each time it is called (a command, a run,
a code-location load), so a changed variable takes effect on the next run without a restart.

Everything the product writes goes under one home folder (``RECSYS_HOME``, default ``./.recsys``)::

    warehouse.duckdb      DuckDB warehouse (every table)
    mlflow.db             MLflow tracking + registry store (SQLite)
    mlartifacts/          MLflow artifacts
    dagster/              Dagster instance (DAGSTER_HOME), its dagster.yaml written from one template
    published/            read-only snapshots for serving, replaced atomically
    models/               converted encoder weights (cache)

This is the lowest layer: it imports nothing else from the package.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "Settings",
    "SettingsError",
    "HomePaths",
    "get_settings",
    "ensure_home",
    "BUNDLED_MOVIELENS_DIR",
    "BUNDLED_FIRST_DAY",
    "BUNDLED_LAST_DAY",
    "DAGSTER_YAML_TEMPLATE",
    "pause_point",
]

BUNDLED_MOVIELENS_DIR = Path(__file__).parent / "data" / "ml-latest-small"
# First and last UTC day of a rating in the bundled ml-latest-small (GroupLens, 2018 release).
BUNDLED_FIRST_DAY = date(1996, 3, 29)
BUNDLED_LAST_DAY = date(2018, 9, 24)
DAGSTER_YAML_TEMPLATE = Path(__file__).with_name("dagster.yaml")
ENV_PREFIX = "RECSYS_"


class SettingsError(ValueError):
    """An environment variable holds a value the product cannot use; the message names the variable."""


class Settings(BaseSettings):
    """The product's configuration, from ``RECSYS_*`` environment variables (field ``x`` is ``RECSYS_X``).

    An empty variable counts as unset. Resources, the CLI and the code location build their configuration
    from this object; defaults of model hyperparameters live in ``ModelConfig``, not here.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, extra="ignore")

    home: Path = Field(Path(".recsys"), description="home folder: every file the product writes")
    source_kind: Literal["movielens", "daily_files"] = Field(
        "movielens", description="where events come from: a GroupLens release or a folder of daily files"
    )
    movielens_path: Path | None = Field(
        None, description="an extracted GroupLens release (ml-latest, ml-25m, ml-1m, ml-100k); unset = bundled"
    )
    events_dir: Path | None = Field(None, description="daily_files: folder of YYYY-MM-DD.csv|parquet|jsonl")
    catalog_path: Path | None = Field(None, description="daily_files: the item catalog file")
    partitions_start: date | None = Field(
        None,
        description="first daily partition (YYYY-MM-DD); default: the bundled data's first day, or the "
        "first file name of the daily-files folder",
    )
    partitions_end: date | None = Field(
        None,
        description="last daily partition (YYYY-MM-DD) of a static source; default: the bundled data's last day "
        "(2018-09-24) for the bundled data, else yesterday (UTC): the partitions grow by a day each day",
    )
    image_root: str = Field("", description="folders images may be read from, os.pathsep-separated")
    image_pattern: str | None = Field(
        None, description="image file name for items without image_uri, with {item_id} (unset: {item_id}.jpg)"
    )
    image_model: str | None = Field(None, description="timm architecture; unset = packaged EfficientNet-Lite0")
    image_weights: Path | None = Field(None, description="local timm-compatible weights file for image_model")
    audio_root: str = Field("", description="folders audio may be read from, os.pathsep-separated")
    audio_pattern: str | None = Field(
        None, description="audio file name for items without audio_uri, with {item_id} (unset: URIs only)"
    )
    audio_encoder: Literal["librosa", "crepe"] | None = Field(None, description="audio embedding (unset: librosa)")
    accelerator: str | None = Field(None, description="Lightning accelerator: auto (unset), cpu, gpu")
    devices: str | None = Field(None, description="Lightning devices: auto (unset), a count (2) or a list (0,1)")
    strategy: str | None = Field(None, description="Lightning strategy: auto (unset), ddp")
    precision: str | None = Field(None, description="Lightning precision: 32-true (unset), 16-mixed, bf16-mixed")
    num_nodes: int | None = Field(None, ge=1, description="Lightning num_nodes for multi-node DDP (unset: 1)")
    max_epochs: int | None = Field(
        None, ge=1, description="training epochs, the cap of early stopping when it is on (unset: ModelConfig's)"
    )
    nightly_hour_utc: int = Field(2, ge=0, le=23, description="hour (UTC) of the nightly_retrain schedule")
    training_window_days: int | None = Field(
        None,
        ge=1,
        description="days of interactions the model of day D is trained and evaluated on: D and the days before it "
        "(unset: every day up to D)",
    )
    retention_days: int = Field(
        30,
        ge=1,
        description="days of daily outputs kept (recommendations, evaluation tables, published snapshots), counted "
        "back from the day being materialized",
    )
    warm_start: bool = Field(
        False,
        description="recommender_model starts from the champion's weights (a few epochs on every interaction) "
        "instead of a full retrain; benchmarks/results/nightly.md compares the two",
    )
    duckdb_lock_timeout: float = Field(
        300.0,
        ge=0,
        allow_inf_nan=False,
        description="seconds a process waits for another's DuckDB write lock before a clear error",
    )
    pool_wait_timeout: float = Field(
        3600.0,
        gt=0,
        allow_inf_nan=False,
        description="seconds a Dagster step waits for the duckdb pool slot of a live run before its run fails, "
        "naming the holding run (slots of dead runs are freed at once)",
    )
    api_key: str | None = Field(
        None,
        description="when set, `recsys serve` answers only requests with header X-API-Key equal to it (401 otherwise)",
        repr=False,
    )
    dagster_sqlite_sync: Literal["off", "full"] = Field(
        "off", description="SQLite fsync of the local Dagster instance (off: faster, see README Known limits)"
    )
    fault_pause: str | None = Field(
        None,
        description="crash tests only: the pause point (e.g. raw_events.before_commit) where a write stops, "
        "after touching RECSYS_FAULT_READY, until the process is killed",
    )
    fault_ready: Path | None = Field(None, description="crash tests only: file touched when the pause point is hit")

    @property
    def paths(self) -> HomePaths:
        """The home's paths (the home made absolute; nothing is created)."""
        return HomePaths.at(self.home)

    def image_roots(self) -> list[Path]:
        """``image_root`` split on ``os.pathsep``, each made absolute."""
        return _split_roots(self.image_root)

    def audio_roots(self) -> list[Path]:
        """``audio_root`` split on ``os.pathsep``, each made absolute."""
        return _split_roots(self.audio_root)

    @classmethod
    def variables(cls) -> dict[str, str]:
        """``{RECSYS_X: description}`` for every setting (what the README's configuration table lists)."""
        return {ENV_PREFIX + name.upper(): field.description or "" for name, field in cls.model_fields.items()}


def _split_roots(text: str) -> list[Path]:
    return [Path(r).expanduser().resolve() for r in text.split(os.pathsep) if r.strip()]


def get_settings(**overrides: object) -> Settings:
    """The settings from the environment now, with ``overrides`` (field names) on top.

    Raises:
        SettingsError: a variable's value is invalid; the message names the variable and what is expected.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "?"
            value = os.environ.get(ENV_PREFIX + name.upper(), error.get("input"))
            problems.append(f"{ENV_PREFIX}{name.upper()}={value!r}: {error['msg']}")
        raise SettingsError("; ".join(problems)) from None


def pause_point(name: str) -> None:
    """Deterministic fault injection: when ``RECSYS_FAULT_PAUSE`` equals ``name``, touch ``RECSYS_FAULT_READY``
    and block until the process is killed; otherwise return at once.

    Writers call it at their most fragile moment: ``<table>.before_commit`` inside every warehouse transaction
    (every statement run, nothing committed), ``published/<name>.before_replace`` after a snapshot's temporary
    file is fsynced and before it is moved into place. A test SIGKILLs the paused process and checks that the
    previous good state is intact (``tests/reliability/test_fault_injection.py``).
    """
    wanted = os.environ.get(ENV_PREFIX + "FAULT_PAUSE")  # read directly: this runs on every write
    if not wanted or wanted != name:
        return
    ready = get_settings().fault_ready
    if ready is not None:
        ready.touch()
    while True:  # pragma: no cover  (ends with the process)
        time.sleep(3600)


@dataclass(frozen=True)
class HomePaths:
    """Every path the product writes to, derived from one home folder (nothing is created here)."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> HomePaths:
        """The paths of the home folder ``root`` (made absolute)."""
        return cls(Path(root).expanduser().resolve())

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

    @property
    def model_cache(self) -> Path:
        return self.root / "models"


def ensure_home(paths: HomePaths) -> HomePaths:
    """Create the home's folders (idempotent) and write ``dagster/dagster.yaml`` from the package's template
    (``{dagster_home}`` replaced by this home's absolute ``dagster`` folder) when missing (an existing file is the
    user's: never overwritten). Returns ``paths``.

    Called by the commands and by a run that needs the home, never at import.
    """
    paths.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    paths.dagster_home.mkdir(parents=True, exist_ok=True)
    config = paths.dagster_home / "dagster.yaml"
    if not config.exists():
        text = DAGSTER_YAML_TEMPLATE.read_text().replace("{dagster_home}", str(paths.dagster_home.resolve()))
        config.write_text(text)
    return paths
