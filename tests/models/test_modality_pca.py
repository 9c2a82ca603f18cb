"""The fixed PCA of wide modalities (``ModelConfig.pca_dim`` / ``pca_modalities``): fitted once on the catalog's
present vectors, read by training and inference alike, saved with the weights, never refitted on a new catalog,
and carried by a warm start."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from recsys_pipeline.content.features import ItemFeatures
from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
from recsys_pipeline.models.two_tower.modules import ModalityPCA, fit_modality_pca
from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

CPU = TrainerConfig(accelerator="cpu", devices=1)
WIDE = 48  # image width of these tests (the toy fixture's is 8)


def _wide_image(features: ItemFeatures, seed: int = 0) -> ItemFeatures:
    """``features`` with a ``WIDE``-d image: genre signal in the first 3 coordinates, noise elsewhere."""
    rng = np.random.default_rng(seed)
    genre = features.genres.argmax(axis=1)
    image = 0.2 * rng.normal(size=(len(features.item_ids), WIDE))
    image[np.arange(len(genre)), genre % 3] += 1.0
    modalities = {**features.modalities, "image": image.astype(np.float32)}
    return replace(features, modalities=modalities)


def test_fit_modality_pca_orthonormal_unit_scale_and_dominant_direction():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=20)
    direction /= np.linalg.norm(direction)
    vectors = (rng.normal(size=(300, 1)) * 5.0 * direction + 0.1 * rng.normal(size=(300, 20))).astype(np.float32)
    fitted = fit_modality_pca(vectors, 3)
    assert fitted["components"].shape == (3, 20) and fitted["mean"].shape == (20,)
    np.testing.assert_allclose(fitted["components"] @ fitted["components"].T, np.eye(3), atol=1e-5)
    assert abs(abs(float(fitted["components"][0] @ direction)) - 1.0) < 1e-3  # the planted direction comes first
    pca = ModalityPCA(20, 3)
    pca.set(fitted)
    reduced = pca(torch.from_numpy(vectors))
    assert reduced.shape == (300, 3)
    assert abs(float(reduced.norm(dim=1).mean()) - 1.0) < 1e-4  # scaled to about unit norm
    assert fit_modality_pca(vectors, 3)["components"].tobytes() == fitted["components"].tobytes()  # deterministic
    with pytest.raises(ValueError, match="PCA to 20 dimensions"):
        fit_modality_pca(vectors, 20)


@pytest.fixture(scope="module")
def wide(toy):
    features = _wide_image(toy.features())
    config = ModelConfig(**{**toy.FAST, "val_fraction": 0.0, "max_epochs": 4}, pca_dim=4)
    return features, config, TwoTowerRecommender(config, CPU).fit(toy.interactions(), features)


def test_image_is_read_through_its_pca_and_text_stays_raw(wide, toy):
    features, config, model = wide
    assert model.model.reduced_dims == {"image": 4}  # text (16-d) is not in pca_modalities
    reducer = model.model.item_tower.reducers["image"]
    image = features.modalities["image"][features.present[:, 1]]
    expected = fit_modality_pca(image, 4)  # fitted on the present images of the catalog only
    np.testing.assert_allclose(reducer.components.numpy(), expected["components"], atol=1e-6)
    assert model.model.item_tower.fusion.proj[1].in_features == 4
    raw = TwoTowerRecommender(replace(config, pca_dim=0), CPU)
    raw.fit(toy.interactions(), features)
    assert raw.model.reduced_dims == {} and raw.model.item_tower.fusion.proj[1].in_features == WIDE


def test_pca_is_saved_and_not_refitted_on_a_new_catalog(wide, toy, tmp_path):
    features, _, model = wide
    model.save(tmp_path / "m")
    back = TwoTowerRecommender.load(tmp_path / "m")
    users = ["u0", "u3", "stranger"]
    np.testing.assert_array_equal(back.score(users, features.item_ids), model.score(users, features.item_ids))
    # a catalog with new items (other image statistics): the trained PCA ranks them, it is not fitted again
    new = _wide_image(toy.features(30, seed=5, prefix="new"), seed=7)
    new = replace(new, modalities={**new.modalities, "image": new.modalities["image"] * 3 + 1})
    both = ItemFeatures(
        item_ids=features.item_ids + new.item_ids,
        modalities={m: np.concatenate([features.modalities[m], new.modalities[m]]) for m in features.modalities},
        present=np.concatenate([features.present, new.present]),
        genres=np.concatenate([features.genres, new.genres]),
        genre_names=features.genre_names,
        year=np.concatenate([features.year, new.year]),
    )
    grown = back.with_features(both)
    assert torch.equal(grown.model.item_tower.reducers["image"].mean, model.model.item_tower.reducers["image"].mean)
    np.testing.assert_allclose(
        grown.score(users, features.item_ids), model.score(users, features.item_ids), rtol=1e-5, atol=1e-6
    )
    assert np.isfinite(grown.score(users, new.item_ids)).all()


def test_warm_start_carries_the_pca_or_refuses_another_width(wide, toy):
    features, config, model = wide
    warm = TwoTowerRecommender(config, CPU).fit(toy.interactions(), features, init=model)
    assert warm.train_stats["warm_start"]
    assert torch.equal(
        warm.model.item_tower.reducers["image"].components, model.model.item_tower.reducers["image"].components
    )
    with pytest.raises(ValueError, match="cannot warm start"):
        TwoTowerRecommender(replace(config, pca_dim=6), CPU).fit(toy.interactions(), features, init=model)
