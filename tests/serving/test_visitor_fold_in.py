"""``POST /recommendations``: a visitor without an id served from their items by the day's published model (fold-in
without retraining), and the model publishing it relies on (atomic, one folder per day)."""

from datetime import date

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from recsys_pipeline.serving.app import VISITOR, create_app
from recsys_pipeline.serving.publish import items_snapshot, publish_day, rank_all_users
from recsys_pipeline.serving.snapshot import day_folder, publish_model, published_model
from recsys_pipeline.settings import HomePaths

DAY = date(2020, 1, 2)


@pytest.fixture(scope="module")
def trained(item_item_model):
    return item_item_model


@pytest.fixture
def home(tmp_path, trained):
    content, data, model = trained
    paths = HomePaths.at(tmp_path / "home")
    recs = rank_all_users(model, data, 10, "run-1", "4", DAY)
    titles = pd.DataFrame({"item_id": content.item_ids, "title": [f"Movie {i}" for i in content.item_ids]})
    publish_day(paths, DAY, recs, items_snapshot(data, content, titles), model=model)
    return paths


def test_a_visitor_is_served_from_their_items_by_the_published_model(home, trained, toy):
    content, data, model = trained
    client = TestClient(create_app(home))
    genre0 = [i for i in content.item_ids if int(i[1:]) % toy.GENRES == 0][:4]
    answer = client.post("/recommendations", json={"items": [*genre0, "no-such-item"], "k": 5})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["strategy"] == "folded_in" and body["k"] == 5 and body["model_version"] == "4"
    assert body["date"] == DAY.isoformat() and body["items_used"] == 4 and body["ignored_items"] == ["no-such-item"]
    listed = [i["item_id"] for i in body["items"]]
    assert not set(listed) & set(genre0)  # their items are not recommended back
    assert body["items"][0]["title"] == f"Movie {listed[0]}"
    # the same as folding the visitor into the model in process; a visitor arrives now, after the data's newest
    # day, so their recency window is the data's last days (any later time reads the same)
    now = pd.Timestamp("2100-01-01") + pd.to_timedelta(np.arange(4), unit="us")
    events = pd.DataFrame({"user_id": VISITOR, "item_id": genre0, "timestamp": now})
    expected = model.with_history(events).recommend([VISITOR], 5)
    assert listed == expected["item_id"].tolist()
    np.testing.assert_allclose([i["score"] for i in body["items"]], expected["score"], rtol=1e-5)
    # the fold-in moves the visitor's planted genre up against the item prior they had before (the toy prior is
    # strong: with the item-item weight 0.5 the genre need not lead); another visitor's items give another list
    # each entry says why: the visitor's items that raise it most, with titles, and the item's content shares
    named = {b["item_id"] for item in body["items"] for b in item["because"]}
    assert named and named <= set(genre0)
    assert body["items"][0]["because"][0]["title"] == f"Movie {body['items'][0]['because'][0]['item_id']}"
    assert set(body["items"][0]["modality_weights"]) <= {"text", "image"}
    unseen = [i for i in content.item_ids if i not in genre0]
    moved = model.with_history(events).score([VISITOR], unseen)[0] - model.score([VISITOR], unseen)[0]
    in_genre = np.array([int(i[1:]) % toy.GENRES == 0 for i in unseen])
    assert moved[in_genre].mean() > moved[~in_genre].mean() + 0.5, (moved[in_genre].mean(), moved[~in_genre].mean())
    genre1 = [i for i in content.item_ids if int(i[1:]) % toy.GENRES == 1][:4]
    other = client.post("/recommendations", json={"items": genre1}).json()
    assert [i["item_id"] for i in other["items"]] != listed


def test_a_known_users_published_list_says_why(home, trained):
    _, data, model = trained
    body = TestClient(create_app(home)).get("/recommendations/u3", params={"k": 5}).json()
    mine = set(data.loc[data["user_id"] == "u3", "item_id"])
    for item in body["items"]:
        assert item["because"] and {b["item_id"] for b in item["because"]} <= mine
        contributions = [b["contribution"] for b in item["because"]]
        assert contributions == sorted(contributions, reverse=True) and contributions[-1] > 0
    expected = model.explain(["u3"], [body["items"][0]["item_id"]]).iloc[0]
    assert [b["item_id"] for b in body["items"][0]["because"]] == expected["because"]


def test_a_visitor_without_known_items_or_with_a_bad_body_is_422(home):
    client = TestClient(create_app(home))
    bad = client.post("/recommendations", json={"items": ["nope", "never"]})
    assert bad.status_code == 422 and bad.json()["error"] == "unknown_items"
    assert bad.json()["ignored_items"] == ["nope", "never"]
    assert client.post("/recommendations", json={"items": []}).status_code == 422
    assert client.post("/recommendations", json={"items": ["i1"], "k": 0}).status_code == 422
    for not_an_integer in (True, "3", 2.5):
        answer = client.post("/recommendations", json={"items": ["i1"], "k": not_an_integer})
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "k"], not_an_integer
    wrong_day = client.post("/recommendations", json={"items": ["i1"], "date": "2019-01-01"})
    assert wrong_day.status_code == 404 and wrong_day.json()["error"] == "unknown_date"


def test_a_hostile_body_gets_a_short_422_not_its_input_back(home):
    client = TestClient(create_app(home))
    huge_date = client.post("/recommendations", json={"items": ["i1"], "date": "2" * 1_000_000})
    assert huge_date.status_code == 422 and len(huge_date.content) < 2_000
    body = huge_date.json()
    assert body["error"] == "invalid_request" and body["n_errors"] == 1
    (entry,) = body["detail"]
    assert entry["loc"] == ["body", "date"] and entry["type"] == "string_pattern_mismatch"
    assert entry["input"] == '"' + "2" * 199 + "…"  # its JSON text, cut to 200 characters
    too_many = client.post("/recommendations", json={"items": ["i1"] * 200_000})
    assert too_many.status_code == 422 and len(too_many.content) < 2_000
    assert too_many.json()["detail"][0]["type"] == "too_long"
    # one error per bad entry: at most 20 are listed, the count says how many there were
    numbers = client.post("/recommendations", json={"items": [[i] for i in range(500)]})
    assert numbers.status_code == 422 and numbers.json()["n_errors"] == 500
    assert len(numbers.json()["detail"]) == 20 and numbers.json()["detail"][0]["input"] == [0]
    small = client.post("/recommendations", json={"items": ["i1"], "k": "many"}).json()
    assert small["detail"][0]["input"] == "many" and small["detail"][0]["loc"] == ["body", "k"]


def test_a_day_published_without_its_model_is_503_for_visitors(home):
    (day_folder(home, DAY) / "model.json").unlink()
    client = TestClient(create_app(home))
    answer = client.post("/recommendations", json={"items": ["i1"]})
    assert answer.status_code == 503 and answer.json()["error"] == "model_not_published"
    assert client.get("/recommendations/u1").status_code == 200  # the lists still serve


def test_a_model_publish_that_fails_keeps_the_previous_model(home):
    before, info = published_model(home, DAY)
    assert info["model_version"] == "4" and (before / "model.safetensors").exists()

    def broken_save(folder):
        folder.mkdir()
        (folder / "half.bin").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish_model(home, DAY, broken_save, model_version="5")
    assert published_model(home, DAY) == (before, info)
    assert not list(day_folder(home, DAY).glob(".model-*"))  # the half-written folder is gone
    after = publish_model(home, DAY, lambda folder: folder.mkdir(), model_version="6")
    assert published_model(home, DAY)[0] == after and not before.exists()  # the replaced folder is deleted


def test_bodies_json_cannot_echo_or_too_large_are_answered_not_500(home):
    from recsys_pipeline.serving.app import MAX_BODY_BYTES

    client = TestClient(create_app(home), raise_server_exceptions=False)
    post = lambda text: client.post(  # noqa: E731  raw JSON text: NaN and lone surrogates as a client sends them
        "/recommendations", content=text.encode(), headers={"content-type": "application/json"}
    )
    for text, where, echoed in (
        ('{"items": ["i1"], "k": NaN}', ["body", "k"], "NaN"),
        ('{"items": ["i1"], "k": 1e400}', ["body", "k"], "Infinity"),
        ('{"items": ["i1"], "date": "\\ud800"}', ["body", "date"], '"\\ud800"'),
    ):
        answer = post(text)
        assert answer.status_code == 422, (text, answer.status_code, answer.text)
        (entry,) = answer.json()["detail"]
        assert entry["loc"] == where and entry["input"] == echoed, entry
    # an unknown id that is no UTF-8 text is listed as its escape; 25 unknown ids: 20 listed, all counted
    unknown = [f"nope-{n}" for n in range(24)]
    answer = post('{"items": ["i1", "\\ud800", ' + ", ".join(f'"{u}"' for u in unknown) + "]}")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["ignored_items"] == ["\\ud800", *unknown[:19]] and body["n_ignored_items"] == 25
    # over MAX_BODY_BYTES: 413 by Content-Length, and counted as it streams in when it has none
    huge = '{"items": ["i1"], "pad": "' + "z" * MAX_BODY_BYTES + '"}'
    too_large = post(huge)
    assert too_large.status_code == 413 and too_large.json()["error"] == "body_too_large"
    chunked = client.post(
        "/recommendations",
        content=iter([huge[: len(huge) // 2].encode(), huge[len(huge) // 2 :].encode()]),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 413 and chunked.json()["error"] == "body_too_large", chunked.text
    assert post('{"items": ["i1"], "k": 2}').status_code == 200  # the limit is far above a real request


def test_health_answers_head_and_the_app_errors_all_have_the_same_shape(home, tmp_path):
    client = TestClient(create_app(home))
    assert client.head("/health").status_code == 200
    for method, path, status, word in (
        ("GET", "/no-such-page", 404, "not_found"),
        ("GET", "/recommendations/", 404, "not_found"),  # no redirect built from the Host header
        ("DELETE", "/health", 405, "method_not_allowed"),
    ):
        answer = client.request(method, path, follow_redirects=False)
        assert answer.status_code == status and answer.json()["error"] == word, (path, answer.text)
        assert answer.json()["detail"]
    empty = TestClient(create_app(HomePaths.at(tmp_path / "empty"))).get("/health")
    assert empty.status_code == 503 and empty.json()["error"] == "not_published"
