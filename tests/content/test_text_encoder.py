"""TextEncoder against the real packaged all-MiniLM-L6-v2 (no network)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from recsys_pipeline.content.text import TextEncoder, content_hash, default_text_model_path

TOY1 = "Toy Story (1995) Animation Children Comedy"
TOY2 = "Toy Story 2 (1999) Animation Children Comedy"
SCHINDLER = "Schindler's List (1993) Drama War"
SHORT = "Heat"
LONG = (
    "Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb (1964) Comedy War "
    "a satirical black comedy about an unhinged general who orders a nuclear first strike on the Soviet Union, "
    "while the president, his advisers and a Royal Air Force exchange officer try to recall the bombers"
)
MIXED = [LONG, SHORT, TOY1, "", SCHINDLER, "Alien (1979) Horror Sci-Fi", TOY2, "Aliens (1986) Action Horror Sci-Fi"]


@pytest.fixture(scope="module")
def enc() -> TextEncoder:
    # batch_size 3 so that the MIXED list spans several length-sorted, dynamically padded batches
    return TextEncoder(batch_size=3, num_threads=2)


def test_default_model_path_and_ids(enc: TextEncoder) -> None:
    assert os.path.isfile(os.path.join(default_text_model_path(), "config.json"))
    assert enc.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert enc.dim == 384
    assert str(enc.device) in ("cpu", "cuda")
    assert not enc.model.training


def test_content_hash() -> None:
    assert content_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert content_hash("é") != content_hash("e")


def test_shape_dtype_unit_norm(enc: TextEncoder) -> None:
    calls: list[tuple[int, int]] = []
    x = enc.encode(MIXED, progress=lambda d, t: calls.append((d, t)))
    assert x.shape == (len(MIXED), 384)
    assert x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert calls[-1] == (len(MIXED), len(MIXED))
    assert len(calls) == math.ceil(len(MIXED) / 3)


def test_empty_input(enc: TextEncoder) -> None:
    x = enc.encode([])
    assert x.shape == (0, 384)
    assert x.dtype == np.float32


def test_order_preserved(enc: TextEncoder) -> None:
    texts = [SHORT, LONG, TOY1, ""]
    together = enc.encode(texts)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(together[i], enc.encode([t])[0], atol=1e-5)


def test_related_titles_closer(enc: TextEncoder) -> None:
    toy1, toy2, schindler, alien, aliens = enc.encode(
        [TOY1, TOY2, SCHINDLER, "Alien (1979) Horror Sci-Fi", "Aliens (1986) Action Horror Sci-Fi"]
    )
    assert float(toy1 @ toy2) > float(toy1 @ schindler)
    assert float(alien @ aliens) > float(alien @ toy1)


def test_matches_sentence_transformers(enc: TextEncoder) -> None:
    st = pytest.importorskip("sentence_transformers")
    ref_model = st.SentenceTransformer(default_text_model_path(), device="cpu")
    ref = ref_model.encode(MIXED, normalize_embeddings=True)
    np.testing.assert_allclose(enc.encode(MIXED), ref, atol=1e-4)


def test_missing_local_dir(tmp_path) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        TextEncoder(str(missing))


def test_hub_name_not_cached_gives_clear_error() -> None:
    with pytest.raises(OSError, match="not found locally"):
        TextEncoder("recsys-pipeline-tests/no-such-model-xyz")


@pytest.mark.parametrize("bad", [None, float("nan")])
def test_missing_text_rejected(enc: TextEncoder, bad) -> None:
    with pytest.raises(ValueError, match="index 1"):
        enc.encode(["ok", bad])
