"""The content encoders: text (BERT-family), image (timm CNN) and audio (librosa / torchcrepe), with the media roots.

Unset fields take the encoder's own defaults (``content.text.TextEncoder``, ``content.image.ImageEncoder``,
``content.audio.AudioEncoder``, ``content.media.MEDIA_DEFAULTS``) or the ``RECSYS_IMAGE_*`` / ``RECSYS_AUDIO_*``
settings. Encoders are built inside the asset that uses them: importing this module loads no model.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from recsys_pipeline.settings import get_settings


def _given(**values) -> dict:
    """The keyword arguments that were set (``None`` = the callee's default)."""
    return {k: v for k, v in values.items() if v is not None}


def _roots(text: str | None, default: list) -> list:
    import os

    return [r for r in text.split(os.pathsep) if r.strip()] if text else default


class TextEncoderResource(dg.ConfigurableResource):
    """The BERT-family text encoder: ``model`` is a hub name or a local directory (unset: the packaged
    all-MiniLM-L6-v2). ``local_files_only=False`` (and ``HF_HUB_OFFLINE=0``) lets a hub name download.
    ``mode``: ``"frozen"`` (that model as published) or ``"adapted"`` (the current output of the
    ``text_encoder_adaptation`` asset under ``<home>/models/text_adapted``; unset: ``RECSYS_TEXT_ENCODER``, else
    ``frozen``). Changing it re-encodes every text at the next ``text_embeddings`` run (vectors are keyed by
    model id)."""

    model: str | None = None
    mode: str | None = None
    batch_size: int | None = None
    max_length: int | None = None
    num_threads: int | None = None
    local_files_only: bool = True

    def resolved_mode(self) -> str:
        mode = self.mode or get_settings().text_encoder
        if mode not in ("frozen", "adapted"):
            raise ValueError(f"text encoder mode must be 'frozen' or 'adapted', got {mode!r}")
        return mode

    def adapted_folder(self) -> Path:
        """Where ``text_encoder_adaptation`` writes its encoders and the ``current.json`` pointer."""
        return get_settings().paths.model_cache / "text_adapted"

    def build(self):
        from recsys_pipeline.content.text import TextEncoder

        model = self.model or None
        if self.resolved_mode() == "adapted":
            from recsys_pipeline.content.text_adaptation import adapted_text_model

            model = str(adapted_text_model(self.adapted_folder())[0])
        return TextEncoder(
            model,
            local_files_only=self.local_files_only,
            **_given(batch_size=self.batch_size, max_length=self.max_length, num_threads=self.num_threads),
        )


class ImageEncoderResource(dg.ConfigurableResource):
    """Item images and the CNN that embeds them.

    ``roots``: folders images may be read from, joined with ``os.pathsep`` (unset: ``RECSYS_IMAGE_ROOT``; relative
    catalog ``image_uri`` values and ``pattern`` resolve under them; nothing outside is read). ``pattern``: file
    name for items without an ``image_uri`` (``{item_id}`` is replaced; unset: ``RECSYS_IMAGE_PATTERN``, else
    ``{item_id}.jpg``; empty: catalog URIs only). ``model``: a timm name (unset: ``RECSYS_IMAGE_MODEL``, else the
    packaged EfficientNet-Lite0); ``weights_file``: a local state dict for it (unset: ``RECSYS_IMAGE_WEIGHTS``).
    ``cache_dir``: converted weights and the ONNX export (unset: ``<home>/models``). ``max_pixels``: larger images
    are marked missing (``too_many_pixels``) without decoding. ``backend``: ``auto`` (ONNX Runtime on CPU, PyTorch
    on a GPU), ``onnxruntime`` or ``torch``.
    """

    roots: str | None = None
    pattern: str | None = None
    model: str | None = None
    weights_file: str | None = None
    cache_dir: str | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    max_pixels: int | None = None
    max_bytes: int | None = None
    backend: str | None = None
    local_files_only: bool = True

    def locator(self):
        from recsys_pipeline.content.media import MediaLocator

        s = get_settings()
        pattern = self.pattern if self.pattern is not None else s.image_pattern
        return MediaLocator.for_modality("image", _roots(self.roots, s.image_roots()), pattern, self.max_bytes)

    def build(self):
        from recsys_pipeline.content.image import ImageEncoder

        s = get_settings()
        weights = self.weights_file or (str(s.image_weights) if s.image_weights else None)
        return ImageEncoder(
            self.model or s.image_model,
            weights_file=weights,
            cache_dir=self.cache_dir or str(s.paths.model_cache),
            local_files_only=self.local_files_only,
            **_given(
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                max_pixels=self.max_pixels,
                backend=self.backend,
            ),
        )


class AudioEncoderResource(dg.ConfigurableResource):
    """Item audio clips and how they are embedded.

    ``roots`` / ``pattern`` as for images (unset: ``RECSYS_AUDIO_ROOT`` / ``RECSYS_AUDIO_PATTERN``; the default
    pattern is none: catalog ``audio_uri`` only). ``kind``: ``librosa`` (180-d feature summary) or ``crepe``
    (torchcrepe embedding, ``crepe_model`` ``tiny`` / ``full``); unset: ``RECSYS_AUDIO_ENCODER``, else librosa.
    """

    roots: str | None = None
    pattern: str | None = None
    kind: str | None = None
    sample_rate: int | None = None
    window_seconds: float | None = None
    min_seconds: float | None = None
    crepe_model: str | None = None
    max_bytes: int | None = None

    def locator(self):
        from recsys_pipeline.content.media import MediaLocator

        s = get_settings()
        pattern = self.pattern if self.pattern is not None else s.audio_pattern
        return MediaLocator.for_modality("audio", _roots(self.roots, s.audio_roots()), pattern, self.max_bytes)

    def build(self):
        from recsys_pipeline.content.audio import AudioEncoder

        kind = self.kind or get_settings().audio_encoder
        return AudioEncoder(
            *([kind] if kind else []),
            **_given(
                sample_rate=self.sample_rate,
                window_seconds=self.window_seconds,
                min_seconds=self.min_seconds,
                crepe_model=self.crepe_model,
            ),
        )
