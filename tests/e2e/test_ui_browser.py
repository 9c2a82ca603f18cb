"""The Dagster UI in a real browser: every asset is on the graph, one partition materializes from the UI.

Starts ``dagster dev`` (webserver + daemon, which the queued run coordinator needs) on 127.0.0.1 with a temporary
home and a one-week slice of the bundled data, drives Debian's headless Chromium with Playwright (no browser
download), and saves screenshots under ``test-artifacts/`` in the repository root.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PARTITION = "2018-09-03"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(base: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{base}/graphql", data=json.dumps({"query": query}).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["data"]


@pytest.fixture(scope="module")
def ui(tmp_path_factory, movielens_slice):
    """``dagster dev`` on a free port; yields (base URL, home). Stopped (its whole process group) afterwards."""
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    root = tmp_path_factory.mktemp("ui")
    data = movielens_slice(root / "ml", "2018-09-01", "2018-09-08")
    home = root / "home"
    env = {
        **os.environ,
        "RECSYS_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "RECSYS_MOVIELENS_PATH": str(data),
        "RECSYS_PARTITIONS_START": "2018-09-01",
        "HF_HUB_OFFLINE": "1",
    }
    from recsys_pipeline.settings import HomePaths, ensure_home

    ensure_home(HomePaths.at(home))  # dagster.yaml (queued run coordinator) under DAGSTER_HOME
    port = _free_port()
    log = open(root / "dagster-dev.log", "w")  # noqa: SIM115  (open while the server runs; closed in finally)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster",
            "dev",
            "-m",
            "recsys_pipeline.definitions",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dagster dev did not come up: {(root / 'dagster-dev.log').read_text()[-3000:]}")
                time.sleep(2)
        yield base, home
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        if (root / "dagster-dev.log").exists():
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(root / "dagster-dev.log", ARTIFACTS / "dagster-dev.log")


@pytest.fixture
def page(ui):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        # Dagster OSS shows a one-time "Join the Dagster community" dialog: dismiss it whenever it appears.
        page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda button: button.click())
        yield page
        browser.close()


def _group_url(base: str, group: str) -> str:
    return f"{base}/locations/__repository__@recsys_pipeline.definitions/asset-groups/{group}"


def _launch_one_partition(page, base: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(_group_url(base, "ingestion"), wait_until="domcontentloaded")
    page.get_by_text("interactions", exact=True).first.wait_for(state="visible")
    page.get_by_role("button", name=re.compile("Materialize all")).first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Partition selection").first.wait_for()
    with contextlib.suppress(PlaywrightTimeout):  # the dialog starts on the last 90 days; the slice is from 2018
        dialog.get_by_text("Show all partitions").first.click(timeout=20_000)
    box = dialog.get_by_role("textbox").first
    box.click()
    box.fill(PARTITION)
    box.press("Enter")
    dialog.get_by_text("1 partition", exact=True).first.wait_for()
    dialog.get_by_role("button", name=re.compile("Launch")).click()


def test_graph_lists_every_asset_and_one_partition_materializes(ui, page, definitions):
    base, home = ui
    groups: dict[str, set[str]] = {}
    for key in definitions.resolve_all_asset_keys():
        group = definitions.get_assets_def(key).group_names_by_key[key]
        groups.setdefault(group, set()).add(key.to_user_string())
    ARTIFACTS.mkdir(exist_ok=True)

    for group, names in sorted(groups.items()):
        page.goto(_group_url(base, group), wait_until="domcontentloaded")
        for name in sorted(names):  # each asset is a node on its group's graph
            page.get_by_text(name, exact=True).first.wait_for(state="visible")
        page.screenshot(path=str(ARTIFACTS / f"ui-graph-{group}.png"))

    # Materialize the ingestion group (item_catalog, raw_events, interactions) for one partition, from the UI.
    try:
        _launch_one_partition(page, base)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "ui-launch-failure.png"))
        raise

    run_id, status, deadline = None, None, time.monotonic() + 420
    while time.monotonic() < deadline:
        runs = _graphql(base, "{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }")
        runs = runs["runsOrError"]["results"]
        if runs:
            run = runs[0]
            run_id, status = run["runId"], run["status"]
            assert {"key": "dagster/partition", "value": PARTITION} in run["tags"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
        time.sleep(3)
    assert run_id, "no run was launched from the dialog"

    page.goto(f"{base}/runs/{run_id}", wait_until="domcontentloaded")
    page.get_by_text(run_id[:8]).first.wait_for()
    if status == "SUCCESS":
        page.get_by_text("Success", exact=False).first.wait_for()
    shot = ARTIFACTS / "ui-run.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert status == "SUCCESS", f"run {run_id} ended {status}; see {shot} and {ARTIFACTS / 'dagster-dev.log'}"

    materialized = _graphql(
        base,
        '{ assetNodeOrError(assetKey: {path: ["interactions"]}) { ... on AssetNode { '
        "assetPartitionStatuses { ... on TimePartitionStatuses { ranges { "
        "startKey endKey status } } } } } }",
    )
    ranges = materialized["assetNodeOrError"]["assetPartitionStatuses"]["ranges"]
    assert ranges == [{"startKey": PARTITION, "endKey": PARTITION, "status": "MATERIALIZED"}]

    import pandas as pd

    from recsys_pipeline.data import warehouse

    ratings = pd.read_csv(home.parent / "ml" / "ratings.csv")
    day = pd.to_datetime(ratings["timestamp"], unit="s").dt.strftime("%Y-%m-%d")
    with warehouse.session(home / "warehouse.duckdb", read_only=True) as con:
        assert warehouse.row_count(con, "interactions") == int((day == PARTITION).sum()) > 0
