"""`recsys serve`: the HTTP contract over the published snapshots (FastAPI TestClient), and one real server on a
socket (what `curl` talks to)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import date

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from recsys_pipeline.serving.app import create_app
from recsys_pipeline.serving.snapshot import ITEMS, publish_snapshot
from recsys_pipeline.settings import HomePaths


def recs_frame(users, items_per_user=20, version="3", offset=0, strategy="personalized"):
    rows = [
        (u, r, f"i{(r + offset + n) % 50}", 1.0 - r / 100)
        for n, u in enumerate(users)
        for r in range(1, items_per_user + 1)
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])
    return frame.assign(
        strategy=strategy, model_run_id=f"run-{version}", model_version=version, produced_on=date(2018, 9, 25)
    )


def items_frame(n=50):
    return pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n)],
            "title": [f"Movie {i}" for i in range(n)],
            "users": [n - i for i in range(n)],
            "rank": list(range(1, n + 1)),
        }
    )


@pytest.fixture
def published(tmp_path):
    paths = HomePaths.at(tmp_path / "home")
    recs = pd.concat([recs_frame(["1", "2"]), recs_frame(["7"], strategy="cold_user_prior")])
    publish_snapshot(paths, items_frame(), ITEMS)
    publish_snapshot(paths, recs)
    return paths


def test_known_user_gets_the_ranked_list_with_k(published):
    client = TestClient(create_app(published))
    body = client.get("/recommendations/2", params={"k": 5}).json()
    assert body["strategy"] == "personalized" and body["model_version"] == "3" and body["user_id"] == "2"
    assert [i["rank"] for i in body["items"]] == [1, 2, 3, 4, 5]
    assert [i["item_id"] for i in body["items"]] == ["i2", "i3", "i4", "i5", "i6"]
    assert body["items"][0]["title"] == "Movie 2" and body["items"][0]["score"] == pytest.approx(0.99)
    assert len(client.get("/recommendations/1").json()["items"]) == 10  # default k
    assert len(client.get("/recommendations/1?k=500").json()["items"]) == 20  # at most what was published
    assert client.get("/recommendations/1?k=0").status_code == 422


def test_unknown_user_is_404_unless_fallback_is_asked(published):
    client = TestClient(create_app(published))
    response = client.get("/recommendations/no-such-user")
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_user" and "fallback=true" in response.json()["detail"]
    cold = client.get("/recommendations/no-such-user", params={"fallback": "true", "k": 3})
    assert cold.status_code == 200
    body = cold.json()
    assert body["strategy"] == "popularity_fallback"
    assert [(i["item_id"], i["title"], i["score"]) for i in body["items"]] == [
        ("i0", "Movie 0", 50.0),
        ("i1", "Movie 1", 49.0),
        ("i2", "Movie 2", 48.0),
    ]
    # a user with history but unknown to the champion keeps the strategy the recommendations asset recorded
    assert client.get("/recommendations/7").json()["strategy"] == "cold_user_prior"


def test_new_snapshot_is_picked_up_without_restart(published):
    client = TestClient(create_app(published))
    assert client.get("/recommendations/9").status_code == 404
    assert client.get("/health").json()["model_version"] == "3"
    publish_snapshot(published, recs_frame(["1", "9"], version="4", offset=10))
    body = client.get("/recommendations/9?k=2").json()
    assert body["model_version"] == "4" and [i["item_id"] for i in body["items"]] == ["i12", "i13"]
    assert client.get("/recommendations/2").status_code == 404  # gone from the new snapshot
    health = client.get("/health").json()
    assert health == {**health, "status": "ok", "users": 2, "model_version": "4", "produced_on": "2018-09-25"}
    assert client.app.state.snapshots.reloads == 2


def test_nothing_published_is_503(tmp_path):
    client = TestClient(create_app(HomePaths.at(tmp_path / "empty")))
    assert client.get("/health").status_code == 503
    response = client.get("/recommendations/1")
    assert response.status_code == 503 and response.json()["error"] == "not_published"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_recsys_serve_answers_on_a_real_socket(published):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys_pipeline.cli", "--home", str(published.root), "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                status, health = fetch(f"{base}/health")
                break
            except (urllib.error.URLError, ConnectionError) as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"server did not start: {proc.stdout.read() if proc.poll() else ''}") from exc
                time.sleep(0.3)
        assert status == 200 and health["users"] == 3
        status, body = fetch(f"{base}/recommendations/1?k=3")
        assert status == 200 and [i["rank"] for i in body["items"]] == [1, 2, 3]
        status, body = fetch(f"{base}/recommendations/unknown")
        assert status == 404 and body["error"] == "unknown_user"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_an_unreadable_snapshot_keeps_the_last_good_one_or_answers_503(published, tmp_path):
    client = TestClient(create_app(published))
    assert client.get("/recommendations/2", params={"k": 2}).status_code == 200
    target = published.published / "recommendations.parquet"
    good = target.read_bytes()
    target.write_bytes(good[:1000])  # truncated: not what publish_snapshot writes, but a disk can do it
    body = client.get("/recommendations/2", params={"k": 2}).json()
    assert [i["item_id"] for i in body["items"]] == ["i2", "i3"]  # the previous, complete snapshot
    fresh = TestClient(create_app(published))  # nothing good loaded yet: 503, not a 500
    assert fresh.get("/health").status_code == 503
    assert fresh.get("/recommendations/2").status_code == 503
    publish_snapshot(published, recs_frame(["2"], offset=5))
    assert client.get("/recommendations/2", params={"k": 1}).json()["items"][0]["item_id"] == "i6"


@pytest.fixture
def by_day(tmp_path):
    """Lists published for three UTC days (version 1, 2, 3), the newest current."""
    from recsys_pipeline.serving.publish import publish_day

    paths = HomePaths.at(tmp_path / "days")
    for n, day in enumerate([date(2018, 9, 22), date(2018, 9, 23), date(2018, 9, 24)], 1):
        recs = recs_frame(["1", "2"], version=str(n), offset=n).assign(partition_date=day, produced_on=day)
        publish_day(paths, day, recs, items_frame())
    return paths


def test_the_lists_of_a_day_are_asked_by_date_and_the_current_day_is_the_default(by_day):
    client = TestClient(create_app(by_day))
    current = client.get("/recommendations/1", params={"k": 2}).json()
    assert (current["date"], current["model_version"]) == ("2018-09-24", "3")
    assert [i["item_id"] for i in current["items"]] == ["i4", "i5"]
    earlier = client.get("/recommendations/1", params={"k": 2, "date": "2018-09-22"}).json()
    assert (earlier["date"], earlier["model_version"]) == ("2018-09-22", "1")
    assert [i["item_id"] for i in earlier["items"]] == ["i2", "i3"]
    assert earlier["items"][0]["title"] == "Movie 2"
    health = client.get("/health").json()
    assert health == {**health, "date": "2018-09-24", "published_days": 3, "first_day": "2018-09-22"}


def test_a_day_without_lists_is_404_and_a_malformed_date_422(by_day):
    client = TestClient(create_app(by_day))
    missing = client.get("/recommendations/1", params={"date": "2018-09-01"})
    assert missing.status_code == 404
    assert missing.json() == {
        "error": "unknown_date",
        "date": "2018-09-01",
        "detail": "no recommendations published for 2018-09-01; published days: 2018-09-22 .. 2018-09-24 (3 days)",
    }
    assert client.get("/recommendations/1", params={"date": "2018-02-30"}).status_code == 422
    assert client.get("/recommendations/1", params={"date": "tomorrow"}).status_code == 422
    # only YYYY-MM-DD: no epoch seconds (1536796800 is 2018-09-13), no datetime
    for lax in ("1536796800", "0", "2018-09-23T00:00:00"):
        assert client.get("/recommendations/1", params={"date": lax}).status_code == 422, lax
    # an unknown user on a known day is the usual unknown_user 404, the day's popularity list on request
    assert client.get("/recommendations/9", params={"date": "2018-09-23"}).json()["error"] == "unknown_user"
    cold = client.get("/recommendations/9", params={"date": "2018-09-23", "fallback": "true", "k": 1}).json()
    assert (cold["strategy"], cold["date"]) == ("popularity_fallback", "2018-09-23")


def test_a_rollback_moves_the_default_day_without_a_restart(by_day):
    from recsys_pipeline.serving.publish import make_current

    client = TestClient(create_app(by_day))
    assert client.get("/recommendations/2").json()["date"] == "2018-09-24"
    assert make_current(by_day, date(2018, 9, 23)) == date(2018, 9, 24)
    body = client.get("/recommendations/2").json()
    assert (body["date"], body["model_version"]) == ("2018-09-23", "2")
    with pytest.raises(LookupError, match="no published recommendations of 2018-09-01; published days: 2018-09-22"):
        make_current(by_day, date(2018, 9, 1))
