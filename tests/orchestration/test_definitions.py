"""The code location: importing it has no side effect; loading it reads settings, not data; a wrong source path
fails the first asset that reads it, with the path in the message."""

import json
import os
import subprocess
import sys

import dagster as dg

from recsys_pipeline.resources import resources_for_home

PROBE = """
import builtins, json, os, sys
opened = []
real_open = builtins.open
def watching_open(file, *args, **kwargs):
    opened.append(str(file))
    return real_open(file, *args, **kwargs)
builtins.open = watching_open
import recsys_pipeline.definitions as d
after_import = list(opened)
defs = d.defs()
print(json.dumps({"after_import": after_import, "after_load": opened, "torch": "torch" in sys.modules,
                  "assets": len(list(defs.resolve_all_asset_keys()))}))
"""


def test_import_creates_nothing_and_reads_no_data_file(tmp_path):
    home = tmp_path / "does" / "not" / "exist"
    env = {
        **os.environ,
        "RECSYS_HOME": str(home),
        "RECSYS_MOVIELENS_PATH": str(tmp_path / "no-such-release"),
        "RECSYS_SOURCE_KIND": "movielens",
    }
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["after_import"] == []  # importing opens no file at all
    ours = [f for f in seen["after_load"] if "site-packages" not in f and not f.startswith("/usr/share/zoneinfo")]
    assert ours == []  # loading reads settings only: no data file, no warehouse, no dagster.yaml
    assert seen["assets"] == 12 and not seen["torch"]  # and it is cheap: no torch
    assert not home.exists() and not (tmp_path / "does").exists()  # nothing created


def test_a_wrong_source_path_fails_the_first_asset_that_reads_it(tmp_path, asset):
    missing = tmp_path / "no-such-release"
    resources = resources_for_home(str(tmp_path / "home"))
    resources["source"] = type(resources["source"])(movielens_path=str(missing))
    catalog = asset("item_catalog")
    day = catalog.partitions_def.get_last_partition_key()
    result = dg.materialize([catalog], resources=resources, partition_key=day, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert f"MovieLens folder not found: {missing}" in failure.step_failure_data.error.to_string()


def test_the_users_tags_stay_out_of_the_encoded_text_unless_asked(tmp_path, asset):
    from recsys_pipeline.data import warehouse

    catalog = asset("item_catalog")
    day = catalog.partitions_def.get_last_partition_key()
    texts = {}
    for asked in (None, True):
        resources = resources_for_home(str(tmp_path / f"home-{asked}"))
        resources["source"] = type(resources["source"])(user_tags_in_text=asked)
        assert dg.materialize([catalog], resources=resources, partition_key=day).success
        with warehouse.session(resources["warehouse_db"].path, read_only=True) as con:
            texts[asked] = con.execute("SELECT text, tags_text FROM item_catalog WHERE item_id = '1'").fetchone()
    assert texts[None] == ("Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy.", "pixar, fun")
    assert texts[True][0] == texts[None][0] + " Tags: pixar, fun."
