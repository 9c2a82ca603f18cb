"""Helpers of the reliability tests: child processes run as users run them (``dagster asset materialize``), and a
toy warehouse whose trained champion the Dagster assets publish."""

import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from recsys_pipeline.content.features import build_item_features
from recsys_pipeline.data import warehouse
from recsys_pipeline.data.schema import ITEM_CATALOG
from recsys_pipeline.definitions import build_definitions
from recsys_pipeline.resources import ModelOverrides, TrainingResource, resources_for_home
from recsys_pipeline.settings import BUNDLED_FIRST_DAY, HomePaths, Settings, get_settings

# The toy data's one UTC day (tests/conftest.py: every toy interaction is on 2020-01-01): the daily partition the
# model assets run for on a toy warehouse (toy_settings), and the day after it (no events: the same data).
TOY_DAY, TOY_NEXT_DAY = "2020-01-01", "2020-01-02"

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).with_name("dagster"))


class Children:
    """The child processes one test started (killed at teardown if still running) and their environment."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.processes: list[subprocess.Popen] = []

    def materialize(
        self, select: str, partition: str | None = None, config_json: str | None = None, **extra_env: str
    ) -> subprocess.Popen:
        """``dagster asset materialize -m recsys_pipeline.definitions --select SELECT``, as a user types it."""
        command = [DAGSTER, "asset", "materialize", "-m", "recsys_pipeline.definitions", "--select", select]
        command += ["--partition", partition] if partition else []
        command += ["--config-json", config_json] if config_json else []
        return self.start(command, **extra_env)

    def start(self, command: list[str], **extra_env: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            command,
            env={**self.env, **extra_env},
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.processes.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


TOY_ENV = {"RECSYS_PARTITIONS_START": TOY_DAY, "RECSYS_PARTITIONS_END": TOY_NEXT_DAY}  # toy_settings, for children


def toy_settings() -> Settings:
    """Settings whose daily partitions are the toy data's day and the day after (:data:`TOY_ENV`)."""
    return get_settings(**{k.removeprefix("RECSYS_").lower(): date.fromisoformat(v) for k, v in TOY_ENV.items()})


def growing_settings() -> Settings:
    """Settings of a growing source (daily files): its partitions run from the bundled data's first day to yesterday,
    so the tests ingest daily files of any recent day as well as the bundled data's days."""
    return get_settings(source_kind="daily_files", partitions_start=BUNDLED_FIRST_DAY)


def wait_for(predicate, proc: subprocess.Popen, what: str, seconds: float = 240):
    """Poll ``predicate`` until it returns a truthy value; fail if ``proc`` ends first or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, f"{what}: the process ended first: {proc.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def child_env(paths: HomePaths, **extra: str) -> dict[str, str]:
    """The environment of a child process working on the home ``paths``."""
    return {
        **os.environ,
        "RECSYS_HOME": str(paths.root),
        "DAGSTER_HOME": str(paths.dagster_home),
        "RECSYS_DUCKDB_LOCK_TIMEOUT": "300",
        "PYTHONPATH": str(PROJECT_ROOT),
        **extra,
    }


EVALUATION = {"ops": {"model_evaluation": {"config": {"protocols": ["user_last_fraction"], "ablation_variants": []}}}}


def with_hits(interactions: pd.DataFrame) -> pd.DataFrame:
    """The toy interactions plus 4 of 6 globally popular items (i100..i105) per user at random hours, so that
    popularity is a real floor (NDCG@10 0.241 on this split; 0.366 for 6 epochs of training, 0.049 untrained)."""
    rng = np.random.default_rng(1)
    start = pd.Timestamp("2020-01-01")
    hits = [
        (user, f"i{100 + i}", start + pd.Timedelta(hours=int(rng.integers(0, 15)), minutes=30), 1.0)
        for user in interactions["user_id"].unique()
        for i in rng.choice(6, size=4, replace=False)
    ]
    both = pd.concat([interactions, pd.DataFrame(hits, columns=interactions.columns)])
    return both.drop_duplicates(["user_id", "item_id"]).sort_values(["user_id", "timestamp"]).reset_index(drop=True)


def toy_warehouse(paths: HomePaths, toy) -> None:
    """The toy interactions (with popular hits), a catalog of the toy items and their text vectors, and
    ``item_features`` built from them, as the ingestion and content assets would leave the warehouse."""
    features, interactions = toy.features(), with_hits(toy.interactions())
    ids = features.item_ids
    genres = [[f"g{int(row.argmax())}"] for row in features.genres]
    catalog = pd.DataFrame(
        {
            "item_id": ids,
            "title": [f"Toy {i}" for i in ids],
            "genres": genres,
            "year": features.year,
            "tags_text": "",
            "text": [f"Toy {i}" for i in ids],
            "image_uri": None,
            "audio_uri": None,
            "added_at": date.fromisoformat(TOY_DAY),
        }
    )
    text = features.modalities["text"]
    with warehouse.session(paths.warehouse) as con:
        with warehouse.transaction(con, "interactions"):
            warehouse.insert_frame(con, "interactions", interactions)
        warehouse.replace_table(con, ITEM_CATALOG, catalog)
        warehouse.sync_embeddings(con, "text_embeddings", "toy", ids, ids, lambda positions: text[positions])
        build_item_features(con)


def materialize(defs, names: list[str], with_check: bool, day: str = TOY_DAY) -> dg.ExecuteInProcessResult:
    """One run of the assets ``names`` (and, ``with_check``, the gate) for the daily partition ``day``."""
    selection = dg.AssetSelection.assets(*names)
    if with_check:
        selection = selection | dg.AssetSelection.checks_for_assets("model_evaluation")
    return dg.materialize(
        [defs.get_assets_def(k) for k in defs.resolve_all_asset_keys()] + list(defs.asset_checks),
        resources=defs.resources,
        selection=selection,
        partition_key=day,
        run_config=EVALUATION if "model_evaluation" in names else {},
        raise_on_error=False,
    )


def definitions_training(home, settings: Settings | None = None, **model) -> dg.Definitions:
    """The code location on the home ``home`` (partitions: ``settings``, default the toy data's day) with a small
    CPU training configured by ``model`` (``ModelConfig`` overrides)."""
    training = TrainingResource(model=ModelOverrides(**model), accelerator="cpu", devices="1", num_threads=1)
    return build_definitions(settings or toy_settings(), resources=resources_for_home(str(home), training=training))


def race_for_one_slot(storage_a, storage_b, pool: str = "duckdb") -> None:
    """Two claimers of the one slot of ``pool`` both read it free before either writes (the interleaving that let
    two runs' DuckDB steps run at once): assert the second writer is told BLOCKED and the slot holds the first
    writer's step. ``storage_a`` / ``storage_b``: two event log storages of one instance (as two processes hold),
    whose ``_claim_concurrency_slot`` is under test. Disposes both."""
    import threading

    from dagster._utils.concurrency import ConcurrencySlotStatus
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    storages = {"a": storage_a, "b": storage_b}
    storage_a.set_concurrency_slots(pool, 1)
    a_has_read, b_is_done = threading.Event(), threading.Event()

    def hold_a_before_its_write(conn, cursor, statement, *args):
        if threading.current_thread().name == "a" and statement.lstrip().upper().startswith("UPDATE CONCURRENCY_SLOTS"):
            a_has_read.set()
            assert b_is_done.wait(30)

    status = {}

    def claim(name: str) -> None:
        if name == "b":
            assert a_has_read.wait(30)
        status[name] = storages[name]._claim_concurrency_slot(pool, f"run-{name}", f"step-{name}")
        if name == "b":
            b_is_done.set()

    event.listen(Engine, "before_cursor_execute", hold_a_before_its_write)
    try:
        threads = [threading.Thread(target=claim, args=(n,), name=n) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        event.remove(Engine, "before_cursor_execute", hold_a_before_its_write)
    try:
        assert status == {"b": ConcurrencySlotStatus.CLAIMED, "a": ConcurrencySlotStatus.BLOCKED}, status
        claimed = storage_a.get_concurrency_info(pool).claimed_slots
        assert [(s.run_id, s.step_key) for s in claimed] == [("run-b", "step-b")], claimed
    finally:
        for storage in storages.values():
            storage.dispose()
