"""One ``Settings`` object: every environment variable the product reads, listed once, read when asked for.

Nothing here runs at import. :func:`get_settings` reads the environment each time it is called (a command, a run,
a code-location load), so a changed variable takes effect on the next run without a restart.

Everything the product writes goes under one home folder (``RECSYS_HOME``, default ``./.recsys``)::

    warehouse.duckdb      DuckDB warehouse (every table)
    mlflow.db             MLflow tracking + registry store (SQLite; the ``postgres`` profile: on PostgreSQL instead)
    mlartifacts/          MLflow artifacts
    dagster/              Dagster instance (DAGSTER_HOME), its dagster.yaml written from the profile's template
    published/            read-only snapshots for serving, replaced atomically
    models/               converted encoder weights (cache)

Profiles (``RECSYS_PROFILE``): ``sqlite`` (default) keeps the Dagster instance and the MLflow store in SQLite files
under the home, for one machine; ``postgres`` puts both on the PostgreSQL server of ``RECSYS_POSTGRES_URL`` (the
home keeps the warehouse, the artifacts and the published snapshots), so runs can execute in several processes or
on several machines.

This is the lowest layer: it imports nothing else from the package.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "Settings",
    "SettingsError",
    "HomePaths",
    "get_settings",
    "ensure_home",
    "library_environment",
    "instance_profile",
    "BUNDLED_MOVIELENS_DIR",
    "BUNDLED_FIRST_DAY",
    "BUNDLED_LAST_DAY",
    "DAGSTER_YAML_TEMPLATE",
    "DAGSTER_YAML_TEMPLATES",
    "POSTGRES_URL_SCHEME",
    "MLFLOW_SCHEMA",
    "pause_point",
]

BUNDLED_MOVIELENS_DIR = Path(__file__).parent / "data" / "ml-latest-small"
# First and last UTC day of a rating in the bundled ml-latest-small (GroupLens, 2018 release).
BUNDLED_FIRST_DAY = date(1996, 3, 29)
BUNDLED_LAST_DAY = date(2018, 9, 24)
DAGSTER_YAML_TEMPLATE = Path(__file__).with_name("dagster.yaml")
# the template of the home's dagster.yaml per profile (RECSYS_PROFILE)
DAGSTER_YAML_TEMPLATES = {
    "sqlite": DAGSTER_YAML_TEMPLATE,
    "postgres": Path(__file__).with_name("dagster-postgres.yaml"),
}
# psycopg2 is the driver dagster-postgres installs; a bare postgresql:// picks SQLAlchemy's default driver, which is
# psycopg (3) from SQLAlchemy 2.1 on and is not installed by the `postgres` extra
POSTGRES_URL_SCHEME = "postgresql+psycopg2://"
# the PostgreSQL schema of the MLflow store on the postgres profile: Dagster and MLflow both have a table `runs`
MLFLOW_SCHEMA = "mlflow"
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
    profile: Literal["sqlite", "postgres"] = Field(
        "sqlite",
        description="where the Dagster instance and the MLflow store live: sqlite (files under the home, one "
        "machine) or postgres (the server of RECSYS_POSTGRES_URL)",
    )
    postgres_url: str | None = Field(
        None,
        validate_default=True,
        repr=False,
        description="postgres profile: the server and database, postgresql+psycopg2://user[:password]@host[:port]/db "
        "(libpq fills what it leaves out from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE)",
    )
    executor: Literal["in_process", "multiprocess", "k8s"] | None = Field(
        None,
        description="the code location's executor: in_process (unset on sqlite), multiprocess (unset on postgres: "
        "Dagster's multi_or_in_process executor, a process per step), k8s (dagster-k8s k8s_job_executor, a pod per "
        "step; postgres only)",
    )
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
    user_tags_in_text: bool = Field(
        False,
        description="the item text the encoder reads also carries the users' tags (off: a new item has none yet, "
        "and a model trained with them ranks new items worse, see data.catalog.build_item_catalog)",
    )
    text_encoder: Literal["frozen", "adapted"] = Field(
        "frozen",
        description="text_embeddings' encoder: the published model (frozen) or text_encoder_adaptation's (adapted)",
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

    @field_validator("api_key")
    @classmethod
    def _api_key_fits_a_header(cls, key: str | None) -> str | None:
        # HTTP header values arrive as latin-1 bytes: a key outside visible ASCII could never match (never echoed)
        if key is not None and not all("!" <= c <= "~" for c in key):
            raise ValueError("the API key must be visible ASCII characters (no spaces, no other alphabets)")
        return key

    @field_validator("postgres_url")
    @classmethod
    def _postgres_url_for_the_profile(cls, url: str | None, info: ValidationInfo) -> str | None:
        # messages never repeat the URL: it may hold a password
        if info.data.get("profile") == "postgres" and not url:
            raise ValueError(
                f"RECSYS_PROFILE=postgres needs RECSYS_POSTGRES_URL ({POSTGRES_URL_SCHEME}user@host:port/db, or "
                f"{POSTGRES_URL_SCHEME} alone to take every piece from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE)"
            )
        if url and not url.startswith(POSTGRES_URL_SCHEME):
            raise ValueError(
                f"must start with {POSTGRES_URL_SCHEME} (psycopg2, the driver the postgres extra installs; "
                f"found {url.split('://', 1)[0]!r}://)"
            )
        return url

    @field_validator("executor")
    @classmethod
    def _executor_for_the_profile(cls, executor: str | None, info: ValidationInfo) -> str | None:
        if executor == "k8s" and info.data.get("profile") != "postgres":
            raise ValueError("k8s needs RECSYS_PROFILE=postgres (pods share no SQLite file)")
        return executor

    @property
    def paths(self) -> HomePaths:
        """The home's paths (the home made absolute; nothing is created)."""
        return HomePaths.at(self.home)

    @property
    def resolved_executor(self) -> str:
        """``executor``, or the profile's default: ``in_process`` on sqlite, ``multiprocess`` on postgres."""
        return self.executor or ("multiprocess" if self.profile == "postgres" else "in_process")

    def mlflow_tracking_uri(self, paths: HomePaths | None = None) -> str:
        """The MLflow tracking + registry store: on the postgres profile the database of ``RECSYS_POSTGRES_URL``,
        schema :data:`MLFLOW_SCHEMA` (``options=-csearch_path=mlflow`` added to the URL: Dagster's tables are in the
        database's default schema and both have a ``runs`` table; ``registry.tracking.ensure_store`` creates the
        schema and MLflow's tables on first use); else the SQLite file ``mlflow.db`` of ``paths`` (default: this
        home)."""
        if self.profile == "postgres":
            return _with_search_path(str(self.postgres_url), MLFLOW_SCHEMA)
        return (paths or self.paths).mlflow_tracking_uri

    def image_roots(self) -> list[Path]:
        """``image_root`` split on ``os.pathsep``, each made absolute."""
        return _split_roots(self.image_root)

    def audio_roots(self) -> list[Path]:
        """``audio_root`` split on ``os.pathsep``, each made absolute."""
        return _split_roots(self.audio_root)

    def missing_paths(self) -> list[str]:
        """``RECSYS_X=value: no such folder`` (or file) for each path setting a run would read that names nothing:
        the source's (``movielens_path`` for a MovieLens source; ``events_dir`` and ``catalog_path`` for daily
        files), ``image_weights``, and each folder of ``image_root`` and ``audio_root``. Empty when all exist or
        are unset. Checked before a run starts, so a typo is one line, not a failed step."""
        wanted: list[tuple[str, Path | None, bool]] = [("image_weights", self.image_weights, False)]
        if self.source_kind == "movielens":
            wanted.append(("movielens_path", self.movielens_path, True))
        else:
            wanted += [("events_dir", self.events_dir, True), ("catalog_path", self.catalog_path, False)]
        wanted += [("image_root", root, True) for root in self.image_roots()]
        wanted += [("audio_root", root, True) for root in self.audio_roots()]
        missing = []
        for name, path, folder in wanted:
            if path is None or (Path(path).is_dir() if folder else Path(path).is_file()):
                continue
            missing.append(f"{ENV_PREFIX}{name.upper()}={path}: no such {'folder' if folder else 'file'}")
        return missing

    @classmethod
    def variables(cls) -> dict[str, str]:
        """``{RECSYS_X: description}`` for every setting (what the README's configuration table lists)."""
        return {ENV_PREFIX + name.upper(): field.description or "" for name, field in cls.model_fields.items()}


def _with_search_path(url: str, schema: str) -> str:
    """``url`` with libpq's ``options`` query parameter setting ``search_path`` to ``schema`` (kept after any options
    the URL already has)."""
    base, _, query_text = url.partition("?")
    query = parse_qsl(query_text, keep_blank_values=True)
    options = " ".join([v for k, v in query if k == "options"] + [f"-csearch_path={schema}"])
    return base + "?" + urlencode([(k, v) for k, v in query if k != "options"] + [("options", options)])


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
            field = Settings.model_fields.get(name)
            if value and field is not None and field.repr is False:  # a secret (a password in a URL): never shown
                value = "***"
            problems.append(f"{ENV_PREFIX}{name.upper()}={value!r}: {error['msg'].removeprefix('Value error, ')}")
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


def instance_profile(config: Path) -> str:
    """The profile a ``dagster.yaml`` serves: ``postgres`` when any of its storages is Dagster's PostgreSQL storage
    (the unified ``storage: postgres:`` block or a ``dagster_postgres`` class), else ``sqlite``."""
    data = yaml.safe_load(config.read_text()) or {}
    if "postgres" in (data.get("storage") or {}):
        return "postgres"
    storages = [data.get(k) or {} for k in ("run_storage", "event_log_storage", "schedule_storage")]
    return "postgres" if any(str(s.get("module", "")).startswith("dagster_postgres") for s in storages) else "sqlite"


def ensure_home(paths: HomePaths, profile: str | None = None) -> HomePaths:
    """Create the home's folders (idempotent) and write ``dagster/dagster.yaml`` from the template of ``profile``
    (default: ``RECSYS_PROFILE``; :data:`DAGSTER_YAML_TEMPLATES`, ``{dagster_home}`` replaced by this home's absolute
    ``dagster`` folder) when missing (an existing file is the user's: never overwritten). Returns ``paths``.

    Called by the commands and by a run that needs the home, never at import.

    A home moved or copied to another folder keeps the absolute ``base_dir`` of its SQLite event log (the template's
    ``{dagster_home}/history/runs``), so its runs' events would go to the old folder (a copy writing into the
    original's history): that one value is rewritten to this home's folder (:func:`_repoint_event_log`).

    Raises:
        SettingsError: the existing ``dagster.yaml`` serves the other profile (a home made on SQLite, then run with
            ``RECSYS_PROFILE=postgres``, or the reverse): the instance and the MLflow store would part ways.
    """
    profile = profile or get_settings().profile
    paths.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    paths.dagster_home.mkdir(parents=True, exist_ok=True)
    config = paths.dagster_home / "dagster.yaml"
    if not config.exists():
        template = DAGSTER_YAML_TEMPLATES[profile]
        config.write_text(template.read_text().replace("{dagster_home}", str(paths.dagster_home.resolve())))
    elif (found := instance_profile(config)) != profile:
        raise SettingsError(
            f"RECSYS_PROFILE={profile!r} but {config} is the Dagster instance of the {found!r} profile: set "
            f"RECSYS_PROFILE={found}, or move that file away to have the {profile!r} template written (its run "
            "history stays where it is)"
        )
    else:
        _repoint_event_log(config, paths.dagster_home.resolve())
    return paths


def _repoint_event_log(config: Path, dagster_home: Path) -> None:
    """Rewrite the SQLite event log's ``base_dir`` in ``config`` to ``<dagster_home>/history/runs`` when it is the
    template's value written for another folder (``<other>/dagster/history/runs``: the home was moved or copied). Any
    other value (set by hand) is left alone. The file is replaced atomically."""
    text = config.read_text()
    storage = (yaml.safe_load(text) or {}).get("event_log_storage") or {}
    base_dir = (storage.get("config") or {}).get("base_dir")
    if storage.get("class") != "BatchedSqliteEventLogStorage" or not isinstance(base_dir, str):
        return
    old = Path(base_dir)
    if old.parts[-2:] != ("history", "runs") or old.parent.parent.name != "dagster":
        return
    if old.parent.parent == dagster_home:
        return
    if text.count(f'"{base_dir}"') != 1:
        return  # not the template's one quoted line: the user's to fix
    tmp = config.with_suffix(".yaml.tmp")
    try:
        tmp.write_text(text.replace(f'"{base_dir}"', f'"{dagster_home / "history" / "runs"}"'))
        os.replace(tmp, config)
    except OSError:  # a read-only home: no run can start there anyway (the commands that write refuse it first)
        tmp.unlink(missing_ok=True)


def library_environment(paths: HomePaths) -> None:
    """Defaults for the libraries' own state, set before they are imported (an explicit value wins): MLflow 3's
    usage telemetry off (an id file under ``~/.config`` and reports sent over the network: no network at run time)
    and matplotlib's font cache (Lightning imports matplotlib) under the home instead of ``~/.cache``, unless the
    home exists and cannot be written (a read-only home: matplotlib would warn and use a temporary folder anyway)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    cache = paths.root / "cache" / "matplotlib"
    existing = next((p for p in (cache, *cache.parents) if p.exists()), None)
    if existing is None or os.access(existing, os.W_OK):
        os.environ.setdefault("MPLCONFIGDIR", str(cache))
