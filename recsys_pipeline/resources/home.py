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
    """The folder every file of the product goes under (unset: ``RECSYS_HOME``, default ``./.recsys``)."""

    root: str | None = None

    def paths(self) -> HomePaths:
        """The home's paths, the folders created (``settings.ensure_home``)."""
        paths = HomePaths.at(self.root) if self.root else get_settings().paths
        return ensure_home(paths)


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
