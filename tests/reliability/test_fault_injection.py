"""Deterministic fault injection (issue 14, item 4): the product's own writers, run as users run them
(``dagster asset materialize``), are stopped at a pause point inside their write (``RECSYS_FAULT_PAUSE``, see
``settings.pause_point``) and SIGKILLed there, every statement of the transaction run and nothing committed, or the
new snapshot fsynced and not yet moved into place. Each time the previous good state is intact, and the next plain
run completes and writes the new state exactly once.

Writers covered: ingestion (``raw_events`` and ``interactions`` of one partition), embedding sync
(``text_embeddings``) and publishing (the ``recommendations`` table's day, its published snapshot, and the pointer
to the current published day).
"""

import hashlib
import json
import signal
from datetime import date

import pandas as pd
import pytest

from recsys_pipeline.data import warehouse
from recsys_pipeline.data.catalog import build_item_catalog
from recsys_pipeline.data.schema import ITEM_CATALOG
from recsys_pipeline.data.sources import MovieLensSource
from recsys_pipeline.serving.snapshot import current_day, day_folder, read_snapshot, snapshot_path
from tests.reliability.support import TOY_DAY, TOY_NEXT_DAY, Children, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

DAY = "2018-09-16"
CATALOG_DAY = "2018-09-24"  # the last day of the slice: the catalog as of it holds every item


def state(path, *tables: str) -> dict[str, tuple[int, str]]:
    """``table -> (rows, sha256 of the sorted rows)``; ``(0, "")`` for a table that does not exist."""
    out = {}
    with warehouse.session(path, read_only=True) as con:
        for table in tables:
            if not warehouse.table_exists(con, table):
                out[table] = (0, "")
                continue
            rows = con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()  # names from the test's literals
            out[table] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
    return out


def kill_at(children: Children, tmp_path, point: str, select: str, **materialize_args) -> None:
    """Run ``dagster asset materialize --select SELECT`` paused at ``point``; SIGKILL it there."""
    ready = tmp_path / f"paused-{point.replace('/', '_')}"
    proc = children.materialize(select, **materialize_args, RECSYS_FAULT_PAUSE=point, RECSYS_FAULT_READY=str(ready))
    wait_for(ready.exists, proc, f"the run never reached the pause point {point}", seconds=300)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def run_ok(children: Children, select: str, **materialize_args) -> str:
    proc = children.materialize(select, **materialize_args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def add_ratings_on(data, day: str, user_offset: int = 100_000) -> int:
    """Append a copy of ``day``'s ratings by new users to the release; returns the number of rows added."""
    ratings = pd.read_csv(data / "ratings.csv")
    on_day = ratings[pd.to_datetime(ratings["timestamp"], unit="s").dt.strftime("%Y-%m-%d") == day]
    copies = on_day.assign(userId=on_day["userId"] + user_offset)
    copies.to_csv(data / "ratings.csv", mode="a", header=False, index=False)
    return len(on_day)


def test_ingestion_killed_inside_its_transaction_leaves_the_partition_as_it_was(cli_home, tmp_path):
    paths, children, data = cli_home
    tables = ("raw_events", "interactions", "quarantine")
    run_ok(children, "raw_events,interactions", partition=DAY)
    before = state(paths.warehouse, *tables)
    assert before["raw_events"][0] == 137 and before["interactions"][0] > 0
    added = add_ratings_on(data, DAY)  # the day's landing data changes: a new run would write other rows

    kill_at(children, tmp_path, "raw_events.before_commit", "raw_events,interactions", partition=DAY)
    assert state(paths.warehouse, *tables) == before

    # raw_events commits this time; interactions is killed inside its own transaction
    kill_at(children, tmp_path, "interactions.before_commit", "raw_events,interactions", partition=DAY)
    after_raw = state(paths.warehouse, *tables)
    assert after_raw["raw_events"][0] == 137 + added
    assert after_raw["interactions"] == before["interactions"] and after_raw["quarantine"] == before["quarantine"]

    run_ok(children, "raw_events,interactions", partition=DAY)
    with warehouse.session(paths.warehouse, read_only=True) as con:
        n, distinct, new_users = con.execute(
            "SELECT count(*), count(DISTINCT (user_id, item_id, timestamp)), "
            "count(*) FILTER (WHERE user_id::INTEGER >= 100000) FROM interactions"
        ).fetchall()[0]
    assert n == distinct == before["interactions"][0] + new_users and new_users > 0


def test_embedding_sync_killed_inside_its_transaction_keeps_the_previous_vectors(cli_home, tmp_path):
    paths, children, data = cli_home
    run_ok(children, "text_embeddings", partition=CATALOG_DAY)
    before = state(paths.warehouse, "text_embeddings")
    assert before["text_embeddings"][0] == 557
    with warehouse.session(paths.warehouse, read_only=True) as con:
        hashes = dict(con.execute("SELECT item_id, content_hash FROM text_embeddings").fetchall())

    movies = pd.read_csv(data / "movies.csv")
    renamed = movies["movieId"].astype(str).isin(sorted(hashes)[:25])
    movies.loc[renamed, "title"] = movies.loc[renamed, "title"] + " (director's cut)"
    movies.to_csv(data / "movies.csv", index=False)
    with warehouse.session(paths.warehouse) as con:  # what item_catalog's run writes from the changed release
        warehouse.replace_table(con, ITEM_CATALOG, build_item_catalog(*MovieLensSource(str(data)).read_catalog()))

    kill_at(children, tmp_path, "text_embeddings.before_commit", "text_embeddings", partition=CATALOG_DAY)
    assert state(paths.warehouse, "text_embeddings") == before

    run_ok(children, "text_embeddings", partition=CATALOG_DAY)
    with warehouse.session(paths.warehouse, read_only=True) as con:
        after = dict(con.execute("SELECT item_id, content_hash FROM text_embeddings").fetchall())
    assert len(after) == 557
    assert {item for item in after if after[item] != hashes[item]} == set(sorted(hashes)[:25])


def test_publishing_killed_before_commit_or_before_the_move_leaves_the_published_lists(champion_home, tmp_path):
    paths, children = champion_home
    top3 = json.dumps({"ops": {"recommendations": {"config": {"k": 3}}}})
    published = read_snapshot(paths)
    table = state(paths.warehouse, "recommendations")
    assert published.groupby("user_id").size().unique().tolist() == [20]
    publish = dict(partition=TOY_DAY, config_json=top3)  # the day champion_home published, again

    kill_at(children, tmp_path, "recommendations.before_commit", "recommendations", **publish)
    assert state(paths.warehouse, "recommendations") == table
    pd.testing.assert_frame_equal(read_snapshot(paths), published)

    # the table commits this time; the snapshot's writer dies with its new file fsynced, not yet moved
    kill_at(children, tmp_path, "published/recommendations.before_replace", "recommendations", **publish)
    pd.testing.assert_frame_equal(read_snapshot(paths), published)
    folder = day_folder(paths, date.fromisoformat(TOY_DAY))
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".recommendations-")
    with warehouse.session(paths.warehouse, read_only=True) as con:
        assert con.execute("SELECT max(rank) FROM recommendations").fetchall() == [(3,)]

    run_ok(children, "recommendations", **publish)
    assert read_snapshot(paths).groupby("user_id").size().unique().tolist() == [3]
    names = sorted(p.name for p in folder.iterdir())  # the lists, and the model that made them (one folder)
    assert [n for n in names if not n.startswith("model-")] == [
        "items.parquet",
        "model.json",
        "recommendations.parquet",
    ]
    assert len([n for n in names if n.startswith("model-")]) == 1
    assert snapshot_path(paths).stat().st_mode & 0o777 == 0o644

    # the next day's lists are written, and the writer dies before the current-day pointer moves: readers stay on
    # the previous day; the next run moves it
    before = read_snapshot(paths)
    kill_at(children, tmp_path, "published/current.before_replace", "recommendations", partition=TOY_NEXT_DAY)
    assert current_day(paths).isoformat() == TOY_DAY
    pd.testing.assert_frame_equal(read_snapshot(paths), before)
    assert (day_folder(paths, date.fromisoformat(TOY_NEXT_DAY)) / "recommendations.parquet").exists()
    run_ok(children, "recommendations", partition=TOY_NEXT_DAY)
    assert current_day(paths).isoformat() == TOY_NEXT_DAY
    assert read_snapshot(paths)["partition_date"].astype(str).unique().tolist() == [TOY_NEXT_DAY]
    assert sorted(p.name for p in paths.published.iterdir()) == ["current.json", "days"]
