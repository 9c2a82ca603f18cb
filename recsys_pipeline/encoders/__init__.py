"""Content encoders: text (sentence embeddings) here; image (``encoders.image``, timm CNN) and audio
(``encoders.audio``, librosa / torchcrepe) are imported from their modules so text-only use never loads them."""

from recsys_pipeline.encoders.text import TextEncoder, content_hash, default_text_model_path

__all__ = ["TextEncoder", "content_hash", "default_text_model_path"]
