"""The instance's batched SQLite event log stores the same records as Dagster's own, one event at a time."""

import dagster as dg
import pytest

from recsys_pipeline.instance import BatchedSqliteEventLogStorage

PARTITIONS = dg.DailyPartitionsDefinition(start_date="2020-01-01", end_date="2020-01-31")


@dg.asset(partitions_def=PARTITIONS, backfill_policy=dg.BackfillPolicy.single_run())
def days(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"partitions": len(context.partition_keys)})


@dg.asset(partitions_def=PARTITIONS, backfill_policy=dg.BackfillPolicy.single_run(), deps=[days])
def later_days(context: dg.AssetExecutionContext) -> None:
    return None


def _run_range(dagster_home, monkeypatch, batched: bool):
    """Materialize the 30 partitions of both assets in one run; returns what the instance then reads back."""
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "7" if batched else "0")  # 7: batches end mid-range too
    monkeypatch.delenv("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", raising=False)  # one planned per partition
    dagster_home.mkdir()
    storage = (
        "event_log_storage:\n  module: recsys_pipeline.instance\n  class: BatchedSqliteEventLogStorage\n"
        if batched
        else ""
    )
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n" + storage)
    instance = dg.DagsterInstance.get()
    assert isinstance(instance.event_log_storage, BatchedSqliteEventLogStorage) == batched
    keys = PARTITIONS.get_partition_keys()
    job = dg.Definitions(assets=[days, later_days], jobs=[dg.define_asset_job("j")]).resolve_job_def("j")
    tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
    result = job.execute_in_process(instance=instance, tags=tags)
    assert result.success
    out = {}
    for name in ("days", "later_days"):
        key = dg.AssetKey(name)
        records = instance.fetch_materializations(key, limit=100).records
        out[name] = {
            "partitions": sorted(instance.get_materialized_partitions(key)),
            "record_partitions": sorted(r.partition_key for r in records),
            "latest_partition": instance.get_latest_materialization_event(key).dagster_event.partition,
            "metadata": sorted({str(r.asset_materialization.metadata) for r in records}),
            "last_run": instance.get_latest_materialization_event(key).run_id == result.run_id,
        }
    for kind in (dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED):
        out[kind.value] = len(instance.all_logs(result.run_id, of_type=kind))
    out["ids_increase"] = [
        r.storage_id for r in instance.fetch_materializations(dg.AssetKey("days"), limit=100, ascending=True).records
    ]
    instance.dispose()
    return out, keys


def test_batched_event_log_matches_dagsters_own(tmp_path, monkeypatch):
    batches = []
    store_batch = BatchedSqliteEventLogStorage.store_event_batch

    def spy(self, events):
        batches.append(len(events))
        return store_batch(self, events)

    monkeypatch.setattr(BatchedSqliteEventLogStorage, "store_event_batch", spy)
    plain, keys = _run_range(tmp_path / "plain", monkeypatch, batched=False)
    batched, _ = _run_range(tmp_path / "batched", monkeypatch, batched=True)
    assert len(keys) == 30
    for name in ("days", "later_days"):
        assert batched[name]["partitions"] == plain[name]["partitions"] == keys
        assert batched[name]["record_partitions"] == keys
        assert batched[name]["latest_partition"] == plain[name]["latest_partition"] == keys[-1]
        assert batched[name]["metadata"] == plain[name]["metadata"]
        assert batched[name]["last_run"] and plain[name]["last_run"]
    for kind in ("ASSET_MATERIALIZATION", "ASSET_MATERIALIZATION_PLANNED"):
        assert batched[kind] == plain[kind] == 60
    # every planned and done materialization went through a batch (per-partition planned events here: the
    # DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS switch is off in this test)
    assert sum(batches) == 120 and max(batches) == 7
    ids = batched["ids_increase"]
    assert ids == sorted(ids) and len(set(ids)) == 30


def test_batched_storage_defaults_to_dagster_home_and_needs_one(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    storage = BatchedSqliteEventLogStorage()
    assert storage._base_dir == str(tmp_path / "history" / "runs")
    monkeypatch.delenv("DAGSTER_HOME")
    with pytest.raises(ValueError, match="DAGSTER_HOME"):
        BatchedSqliteEventLogStorage()


def test_the_home_instance_uses_the_batched_storage_without_dagster_home(tmp_path, monkeypatch):
    from recsys_pipeline.settings import HomePaths, ensure_home

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    paths = ensure_home(HomePaths.at(tmp_path / "home"))
    assert "{dagster_home}" not in (paths.dagster_home / "dagster.yaml").read_text()
    with dg.DagsterInstance.from_config(str(paths.dagster_home)) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, BatchedSqliteEventLogStorage)
        assert storage._base_dir == str((paths.dagster_home / "history" / "runs").resolve())


def test_two_claims_of_the_last_free_slot_read_at_once_give_it_to_one(tmp_path, monkeypatch):
    from tests.reliability.support import race_for_one_slot

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    # one storage per claimer, as in two processes (a SQLite storage serializes its own threads' connections)
    race_for_one_slot(BatchedSqliteEventLogStorage(), BatchedSqliteEventLogStorage())


def test_a_moved_or_copied_home_records_its_runs_in_its_own_history(tmp_path, monkeypatch):
    import shutil

    from recsys_pipeline.settings import HomePaths, ensure_home

    original = ensure_home(HomePaths.at(tmp_path / "original"))
    copy = HomePaths.at(tmp_path / "copy")
    shutil.copytree(original.root, copy.root)
    edited = HomePaths.at(tmp_path / "edited")
    shutil.copytree(original.root, edited.root)
    by_hand = str(tmp_path / "elsewhere" / "events")
    config = edited.dagster_home / "dagster.yaml"
    config.write_text(config.read_text().replace(str(original.dagster_home.resolve() / "history" / "runs"), by_hand))

    for paths in (ensure_home(copy), ensure_home(edited)):
        with dg.DagsterInstance.from_config(str(paths.dagster_home)) as instance:
            instance.report_engine_event("hello", dg.DagsterRun(job_name="j", run_id="0" * 32))
    assert (copy.dagster_home / "history" / "runs" / f"{'0' * 32}.db").exists()
    assert not (original.dagster_home / "history" / "runs" / f"{'0' * 32}.db").exists()
    assert (tmp_path / "elsewhere" / "events" / f"{'0' * 32}.db").exists()  # a value set by hand is the user's
    assert "# " in (copy.dagster_home / "dagster.yaml").read_text()  # only the value changed: the comments stay
