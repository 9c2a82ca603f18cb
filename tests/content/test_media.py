"""Locating media under configured roots only, and the incremental media sync (real audio encoder, real files)."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recsys_pipeline.content.audio import AudioEncoder
from recsys_pipeline.content.features import build_item_features, load_item_features
from recsys_pipeline.content.media import MediaFailure, MediaLocator, sync_media_embeddings
from recsys_pipeline.data import warehouse

FSDD = Path(__file__).resolve().parents[1] / "fixtures" / "fsdd"


def _sine(path: Path, freq: float, seconds: float = 1.0, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
    return path


@pytest.fixture
def media_root(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"x")
    (tmp_path / "secret.jpg").write_bytes(b"outside")
    os.symlink(tmp_path / "secret.jpg", root / "link.jpg")
    return root


def test_locator_resolves_only_inside_roots(media_root, tmp_path):
    loc = MediaLocator([media_root], pattern="{item_id}.jpg")
    assert loc.locate("a") == ("a.jpg", (media_root / "a.jpg").resolve())
    assert loc.locate("zzz", "a.jpg")[1] == (media_root / "a.jpg").resolve()  # the catalog URI wins
    assert loc.locate("x", f"file://{media_root / 'a.jpg'}")[1] == (media_root / "a.jpg").resolve()
    for uri in ("../secret.jpg", str(tmp_path / "secret.jpg"), "link.jpg", "sub/../../secret.jpg"):
        used, failure = loc.locate("x", uri)
        assert failure == MediaFailure("outside_roots", "path resolves outside every configured root"), uri
    assert loc.locate("../secret")[1].reason == "outside_roots"  # an item id cannot escape through the pattern
    assert loc.locate("b")[1].reason == "missing"
    assert loc.locate("x", "https://example.com/a.jpg")[1].reason == "remote_uri"
    assert MediaLocator([media_root]).locate("a")[1].reason == "no_source"
    assert MediaLocator([], "{item_id}.jpg").locate("a")[1].reason == "no_source"
    with pytest.raises(ValueError, match="item_id"):
        MediaLocator([media_root], pattern="poster.jpg")


def test_locator_read_refuses_empty_and_oversized(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "big.wav").write_bytes(b"0" * 101)
    loc = MediaLocator([tmp_path], max_bytes=100)
    assert loc.read(tmp_path / "empty.wav").reason == "empty"
    assert loc.read(tmp_path / "big.wav").reason == "too_large"
    assert loc.read(tmp_path / "gone.wav").reason == "unreadable"


@pytest.fixture
def catalog_con(tmp_path):
    con = warehouse.connect(tmp_path / "w.duckdb")
    ids = ["good_sine", "good_fsdd", "empty", "text", "short", "missing", "noise", "escape"]
    con.execute("CREATE TABLE item_catalog (item_id VARCHAR, genres VARCHAR[], year INTEGER, added_at DATE)")
    con.executemany("INSERT INTO item_catalog VALUES (?, ['Drama'], 2000, '2020-01-01')", [[i] for i in ids])
    yield con, ids
    con.close()


def _write_audio_files(root: Path) -> dict[str, str | None]:
    root.mkdir(exist_ok=True)
    _sine(root / "good_sine.wav", 440.0)
    shutil.copy(FSDD / "7_lucas_0.wav", root / "good_fsdd.wav")
    (root / "empty.wav").write_bytes(b"")
    (root / "text.wav").write_text("this is not audio\n")
    _sine(root / "short.wav", 440.0, seconds=0.02)
    (root / "noise.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    return {"escape": "../w.duckdb"}


def test_sync_reports_each_bad_file_and_reencodes_only_changes(catalog_con, tmp_path):
    con, ids = catalog_con
    root = tmp_path / "audio"
    uris = _write_audio_files(root)
    loc = MediaLocator([root], pattern="{item_id}.wav")
    encoder = AudioEncoder(window_seconds=1.0)
    catalog_uris = [uris.get(i) for i in ids]

    first = sync_media_embeddings(con, "audio", "audio_embeddings", encoder, ids, catalog_uris, loc)
    assert (first.embedded, first.encoded, first.missing) == (2, 2, 6)
    assert first.missing_by_reason == {
        "empty": 1,
        "missing": 1,
        "outside_roots": 1,
        "too_short": 1,
        "unsupported_format": 2,
    }
    failures = dict(con.execute("SELECT item_id, reason FROM media_failures WHERE modality = 'audio'").fetchall())
    assert failures == {
        "empty": "empty",
        "text": "unsupported_format",
        "short": "too_short",
        "missing": "missing",
        "noise": "unsupported_format",
        "escape": "outside_roots",
    }
    rows = con.execute("SELECT item_id, model_id, len(embedding) FROM audio_embeddings ORDER BY item_id").fetchall()
    assert rows == [("good_fsdd", encoder.model_id, 180), ("good_sine", encoder.model_id, 180)]

    second = sync_media_embeddings(con, "audio", "audio_embeddings", encoder, ids, catalog_uris, loc)
    assert (second.decoded, second.encoded, second.reused, second.embedded, second.missing) == (0, 0, 2, 2, 6)
    assert second.missing_by_reason == first.missing_by_reason  # known-bad files are skipped by their hash

    _sine(root / "good_sine.wav", 880.0)  # bytes changed
    shutil.copy(FSDD / "0_george_0.wav", root / "short.wav")  # a failed item gets a good file
    (root / "good_fsdd.wav").unlink()  # a good item loses its file
    third = sync_media_embeddings(con, "audio", "audio_embeddings", encoder, ids, catalog_uris, loc)
    assert (third.decoded, third.encoded, third.reused, third.removed, third.embedded) == (2, 2, 0, 1, 2)
    assert third.missing_by_reason["missing"] == 2
    stored = {r[0] for r in con.execute("SELECT item_id FROM audio_embeddings").fetchall()}
    assert stored == {"good_sine", "short"}


def test_item_features_mask_follows_the_embeddings(catalog_con, tmp_path):
    con, ids = catalog_con
    root = tmp_path / "audio"
    uris = _write_audio_files(root)
    sync_media_embeddings(
        con,
        "audio",
        "audio_embeddings",
        AudioEncoder(window_seconds=1.0),
        ids,
        [uris.get(i) for i in ids],
        MediaLocator([root], pattern="{item_id}.wav"),
    )
    counts = build_item_features(con)
    assert counts["audio_present"] == 2 and counts["image_present"] == 0 and counts["items"] == len(ids)
    nulls = con.execute(
        "SELECT count(*) FROM item_features WHERE NOT audio_present AND audio_embedding IS NULL"
    ).fetchall()[0][0]
    assert nulls == 6
    # text is absent for every item here, image too: the model content holds audio only, with its mask
    content = load_item_features(con)
    assert list(content.modalities) == ["audio"]
    present = dict(zip(content.item_ids, content.present[:, 0]))
    assert {i for i, p in present.items() if p} == {"good_sine", "good_fsdd"}
    row = content.item_ids.index("good_sine")
    stored = con.execute("SELECT embedding FROM audio_embeddings WHERE item_id = 'good_sine'").fetchall()[0][0]
    np.testing.assert_allclose(content.modalities["audio"][row], np.asarray(stored, dtype=np.float32))


def test_no_files_at_all_leaves_no_table_and_counts_reasons(catalog_con):
    con, ids = catalog_con
    built = []
    report = sync_media_embeddings(
        con, "audio", "audio_embeddings", lambda: built.append(1), ids, [None] * len(ids), MediaLocator([], None)
    )
    assert built == []  # the encoder factory is never called when there is nothing to encode
    assert (report.embedded, report.missing, report.missing_by_reason) == (0, len(ids), {"no_source": len(ids)})
    assert not warehouse.table_exists(con, "audio_embeddings")
    assert warehouse.row_count(con, "media_failures") == len(ids)
