"""Adapt the text encoder to the recommendation data: contrastive fine-tuning on items that the same user
interacted with one after the other.

Positive pairs are consecutive items of a user's time-ordered history (``co_interaction_pairs``); each batch uses
the other pairs' items as negatives (in-batch negatives; the loss of sentence-transformers'
``MultipleNegativesRankingLoss``, Henderson et al. 2017, "Efficient Natural Language Response Suggestion for Smart
Reply"): cross-entropy of the positive among the batch's candidates, cosine similarities scaled by 20. The encoder
is the same mean-pooled BERT-family model :class:`~recsys_pipeline.content.text.TextEncoder` reads, trained with
PyTorch Lightning and saved with ``save_pretrained``, so ``TextEncoder(<folder>)`` encodes with it.

Only the interactions given are read: pass a protocol's train part to keep held-out items' interactions out (their
texts may still be encoded afterwards: that is what a new item has).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import Mapping  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

__all__ = [
    "AdaptationConfig",
    "co_interaction_pairs",
    "adapt_text_encoder",
    "ADAPTED_POINTER",
    "adapted_text_model",
    "set_adapted_text_model",
]

ADAPTED_POINTER = "current.json"  # <folder>/current.json names the adapted encoder text_embeddings uses


@dataclass(frozen=True)
class AdaptationConfig:
    """Settings of :func:`adapt_text_encoder`.

    Attributes:
        steps: optimiser steps (batches).
        batch_size: pairs per batch (each pair's positive is a negative for the others).
        lr: AdamW learning rate (2e-5: the usual fine-tuning rate of sentence-transformers).
        max_length: tokens per text (the catalog texts: title, genres, tags).
        max_pairs: at most this many distinct pairs are drawn (seeded).
        scale: similarity scale of the loss (sentence-transformers' default 20).
        seed: pair sampling and batch order.
    """

    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-5
    max_length: int = 64
    max_pairs: int = 50_000
    scale: float = 20.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_length", "max_pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and self.scale > 0):
            raise ValueError("lr and scale must be > 0")


def co_interaction_pairs(interactions: pd.DataFrame, max_pairs: int = 50_000, seed: int = 0) -> pd.DataFrame:
    """Positive pairs: each user's consecutive items by time (``anchor`` then ``positive``), distinct unordered
    pairs of two different items, at most ``max_pairs`` drawn at random (``seed``).

    Args:
        interactions: ``user_id, item_id, timestamp``.

    Returns:
        ``anchor, positive`` (str); empty when no user has two items.
    """
    events = interactions[["user_id", "item_id", "timestamp"]].astype({"user_id": str, "item_id": str})
    events = events.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    same_user = events["user_id"].to_numpy()[1:] == events["user_id"].to_numpy()[:-1]
    items = events["item_id"].to_numpy()
    pairs = pd.DataFrame({"anchor": items[:-1][same_user], "positive": items[1:][same_user]})
    pairs = pairs[pairs["anchor"] != pairs["positive"]]
    low = np.minimum(pairs["anchor"].to_numpy(), pairs["positive"].to_numpy())
    high = np.maximum(pairs["anchor"].to_numpy(), pairs["positive"].to_numpy())
    pairs = pd.DataFrame({"anchor": low, "positive": high}).drop_duplicates(ignore_index=True)
    if len(pairs) > max_pairs:
        pairs = pairs.sample(n=max_pairs, random_state=seed).reset_index(drop=True)
    return pairs


class _ContrastiveText(L.LightningModule):
    """The encoder under a symmetric in-batch softmax over cosine similarities."""

    def __init__(self, model, config: AdaptationConfig):
        super().__init__()
        self.model = model
        self.config = config

    def _embed(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
        return F.normalize((out * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)

    def training_step(self, batch, _):
        anchor, positive = self._embed(batch["anchor"]), self._embed(batch["positive"])
        logits = anchor @ positive.T * self.config.scale
        target = torch.arange(len(logits), device=logits.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        self.log("adaptation_loss", loss, prog_bar=False, on_step=True, batch_size=len(logits))
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.config.lr)


def adapt_text_encoder(
    texts: Mapping[str, str],
    pairs: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    base: str | os.PathLike[str] | None = None,
    config: AdaptationConfig | None = None,
    logger=None,
    accelerator: str = "auto",
) -> dict:
    """Fine-tune the text encoder on ``pairs`` and save it to ``out_dir`` (``save_pretrained``: a folder that
    :class:`~recsys_pipeline.content.text.TextEncoder` loads).

    Args:
        texts: ``item_id -> text`` (the catalog's); pairs with an item missing here are left out.
        pairs: ``anchor, positive`` item ids (:func:`co_interaction_pairs` of a train part).
        out_dir: where the adapted model and tokenizer are written (created; replaced files).
        base: the model to start from (default: the packaged all-MiniLM-L6-v2).
        config: :class:`AdaptationConfig`.
        logger: a Lightning logger (e.g. ``MLFlowLogger``) for ``adaptation_loss`` per step.
        accelerator: Lightning's (``"auto"``: a GPU when there is one).

    Returns:
        ``{"pairs": pairs used, "steps": steps run, "seconds": wall time, "first_loss": ..., "last_loss": ...}``
        (losses: mean over the first and last 10 % of steps).

    Raises:
        ValueError: no pair has both texts.
    """
    import time

    from transformers import AutoModel, AutoTokenizer

    from recsys_pipeline.content.text import default_text_model_path

    config = config or AdaptationConfig()
    usable = pairs[pairs["anchor"].astype(str).isin(texts) & pairs["positive"].astype(str).isin(texts)]
    if usable.empty:
        raise ValueError("adapt_text_encoder: no pair has both items' texts")
    source = str(base) if base is not None else default_text_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    model = AutoModel.from_pretrained(source, local_files_only=True)
    anchors = [texts[str(i)] for i in usable["anchor"]]
    positives = [texts[str(i)] for i in usable["positive"]]

    def collate(rows: list[int]) -> dict:
        def tok(batch: list[str]) -> dict:
            enc = tokenizer(batch, truncation=True, max_length=config.max_length, padding=True, return_tensors="pt")
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

        return {"anchor": tok([anchors[r] for r in rows]), "positive": tok([positives[r] for r in rows])}

    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(
        list(range(len(usable))),
        batch_size=min(config.batch_size, len(usable)),
        shuffle=True,
        drop_last=len(usable) >= config.batch_size,
        collate_fn=collate,
        generator=generator,
    )
    losses: list[float] = []

    class _Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    L.seed_everything(config.seed, workers=False, verbose=False)
    module = _ContrastiveText(model, config)
    trainer = L.Trainer(
        max_steps=config.steps,
        accelerator=accelerator,
        devices=1,
        logger=logger if logger is not None else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_Record()],
        log_every_n_steps=10,
        deterministic="warn",  # same seed and threads, same encoder (see TrainerConfig.deterministic)
    )
    started = time.perf_counter()
    model.train()
    trainer.fit(module, loader)
    seconds = time.perf_counter() - started
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tail = max(1, len(losses) // 10)
    return {
        "pairs": len(usable),
        "steps": len(losses),
        "seconds": seconds,
        "first_loss": float(np.mean(losses[:tail])) if losses else float("nan"),
        "last_loss": float(np.mean(losses[-tail:])) if losses else float("nan"),
    }


def set_adapted_text_model(folder: str | os.PathLike[str], model_dir: str | os.PathLike[str], **info: str) -> Path:
    """Make ``model_dir`` (inside ``folder``) the adapted text encoder: ``folder/current.json`` names it, replaced
    atomically (with ``info``, e.g. the MLflow run). Returns the pointer's path."""
    import json
    import tempfile

    folder = Path(folder)
    pointer = folder / ADAPTED_POINTER
    text = json.dumps({"path": str(Path(model_dir).resolve()), **info}, sort_keys=True)
    fd, tmp = tempfile.mkstemp(prefix=".current-", suffix=".json.tmp", dir=folder)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, pointer)
    return pointer


def adapted_text_model(folder: str | os.PathLike[str]) -> tuple[Path, dict]:
    """``(model folder, info)`` of the current adapted text encoder under ``folder``.

    Raises:
        FileNotFoundError: none was made yet (materialize ``text_encoder_adaptation``), or its folder is gone.
    """
    import json

    pointer = Path(folder) / ADAPTED_POINTER
    try:
        info = json.loads(pointer.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no adapted text encoder under {folder}: materialize `text_encoder_adaptation` first (or use the "
            "frozen encoder)"
        ) from None
    path = Path(info["path"])
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"the adapted text encoder {path} named by {pointer} is missing")
    return path, info
