"""Artifact integrity: a registered version carries the sha256 of each of its files (weights, config, code); the
product's load paths verify them and refuse a tampered file before any of its code runs."""

import json

import pytest
from mlflow.tracking import MlflowClient

from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
from recsys_pipeline.registry import model_registry, runs, tracking

NAME = "recsys_ranker"


@pytest.fixture
def registered(tmp_path, toy):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.quiet()
    exp = tracking.experiment_id(uri, "integrity", str(tmp_path / "artifacts"))
    config = ModelConfig(**{**toy.FAST, "max_epochs": 1})
    trainer = TrainerConfig(accelerator="cpu", devices=1, num_threads=1)
    trained = runs.train_and_log(toy.interactions(), toy.features(), config, trainer, uri, exp, NAME)
    return uri, trained.model_version, tmp_path / "artifacts"


def stored(artifacts, name: str):
    (path,) = [p for p in artifacts.rglob(name) if p.is_file()]
    return path


@pytest.mark.slow
def test_digests_are_recorded_and_a_tampered_file_is_refused(registered):
    uri, version, artifacts = registered
    digests = json.loads(MlflowClient(uri).get_model_version(NAME, version).tags[tracking.INTEGRITY_TAG])
    assert {"MLmodel", "pyfunc_model.py", "artifacts/model/recommender.json"} <= set(digests)
    assert any(k.startswith("artifacts/model/") and k.endswith(".safetensors") for k in digests)
    assert all(len(v) == 64 for v in digests.values())
    model_uri = f"models:/{NAME}/{version}"
    model = model_registry.load_version(uri, model_uri)  # untouched: loads
    assert len(model.recommend(["u0"], k=3)) == 3

    code = stored(artifacts, "pyfunc_model.py")
    code.write_text(code.read_text() + "\nraise SystemExit('tampered code ran')\n")
    with pytest.raises(tracking.ArtifactIntegrityError, match=r"changed: \['pyfunc_model.py'\]"):
        model_registry.load_version(uri, model_uri)
    with pytest.raises(tracking.ArtifactIntegrityError, match="refusing to load it"):
        tracking.load_pyfunc(uri, model_uri)  # refused before the appended line could run
    code.write_text(code.read_text().removesuffix("\nraise SystemExit('tampered code ran')\n"))
    assert len(model_registry.load_version(uri, model_uri).recommend(["u0"], k=3)) == 3  # restored: loads again

    weights = next(p for p in artifacts.rglob("*.safetensors") if p.is_file())
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(tracking.ArtifactIntegrityError, match=r"changed: \['artifacts/model/.*\.safetensors'\]"):
        model_registry.load_version(uri, f"models:/{NAME}/{version}")
