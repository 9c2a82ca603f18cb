"""The Dagster and MLflow UIs in a real browser, driven with Playwright through Debian's headless Chromium (no
browser download); screenshots and server logs go to ``tests/test-artifacts/``.

- On a home with a one-week slice of the bundled data and nothing materialized: every asset is on its group's
  graph, and one partition of the ingestion group materializes from the UI's launch dialog.
- On the home ``recsys demo`` made (``demo_home``): the Dagster UI shows the row count, the MLflow links, the
  gate's decision and the headline figures, and no missing partition; the MLflow UI shows the champion alias and
  the evaluation chart.
- Last (it adds model versions to the demo's home): three days of the model group backfilled from the UI's launch
  dialog, one run per day; MLflow then holds a version tagged with each of those days, each day's
  ``model_evaluation`` partition names its version and gate decision, and the champion alias stays on the demo's
  (later) day.
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
from datetime import date, timedelta
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")

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


@contextlib.contextmanager
def _server(name: str, command: list[str], env: dict, cwd: Path, ready: str):
    """Start ``command`` (a web server) in its own process group, wait until ``ready`` answers (up to 300 s), yield;
    then stop the whole group and copy its log to ``test-artifacts/<name>.log``."""
    log_path = cwd / f"{name}.log"
    log = open(log_path, "w")  # noqa: SIM115  (open while the server runs; closed in finally)
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(ready, timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{name} did not come up: {log_path.read_text()[-3000:]}")
                time.sleep(2)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(log_path, ARTIFACTS / f"{name}.log")


def _dagster_dev(name: str, env: dict, cwd: Path):
    """``dagster dev`` (webserver + daemon, which the queued run coordinator needs) of the code location on a free
    port of 127.0.0.1; yields its base URL."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "dagster", "dev", "-m", "recsys_pipeline.definitions"]
    return base, _server(name, [*command, "-h", "127.0.0.1", "-p", str(port)], env, cwd, f"{base}/server_info")


@pytest.fixture(scope="module")
def ui(tmp_path_factory, movielens_slice):
    """``dagster dev`` on a home with a one-week slice of the bundled data and nothing materialized; yields
    (base URL, home)."""
    root = tmp_path_factory.mktemp("ui")
    data = movielens_slice(root / "ml", "2018-09-01", "2018-09-08")
    home = root / "home"
    env = {
        **os.environ,
        "RECSYS_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "RECSYS_MOVIELENS_PATH": str(data),
        "RECSYS_PARTITIONS_START": "2018-09-01",
        "RECSYS_PARTITIONS_END": "2018-09-07",
        "HF_HUB_OFFLINE": "1",
    }
    from recsys_pipeline.settings import HomePaths, ensure_home

    ensure_home(HomePaths.at(home))  # dagster.yaml (queued run coordinator) under DAGSTER_HOME
    base, server = _dagster_dev("dagster-dev", env, root)
    with server:
        yield base, home


# Runs launched from the demo's UI (the model-group backfill) train this many epochs: the test checks what is
# recorded, not the model's quality (the demo itself trained with the defaults).
BACKFILL_EPOCHS = "2"


@pytest.fixture(scope="module")
def demo_ui(demo_home):
    """``dagster dev`` on the home ``recsys demo`` made (ingestion of every day, the content and the model group of
    the last day; a champion published); yields (base URL, home)."""
    home, env, _ = demo_home
    env = {**env, "DAGSTER_HOME": str(home / "dagster"), "RECSYS_MAX_EPOCHS": BACKFILL_EPOCHS}
    base, server = _dagster_dev("dagster-dev-demo", env, home.parent)
    with server:
        yield base, home


@pytest.fixture(scope="module")
def mlflow_ui(demo_home):
    """``mlflow ui`` on the MLflow store of the demo's home, as the README starts it; yields (base URL, home)."""
    home, env, _ = demo_home
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    store = f"sqlite:///{home / 'mlflow.db'}"
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "-h", "127.0.0.1", "-p", str(port)]
    with _server("mlflow-ui", command, env, home.parent, f"{base}/health"):
        yield base, home


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        # Dagster OSS shows a one-time "Join the Dagster community" dialog: dismiss it whenever it appears.
        page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda button: button.click())
        yield page
        browser.close()


def _screenshot(page, name: str) -> Path:
    """A screenshot of the whole page under ``test-artifacts/`` once Dagster's one-time community dialog is gone.

    Both UIs scroll inside an inner panel, which ``full_page`` does not unroll: the viewport is made as tall as
    the tallest scrolling content (at most 6,000 px) for the shot, then restored."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with contextlib.suppress(PlaywrightTimeout):
        page.get_by_role("button", name="Skip").click(timeout=3_000)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"{name}.png"
    viewport = page.viewport_size
    tallest = page.evaluate("Math.max(...Array.from(document.querySelectorAll('*'), e => e.scrollHeight))")
    page.set_viewport_size({"width": viewport["width"], "height": min(max(tallest, viewport["height"]), 6000)})
    page.wait_for_timeout(500)  # let the panels re-lay out at the new height
    page.screenshot(path=str(shot), full_page=True)
    page.set_viewport_size(viewport)
    return shot


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
        _screenshot(page, f"ui-graph-{group}")

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


def _wait_text(page, pattern: str) -> str:
    """The page's text once ``pattern`` (a regular expression) matches it (the UI fills metadata in lazily)."""
    deadline = time.monotonic() + 60
    while True:
        text = page.inner_text("body")
        if re.search(pattern, text) or time.monotonic() > deadline:
            return text
        time.sleep(1)


def test_dagster_ui_shows_row_counts_mlflow_links_headline_figures_and_every_partition(demo_ui, demo_home, page):
    from mlflow.tracking import MlflowClient

    from recsys_pipeline.data import warehouse

    base, home = demo_ui
    env = demo_home[1]
    first, last = (date.fromisoformat(env[k]) for k in ("RECSYS_PARTITIONS_START", "RECSYS_PARTITIONS_END"))
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    (version,) = client.search_model_versions(f"name='recsys_ranker' AND tags.partition_date='{last}'")
    with warehouse.session(home / "warehouse.duckdb", read_only=True) as con:
        n_recommendations = warehouse.row_count(con, "recommendations")
        ours, popularity = (
            con.execute(
                "SELECT value FROM evaluation_metrics WHERE protocol = 'user_last_fraction' "
                "AND metric = 'ndcg_at_10' AND model = ?",
                [model],
            ).fetchall()[0][0]
            for model in ("ours", "popularity")
        )

    # recommender_model: links to its MLflow run and registered version (the `mlflow ui` default address)
    page.goto(f"{base}/assets/recommender_model", wait_until="domcontentloaded")
    _wait_text(page, "mlflow_model_version")
    links = set(page.eval_on_selector_all("a[href^='http://127.0.0.1:5000/']", "els => els.map(e => e.href)"))
    assert f"http://127.0.0.1:5000/#/models/recsys_ranker/versions/{version.version}" in links
    assert any(link.endswith(f"/runs/{version.run_id}") for link in links), links
    _screenshot(page, "ui-demo-recommender_model")

    # recommendations: the row count Dagster shows is the table's
    page.goto(f"{base}/assets/recommendations", wait_until="domcontentloaded")
    text = _wait_text(page, r"Row count\s+[\d,]+")
    assert re.search(r"Row count\s+([\d,]+)", text).group(1) == f"{n_recommendations:,}"
    _screenshot(page, "ui-demo-recommendations")

    # model_evaluation: the gate's decision and the headline table of judged figures, rounded to 4 places
    page.goto(f"{base}/assets/model_evaluation", wait_until="domcontentloaded")
    text = _wait_text(page, r"user_last_fraction\tndcg_at_10")
    decision = re.search(r"gate\.decision\s+(?:[^\n]*\d:\d\d [AP]M\s+)?(\w+)", text)  # key, [timestamp,] value
    assert decision and decision.group(1) == "champion", text[:3000]
    row = re.search(r"user_last_fraction\tndcg_at_10\t([\d.]+)\t([\d.]+)", text)
    assert row and (float(row.group(1)), float(row.group(2))) == (round(ours, 4), round(popularity, 4))
    _screenshot(page, "ui-demo-model_evaluation")

    # raw_events: the partitions run from the data's first day to its last, and the demo materialized every one
    page.goto(f"{base}/assets/raw_events?view=partitions", wait_until="domcontentloaded")
    text = _wait_text(page, r"Missing \(\d+\)")
    counts = {k: int(v) for k, v in re.findall(r"(Materialized|Missing|Failed) \((\d+)\)", text)}
    assert counts == {"Failed": 0, "Materialized": (last - first).days + 1, "Missing": 0}, counts
    _screenshot(page, "ui-demo-raw_events-partitions")


def test_mlflow_ui_shows_the_champion_alias_and_the_evaluation_chart(mlflow_ui, page, tmp_path):
    from mlflow.tracking import MlflowClient

    base, home = mlflow_ui
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("recsys_ranker", "champion")
    evaluation_run = client.get_run(champion.tags["gate.evaluation_run_id"])

    page.goto(f"{base}/#/models/recsys_ranker/versions/{champion.version}", wait_until="domcontentloaded")
    text = _wait_text(page, r"Aliases\s*:\s*@\s*champion")
    assert re.search(r"Aliases\s*:\s*@\s*champion", text), text[:3000]
    assert f"Version {champion.version}" in text
    _screenshot(page, "mlflow-champion-version")

    # the chart of the figures each protocol is judged by, among the evaluation run's artifacts, as an image
    chart = f"{base}/#/experiments/{evaluation_run.info.experiment_id}/runs/{evaluation_run.info.run_id}"
    page.goto(f"{chart}/artifacts/charts/evaluation.png", wait_until="domcontentloaded")
    _wait_text(page, r"Path: \S+/charts/evaluation\.png")
    image = page.locator("img[src^='blob:']").first  # the artifact viewer shows the fetched file as a blob
    image.wait_for(state="visible")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    from PIL import Image

    logged = client.download_artifacts(evaluation_run.info.run_id, "charts/evaluation.png", str(tmp_path))
    shown = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert tuple(shown) == Image.open(logged).size  # the logged PNG itself, not a broken-image icon
    _screenshot(page, "mlflow-evaluation-chart")


def _launch_model_backfill(page, base: str, days: str) -> None:
    """The model group's page → Materialize all → the days ``days`` (``[START...END]``) → Launch backfill."""
    page.goto(_group_url(base, "model"), wait_until="domcontentloaded")
    page.get_by_text("recommender_model", exact=True).first.wait_for(state="visible")
    page.get_by_role("button", name=re.compile("Materialize all")).first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Partition selection").first.wait_for()
    box = dialog.get_by_role("textbox").first
    box.click()
    box.fill(days)
    box.press("Enter")
    dialog.get_by_text("3 partitions", exact=True).first.wait_for()
    _screenshot(page, "ui-model-backfill-dialog")
    dialog.get_by_role("button", name=re.compile("Launch")).click()


def _runs(base: str) -> list[dict]:
    query = "{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }"
    return _graphql(base, query)["runsOrError"]["results"]


def test_a_backfill_of_the_model_group_from_the_ui_trains_a_model_per_day(demo_ui, demo_home, page):
    from mlflow.tracking import MlflowClient

    base, home = demo_ui
    last = date.fromisoformat(demo_home[1]["RECSYS_PARTITIONS_END"])
    days = [(last - timedelta(days=n)).isoformat() for n in (3, 2, 1)]  # before the demo's day: old days
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    demo_champion = client.get_model_version_by_alias("recsys_ranker", "champion")
    before = {r["runId"] for r in _runs(base)}
    try:
        _launch_model_backfill(page, base, f"[{days[0]}...{days[-1]}]")
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "ui-model-backfill-failure.png"))
        raise

    deadline, runs = time.monotonic() + 900, []
    while time.monotonic() < deadline:
        runs = [r for r in _runs(base) if r["runId"] not in before]
        if len(runs) == 3 and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs):
            break
        time.sleep(5)
    by_day = {next(t["value"] for t in r["tags"] if t["key"] == "dagster/partition"): r for r in runs}
    assert sorted(by_day) == days, runs  # one run per day, each tagged with its day
    assert {r["status"] for r in runs} <= {"SUCCESS", "FAILURE"}  # FAILURE: a day the popularity gate stopped

    # MLflow: one new version per day, tagged with its day; the champion alias stays on the demo's later day
    versions = {}
    for day in days:
        (version,) = client.search_model_versions(f"name='recsys_ranker' AND tags.partition_date='{day}'")
        versions[day] = client.get_model_version("recsys_ranker", version.version)
    assert len({v.version for v in versions.values()}) == 3
    assert all(int(v.version) > int(demo_champion.version) for v in versions.values())
    assert client.get_model_version_by_alias("recsys_ranker", "champion").version == demo_champion.version
    for day, version in versions.items():
        run = client.get_run(version.run_id)
        assert run.data.tags["dagster.partition"] == day and run.data.tags["dagster.run_id"] == by_day[day]["runId"]
        # trained as of that day: its newest interaction is before the end of the day (UTC)
        assert run.data.params["data.last_timestamp_utc"] < (date.fromisoformat(day) + timedelta(days=1)).isoformat()
        assert version.tags["gate.decision"] in ("champion", "challenger")

    # Dagster: each day's model_evaluation materialization holds that day's version and gate decision, the
    # check has a result for that day, and recommendations of a day is materialized exactly when its gate passed
    query = (
        '{ assetNodeOrError(assetKey: {path: ["%s"]}) { ... on AssetNode { assetMaterializations(partitions: [%s]) '
        "{ partition metadataEntries { label ... on TextMetadataEntry { text } } } } } }"
    )
    quoted = ", ".join(f'"{d}"' for d in days)
    shown = {}
    for mat in _graphql(base, query % ("model_evaluation", quoted))["assetNodeOrError"]["assetMaterializations"]:
        entries = {e["label"]: e.get("text") for e in mat["metadataEntries"]}
        shown.setdefault(mat["partition"], (entries["model_version"], entries["gate.decision"]))
    assert shown == {d: (str(v.version), v.tags["gate.decision"]) for d, v in versions.items()}
    published = {
        m["partition"]
        for m in _graphql(base, query % ("recommendations", quoted))["assetNodeOrError"]["assetMaterializations"]
    }
    passed = {d for d, v in versions.items() if v.tags["gate.popularity_floor"].startswith("passed")}
    assert published == passed and {d for d, r in by_day.items() if r["status"] == "SUCCESS"} == passed

    # the partition bar of the model group: those days and the demo's day have a model
    page.goto(f"{base}/assets/recommender_model?view=partitions", wait_until="domcontentloaded")
    text = _wait_text(page, r"Materialized \(4\)")
    assert re.search(r"Materialized \(4\)", text), text[:2000]
    _screenshot(page, "ui-model-backfill-recommender_model-partitions")
    page.goto(f"{base}/assets/model_evaluation?view=partitions", wait_until="domcontentloaded")
    page.get_by_text(days[0], exact=True).first.click()  # the day's materialization: its version and decision
    text = _wait_text(page, r"gate\.decision")
    assert "gate.decision" in text and versions[days[0]].tags["gate.decision"] in text
    _screenshot(page, "ui-model-backfill-model_evaluation-day")
