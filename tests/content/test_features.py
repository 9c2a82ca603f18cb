"""The typed item-features container: validation, subsets, modality subsets and pickle-free persistence."""

import numpy as np
import pytest

from recsys_pipeline.content.features import ItemFeatures


def test_features_validate_and_npz_roundtrip(toy, tmp_path):
    content = toy.features()
    content.validate()
    path = tmp_path / "c.npz"
    content.to_npz(path)
    back = ItemFeatures.from_npz(path)
    assert back.item_ids == content.item_ids and list(back.modalities) == ["text", "image"]
    np.testing.assert_array_equal(back.modalities["image"], content.modalities["image"])
    np.testing.assert_array_equal(back.present, content.present)
    assert back.genre_names == content.genre_names
    sub = content.subset(["i3", "i1"])
    assert sub.item_ids == ["i3", "i1"] and sub.present.shape == (2, 2)
    np.testing.assert_array_equal(sub.year, content.year[[3, 1]])
    with pytest.raises(KeyError, match="1 item_ids"):
        content.subset(["i1", "nope"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.item_ids.__setitem__(1, c.item_ids[0]), "duplicate"),
        (lambda c: c.modalities["text"].__setitem__((2, 0), np.nan), "non-finite"),
        (lambda c: setattr(c, "present", c.present[:, :1]), "present"),
        (lambda c: setattr(c, "genre_names", c.genre_names[:-1]), "genre_names"),
        (lambda c: setattr(c, "year", c.year[:-1]), "year"),
    ],
)
def test_features_validate_rejects(toy, mutate, message):
    c = toy.features(10)
    mutate(c)
    with pytest.raises(ValueError, match=message):
        c.validate()


def test_with_modalities_keeps_the_rows_and_drops_the_rest(toy):
    features = toy.features(6)
    text_only = features.with_modalities(["text"])
    assert text_only.modality_names == ["text"] and text_only.present.shape == (6, 1)
    np.testing.assert_array_equal(text_only.modalities["text"], features.modalities["text"])
    with pytest.raises(KeyError, match="audio"):
        features.with_modalities(["text", "audio"])
