"""The home folder and the DuckDB warehouse in it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb

from recsys_pipeline.data import warehouse
from recsys_pipeline.settings import HomePaths, ensure_home, get_settings


class HomeResource(dg.ConfigurableResource):
    """The folder every file of the product goes under (unset: ``RECSYS_HOME``, default ``./.recsys``), and how
    many days of daily outputs it keeps (``retention_days``: recommendations, evaluation tables and published
    snapshots, counted back from the day being materialized; unset: ``RECSYS_RETENTION_DAYS``, default 30)."""

    root: str | None = None
    retention_days: int | None = None

    def paths(self) -> HomePaths:
        """The home's paths, the folders created (``settings.ensure_home``)."""
        paths = HomePaths.at(self.root) if self.root else get_settings().paths
        return ensure_home(paths)

    def resolved_retention_days(self) -> int:
        """Days of daily outputs kept (at least 1).

        Raises:
            ValueError: ``retention_days`` below 1.
        """
        days = self.retention_days if self.retention_days is not None else get_settings().retention_days
        if days < 1:
            raise ValueError(f"retention_days must be at least 1, got {days}")
        return days


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file (unset: ``<home>/warehouse.duckdb``)."""

    path: str | None = None

    def file(self) -> Path:
        return Path(self.path) if self.path else get_settings().paths.warehouse

    @contextlib.contextmanager
    def session(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection (``data.warehouse.session``: bounded lock wait, always closed)."""
        with warehouse.session(self.file(), read_only=read_only) as con:
            yield con
