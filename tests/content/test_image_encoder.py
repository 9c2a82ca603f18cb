"""Image encoder: packaged EfficientNet-Lite0 mapping, a local ResNet-18 state dict, generated and corrupt images."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recsys_pipeline.content.image import (
    DEFAULT_IMAGE_MODEL,
    ImageEncoder,
    build_timm_model,
    load_image,
    packaged_efficientnet_lite0,
)

COMIC_BOOK, BOOK_JACKET = 917, 921  # ImageNet-1k class indices


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def encoder(cache):
    return ImageEncoder(cache_dir=cache, batch_size=4)


def _png_header_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose IHDR claims ``width`` x ``height`` (valid CRC): a decompression-bomb header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    red = tmp_path / "red.jpg"
    Image.new("RGB", (320, 480), (200, 30, 30)).save(red, quality=90)
    noise = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(noise)
    gray = tmp_path / "gray.webp"
    Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (128, 1)), mode="L").save(gray)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(red.read_bytes()[:600])
    (tmp_path / "random.jpg").write_bytes(rng.bytes(5000))
    (tmp_path / "text.jpg").write_text("<html>not an image</html>")
    bomb = _png_header_claiming(tmp_path / "bomb.png", 50_000, 50_000)
    return [red, noise, gray, truncated, tmp_path / "random.jpg", tmp_path / "text.jpg", bomb]


def test_packaged_weights_map_by_position_onto_timm(cache):
    path = packaged_efficientnet_lite0(cache)
    assert path.is_file() and path.name.startswith(DEFAULT_IMAGE_MODEL)
    assert packaged_efficientnet_lite0(cache) == path  # converted once, then reused
    # the id follows the package's weights, not the converted file: the same in every cache (no re-encoding)
    ids = {build_timm_model(None, None, folder)[1] for folder in (cache, cache.parent / "another-cache")}
    assert ids == {f"{DEFAULT_IMAGE_MODEL}:{path.name.split('.')[1]}"}
    import timm
    from safetensors.torch import load_file

    mapped = load_file(str(path))
    reference = timm.create_model(DEFAULT_IMAGE_MODEL, pretrained=False).state_dict()
    assert set(mapped) == set(reference)
    assert all(mapped[k].shape == reference[k].shape for k in reference)


def test_mapped_classifier_recognises_posters(cache, posters_dir):
    """With the mapping right, posters come out as posters (comic book / book jacket), confidently."""
    from timm.data import create_transform, resolve_data_config

    net, _ = build_timm_model(None, None, cache, num_classes=1000)
    transform = create_transform(**resolve_data_config({}, model=net))
    ids = ["1", "2", "1210"]  # Toy Story, Jumanji, Return of the Jedi
    batch = torch.stack([transform(Image.open(posters_dir / f"{i}.jpg").convert("RGB")) for i in ids])
    with torch.no_grad():
        probs = net(batch).softmax(dim=1)
    top = probs.argmax(dim=1).tolist()
    assert top == [COMIC_BOOK, COMIC_BOOK, COMIC_BOOK]
    assert probs[0, COMIC_BOOK] > 0.9  # Toy Story; a wrong key mapping gives near-uniform or arbitrary classes


def test_generated_and_corrupt_images(encoder, tmp_path):
    files = _images(tmp_path)
    out = encoder.encode_files(files)
    assert out.positions == [0, 1, 2]
    assert out.vectors.shape == (3, 1280) and out.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-5)
    reasons = {files[i].name: f.reason for i, f in out.failures.items()}
    assert reasons == {
        "truncated.jpg": "corrupt",
        "random.jpg": "unsupported_format",
        "text.jpg": "unsupported_format",
        "bomb.png": "too_many_pixels",
    }
    assert encoder.data_config["input_size"] == (3, 224, 224) and encoder.data_config["mean"] == (0.5, 0.5, 0.5)
    # batching does not change a vector; different images give different vectors
    alone = encoder.encode_files(files[:1]).vectors[0]
    np.testing.assert_allclose(alone, out.vectors[0], atol=1e-5)
    assert float(out.vectors[0] @ out.vectors[1]) < 0.95


def test_onnxruntime_and_torch_backends_give_the_same_vectors(encoder, cache, tmp_path):
    assert encoder.backend == "onnxruntime"  # the CPU default
    [exported] = list(Path(cache).glob(f"{DEFAULT_IMAGE_MODEL}*.onnx"))
    exported_at = exported.stat().st_mtime_ns
    eager = ImageEncoder(cache_dir=cache, batch_size=4, backend="torch")
    assert eager.backend == "torch" and eager.model_id == encoder.model_id  # same weights: stored vectors stay valid
    files = _images(tmp_path)[:3]
    ours, reference = encoder.encode_files(files), eager.encode_files(files)
    assert ours.positions == reference.positions == [0, 1, 2]
    cosines = np.sum(ours.vectors * reference.vectors, axis=1)
    assert cosines.min() > 0.99999
    again = ImageEncoder(cache_dir=cache, batch_size=4, backend="onnxruntime")  # the export is reused, not redone
    assert (
        list(Path(cache).glob(f"{DEFAULT_IMAGE_MODEL}*.onnx")) == [exported]
        and exported.stat().st_mtime_ns == exported_at
    )
    np.testing.assert_allclose(again.encode_files(files).vectors, ours.vectors, atol=1e-6)
    with pytest.raises(ValueError, match="backend must be one of"):
        ImageEncoder(cache_dir=cache, backend="tensorrt")


def test_max_pixels_is_checked_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (200, 100)).save(path)
    assert load_image(path, max_pixels=19_999).reason == "too_many_pixels"
    assert load_image(path, max_pixels=20_000).size == (200, 100)
    header = _png_header_claiming(tmp_path / "header.png", 7000, 7000)  # 49 M pixels: under PIL's own limit
    assert load_image(header, max_pixels=40_000_000).detail == "7000x7000 > 40000000 pixels"


def test_resnet18_from_a_local_state_dict(tmp_path, cache):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False).eval()
    weights = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    enc = ImageEncoder("resnet18", weights_file=weights, cache_dir=cache)
    assert enc.dim == 512 and enc.model_id.startswith("resnet18:")
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(image)
    got = enc.encode_files([image]).vectors[0]
    reference.reset_classifier(0)
    with torch.no_grad():
        x = enc.transform(Image.open(image).convert("RGB"))[None]
        want = torch.nn.functional.normalize(reference(x), dim=1)[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)  # the encoder runs exactly the saved weights


def test_unavailable_models_fail_clearly(tmp_path, cache):
    with pytest.raises(FileNotFoundError, match="weights file"):
        ImageEncoder("resnet50", weights_file=tmp_path / "nope.safetensors", cache_dir=cache)
    with pytest.raises(OSError, match="not available locally"):
        ImageEncoder("resnet50.a1_in1k", cache_dir=cache)


def test_image_embeddings_asset_second_run_encodes_nothing(tmp_path, cache, monkeypatch):
    import dagster as dg

    from recsys_pipeline.assets import content_assets
    from recsys_pipeline.data import warehouse
    from recsys_pipeline.resources import ImageEncoderResource, WarehouseResource

    days = dg.DailyPartitionsDefinition(start_date="2020-01-01", end_date="2020-01-03", timezone="UTC")
    image_embeddings = next(a for a in content_assets(days) if a.key.to_user_string() == "image_embeddings")

    root = tmp_path / "posters"
    root.mkdir()
    files = _images(root)  # 3 good images, 4 bad ones
    db = tmp_path / "w.duckdb"
    with warehouse.session(db) as con:
        con.execute("CREATE TABLE item_catalog (item_id VARCHAR, image_uri VARCHAR, audio_uri VARCHAR, added_at DATE)")
        rows = [[p.stem, p.name, None] for p in files] + [["no_file", None, None], ["escape", "../w.duckdb", None]]
        con.executemany("INSERT INTO item_catalog VALUES (?, ?, ?, '2020-01-01')", rows)
        con.execute("INSERT INTO item_catalog VALUES ('tomorrow', 'later.png', NULL, '2020-01-02')")  # added later
    resources = {
        "warehouse_db": WarehouseResource(path=str(db)),
        "image_encoder": ImageEncoderResource(roots=str(root), cache_dir=str(cache), batch_size=4),
    }
    meta = []
    for _ in range(2):
        result = dg.materialize([image_embeddings], resources=resources, partition_key="2020-01-01")
        meta.append(
            {k: v.value for k, v in result.asset_materializations_for_node("image_embeddings")[0].metadata.items()}
        )
    assert (meta[0]["dagster/row_count"], meta[0]["encoded"], meta[0]["missing"]) == (3, 3, 6)
    assert (meta[1]["dagster/row_count"], meta[1]["decoded"], meta[1]["encoded"], meta[1]["reused"]) == (3, 0, 0, 3)
    details = {r.data["what"]: r.data["value"] for r in meta[1]["details"].records}
    assert details["missing: missing"] == "1" and details["missing: outside_roots"] == "1"
    assert details["missing: too_many_pixels"] == "1" and details["missing: unsupported_format"] == "2"
    with warehouse.session(db, read_only=True) as con:
        assert warehouse.row_count(con, "image_embeddings") == 3
        assert warehouse.row_count(con, "media_failures") == 6  # the item added on 2020-01-02 is not looked at yet
    later = dg.materialize([image_embeddings], resources=resources, partition_key="2020-01-02")
    assert later.asset_materializations_for_node("image_embeddings")[0].metadata["missing"].value == 7
    with warehouse.session(db, read_only=True) as con:  # the catalog as of 2020-01-02: one more item, no file
        assert con.execute("SELECT reason FROM media_failures WHERE item_id = 'tomorrow'").fetchall() == [("missing",)]
        assert warehouse.row_count(con, "image_embeddings") == 3
    # a run without the folder setting (a command run without the demo's RECSYS_IMAGE_ROOT) keeps the vectors
    monkeypatch.delenv("RECSYS_IMAGE_ROOT", raising=False)
    unset = {**resources, "image_encoder": ImageEncoderResource(cache_dir=str(cache), batch_size=4)}
    kept = dg.materialize([image_embeddings], resources=unset, partition_key="2020-01-02")
    entries = kept.asset_materializations_for_node("image_embeddings")[0].metadata
    assert entries["kept without a source"].value == 3 and entries["dagster/row_count"].value == 3
    with warehouse.session(db, read_only=True) as con:
        assert warehouse.row_count(con, "image_embeddings") == 3
        assert con.execute("SELECT count(*) FROM media_failures WHERE reason = 'no_source'").fetchone() == (0,)
