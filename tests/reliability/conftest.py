"""Fixtures for tests that run the product as users do, in real child processes (``dagster asset materialize``)."""

import dagster as dg
import pytest

from recsys_pipeline.data import warehouse
from recsys_pipeline.data.catalog import build_item_catalog
from recsys_pipeline.data.schema import ITEM_CATALOG
from recsys_pipeline.data.sources import MovieLensSource
from recsys_pipeline.settings import HomePaths, ensure_home
from tests.reliability.support import (
    TOY_ENV,
    Children,
    child_env,
    definitions_training,
    materialize,
    toy_warehouse,
)


@pytest.fixture
def cli_home(tmp_path, movielens_slice):
    """A home with a MovieLens slice (2018-09-01 .. 2018-09-24), its item_catalog written and the Dagster
    instance created: ``(paths, children, data folder)``."""
    data = movielens_slice(tmp_path / "ml", "2018-09-01", "2018-09-25")
    paths = ensure_home(HomePaths.at(tmp_path / "home"))
    children = Children(child_env(paths, RECSYS_MOVIELENS_PATH=str(data), RECSYS_PARTITIONS_START="2018-09-01"))
    with warehouse.session(paths.warehouse) as con:
        warehouse.replace_table(con, ITEM_CATALOG, build_item_catalog(*MovieLensSource(str(data)).read_catalog()))
    with dg.DagsterInstance.from_config(str(paths.dagster_home)):  # create its SQLite storage before the children
        pass
    yield paths, children, data
    children.kill_all()  # only the processes this test started


@pytest.fixture
def champion_home(tmp_path, toy, monkeypatch):
    """A home whose champion v1, trained on toy data through the Dagster assets, is published (20 items per user):
    ``(paths, children)``."""
    home = tmp_path / "home"
    monkeypatch.setenv("RECSYS_HOME", str(home))
    paths = ensure_home(HomePaths.at(home))
    toy_warehouse(paths, toy)
    night = ["recommender_model", "model_evaluation", "recommendations"]
    assert materialize(definitions_training(home, **{**toy.FAST, "max_epochs": 6}), night, with_check=True).success
    children = Children(child_env(paths, **TOY_ENV))  # the code location's partitions: the toy data's days
    yield paths, children
    children.kill_all()
