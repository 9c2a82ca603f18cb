"""Content encoders: text (sentence embeddings)."""

from recsys_pipeline.encoders.text import TextEncoder, content_hash, default_text_model_path

__all__ = ["TextEncoder", "content_hash", "default_text_model_path"]
