"""Recommender contract (Cornac-style ``fit``/``score``), baselines, the trained two-tower model and its training.

Every model honours :class:`Recommender`: ``score(user_ids, item_ids) -> (n_users, n_items) float32``, so
evaluation code never needs to know which model it evaluates.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch

from .content import ItemContent, item_table
from .lightning_module import BestStateCallback, RecommenderModule, compute_item_vectors
from .modules import TwoTowerModel

__all__ = [
    "ModelConfig",
    "TrainerConfig",
    "Recommender",
    "PopularityRecommender",
    "RandomRecommender",
    "TrainedRecommender",
    "train_recommender",
    "FORMAT_VERSION",
]

FORMAT_VERSION = 2  # 2: history head (``user_tower.folded_history``, ``next_item_emb``); 1: plain two-tower
_READABLE_FORMATS = (1, 2)
_HISTORY_PREFIX = "user_tower.history."  # the pooling module: training only
_FOLDED_KEY = "user_tower.folded_history"


@dataclass
class ModelConfig:
    """Model and optimisation settings.

    Defaults were chosen on MovieLens ml-latest-small (per-user last-20% holdout, MiniLM text vectors); see the
    tuning notes in the hand-over: larger lr / batch, a linear MLP shortcut (``skip``) and stronger weight decay
    all converged faster but to worse NDCG@10. ``refit=True`` (default) retrains on all interactions for the best
    epoch count after early stopping: measured +0.018 NDCG@10 / +0.005 Recall@20 on the per-user holdout
    (0.1125 / 0.1002 vs 0.0942 / 0.0953; popularity 0.0868 / 0.0676) at ~1.5× the training time.

    Negatives (every loss) are drawn only from items with training interactions: an item nobody has interacted
    with yet is unknown, not disliked. ``loss="softmax"`` is the full softmax over all those items (no sampling
    bias; ~8x the CPU time per step of 512 sampled negatives on ml-latest-small: 0.50 vs 0.065 CPU-s per batch of
    1024).

    ``history_length=L > 0`` (default 50) adds a history head: a learned recency-weighted pooling of the user's last
    ``L`` items (:class:`~recsys_pipeline.model.modules.HistoryPooling`; causal in training: only items before the
    positive), scored against a separate item-id output embedding only
    (:class:`~recsys_pipeline.model.modules.TwoTowerModel`), so a new item is ranked by the id embedding and its
    content alone; it is stored per user after training. ``history_dropout`` hides a training pair's whole history
    so the id-and-content part also learns to rank on its own. On the validation split carved from the
    benchmark's train split (text only, seed 0), no history -> history head: per-user holdout NDCG@10 0.088 ->
    0.153, Recall@20 0.108 -> 0.183; item cold start NDCG@10 0.273 -> 0.313, Recall@20 0.222 -> 0.263
    (``history_dropout`` 0: 0.254 / 0.231). Figures per change: ``benchmarks/results/model_changes.md``; benchmark:
    ``benchmarks/quality.py`` (``benchmarks/results/quality.md``).
    """

    embedding_dim: int = 64
    fusion: str = "attention"  # "attention" | "concat"
    n_heads: int = 4
    cross_layers: int = 1
    mlp_hidden: int = 64
    skip: bool = False  # linear shortcut around the item MLP (measured: overfits faster on ml-latest-small)
    dropout: float = 0.1
    id_dropout: float = 0.3
    modality_dropout: float = 0.2
    loss: str = "sampled_softmax"  # "softmax" (full, over every known item) | "sampled_softmax" | "bpr"
    history_length: int = 50  # history head: recency-weighted pooling of the last L items (0 = off)
    history_dropout: float = 0.25  # training: probability of hiding a pair's whole history
    num_negatives: int = 512
    lr: float = 3e-3
    weight_decay: float = 1e-5
    batch_size: int = 1024
    max_epochs: int = 20
    patience: int = 2
    val_fraction: float = 0.1
    refit: bool = True  # after early stopping, retrain on all interactions for the best epoch count
    seed: int = 42

    def __post_init__(self) -> None:
        if self.history_length < 0:
            raise ValueError(f"history_length must be >= 0 (0 = off), got {self.history_length}")
        if not 0.0 <= self.history_dropout < 1.0:
            raise ValueError(f"history_dropout must be in [0, 1) (1 would never train the history), got {self.history_dropout}")

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` settings; ``strategy="ddp"`` (with ``devices``/``num_nodes``) for distributed runs.

    ``num_threads``: ``torch.set_num_threads`` before training (``None`` = torch default). On a CPU shared with other
    busy processes ``1`` was measured 3x faster than 2 threads on 2 cores (OpenMP oversubscription).
    """

    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    num_nodes: int = 1
    num_threads: int | None = None
    enable_progress_bar: bool = False


@runtime_checkable
class Recommender(Protocol):
    """``score(user_ids, item_ids) -> (len(user_ids), len(item_ids)) float32``; higher = more relevant.

    Unknown users must get a defined fallback score (e.g. popularity), never an error.
    """

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray: ...


class PopularityRecommender:
    """Scores every item by its number of interactions in ``fit`` data (same for every user; unseen items 0)."""

    def __init__(self) -> None:
        self.counts: pd.Series | None = None

    def fit(self, interactions: pd.DataFrame) -> PopularityRecommender:
        self.counts = interactions["item_id"].astype(str).value_counts()
        return self

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        if self.counts is None:
            raise RuntimeError("PopularityRecommender.score called before fit")
        s = self.counts.reindex(pd.Index([str(i) for i in item_ids])).fillna(0).to_numpy(np.float32)
        return np.broadcast_to(s, (len(user_ids), len(s))).copy()


class RandomRecommender:
    """Uniform random scores (a floor for any metric); deterministic given ``seed``."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, interactions: pd.DataFrame) -> RandomRecommender:
        return self

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.random((len(user_ids), len(item_ids)), dtype=np.float32)


class TrainedRecommender:
    """A trained two-tower model plus its index maps and the item content it scores from.

    Attributes:
        config: the :class:`ModelConfig` it was trained with.
        user_ids: known users (index ``i+1`` in the user embedding); others score as the unknown user, i.e. by
            the learned (content-aware) item bias alone.
        item_ids: items with a trained id embedding; any other item present in ``content`` is a cold item scored
            from its content.
        content: the :class:`ItemContent` that item vectors are computed from.
    """

    def __init__(
        self,
        model: TwoTowerModel,
        config: ModelConfig,
        user_ids: list[str],
        item_ids: list[str],
        content: ItemContent,
        modality_dims: dict[str, int],
        genre_names: list[str],
    ):
        self.model = model.eval()
        self.config = config
        self.user_ids = list(user_ids)
        self.item_ids = list(item_ids)
        self.modality_dims = dict(modality_dims)
        self.genre_names = list(genre_names)
        self.user_index = {u: i + 1 for i, u in enumerate(self.user_ids)}
        self.item_index = {it: i + 1 for i, it in enumerate(self.item_ids)}
        self._set_content(content)

    # ------------------------------------------------------------------ content
    def _set_content(self, content: ItemContent) -> None:
        content.validate()
        self.content = content
        self._table = item_table(content, self.item_index, self.genre_names, self.modality_dims)
        self._item_vecs: torch.Tensor | None = None

    def with_content(self, content: ItemContent) -> TrainedRecommender:
        """Same weights, different item content (e.g. a catalog with new, cold items)."""
        return TrainedRecommender(
            self.model, self.config, self.user_ids, self.item_ids, content, self.modality_dims, self.genre_names
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> TrainedRecommender:
        """Move the weights (and drop cached item vectors) to ``device``; returns self."""
        self.model.to(device)
        self._item_vecs = None
        return self

    def item_vectors(self) -> torch.Tensor:
        """``(n_content_items, model.out_dim)`` item vectors, computed once per content and cached."""
        if self._item_vecs is None:
            self._item_vecs = compute_item_vectors(self.model, self._table)
        return self._item_vecs

    @torch.no_grad()
    def user_vectors(self, user_ids: Sequence[str]) -> torch.Tensor:
        idx = torch.tensor([self.user_index.get(str(u), 0) for u in user_ids], dtype=torch.long, device=self.device)
        return self.model.user_vectors(idx)

    def _item_rows(self, item_ids: Sequence[str]) -> np.ndarray:
        rows = self.content.rows([str(i) for i in item_ids])
        if (rows < 0).any():
            missing = [str(i) for i, r in zip(item_ids, rows) if r < 0]
            raise ValueError(
                f"{len(missing)} of {len(rows)} item_ids are not in this model's ItemContent "
                f"(e.g. {missing[:5]}); pass a content that has them via with_content()"
            )
        return rows

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """``(n_users, n_items)`` float32 scores; unknown users get the item-bias (popularity-like) score."""
        rows = torch.from_numpy(self._item_rows(item_ids)).to(self.device)
        v = self.item_vectors()[rows]
        return (self.user_vectors(user_ids) @ v.T).float().cpu().numpy()

    @torch.no_grad()
    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        exclude: pd.DataFrame | None = None,
        candidate_item_ids: Sequence[str] | None = None,
        user_batch: int = 4096,
    ) -> pd.DataFrame:
        """Top-``k`` items per user as ``user_id, rank (1..k), item_id, score``.

        Args:
            exclude: ``user_id, item_id`` pairs never to recommend (e.g. seen items).
            candidate_item_ids: restrict to these items (default: every item in the content).
        Users with fewer than ``k`` non-excluded candidates get shorter lists.
        """
        user_ids = list(dict.fromkeys(str(u) for u in user_ids))  # unique, order kept
        if candidate_item_ids is None:
            cand_ids = list(self.content.item_ids)
            v = self.item_vectors()
        else:
            cand_ids = [str(i) for i in candidate_item_ids]
            v = self.item_vectors()[torch.from_numpy(self._item_rows(cand_ids)).to(self.device)]
        k = min(k, len(cand_ids))
        excl_r = excl_c = np.zeros(0, np.int64)
        if exclude is not None and len(exclude):
            ur = pd.Index(user_ids).get_indexer(exclude["user_id"].astype(str))
            ic = pd.Index(cand_ids).get_indexer(exclude["item_id"].astype(str))
            ok = (ur >= 0) & (ic >= 0)
            excl_r, excl_c = ur[ok], ic[ok]
        if k == 0 or not user_ids:
            return pd.DataFrame({"user_id": [], "rank": [], "item_id": [], "score": []}).astype(
                {"user_id": str, "rank": np.int64, "item_id": str, "score": np.float32}
            )
        order = np.argsort(excl_r, kind="stable")
        excl_r, excl_c = excl_r[order], excl_c[order]
        bounds = np.searchsorted(excl_r, np.arange(0, len(user_ids) + user_batch, user_batch))
        out_s, out_i = [], []
        for b, s in enumerate(range(0, len(user_ids), user_batch)):
            scores = self.user_vectors(user_ids[s : s + user_batch]) @ v.T
            lo, hi = bounds[b], bounds[b + 1]
            r = torch.from_numpy(excl_r[lo:hi] - s).to(self.device)
            c = torch.from_numpy(excl_c[lo:hi]).to(self.device)
            scores[r, c] = float("-inf")
            top = scores.topk(k, dim=1)
            out_s.append(top.values.float().cpu().numpy())
            out_i.append(top.indices.cpu().numpy())
        scores_np, idx_np = np.concatenate(out_s), np.concatenate(out_i)
        df = pd.DataFrame(
            {
                "user_id": np.repeat(np.asarray(user_ids, dtype=object), k),
                "rank": np.tile(np.arange(1, k + 1, dtype=np.int64), len(user_ids)),
                "item_id": np.asarray(cand_ids, dtype=object)[idx_np.ravel()],
                "score": scores_np.ravel(),
            }
        )
        return df[np.isfinite(df["score"].to_numpy())].reset_index(drop=True)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` (weights), ``config.json`` (config + content dims) and ``id_maps.json``."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        # the user-history pooling is folded into ``user_tower.folded_history`` after training: its weights are
        # dead in the served model and not saved
        state = {
            k: v.detach().cpu().contiguous()
            for k, v in self.model.state_dict().items()
            if not k.startswith(_HISTORY_PREFIX)
        }
        save_file(state, str(d / "model.safetensors"), metadata={"format_version": str(FORMAT_VERSION)})
        meta = {
            "format_version": FORMAT_VERSION,
            "model_config": asdict(self.config),
            "modality_dims": self.modality_dims,
            "genre_names": self.genre_names,
            "n_users": len(self.user_ids),
            "n_items": len(self.item_ids),
        }
        (d / "config.json").write_text(json.dumps(meta, indent=2))
        (d / "id_maps.json").write_text(json.dumps({"user_ids": self.user_ids, "item_ids": self.item_ids}))

    @classmethod
    def load(cls, directory: str | Path, content: ItemContent, map_location: str = "cpu") -> TrainedRecommender:
        """Rebuild from :meth:`save` output; ``content`` provides item features (may contain new items)."""
        from safetensors.torch import load_file

        d = Path(directory)
        meta = json.loads((d / "config.json").read_text())
        if meta.get("format_version") not in _READABLE_FORMATS:
            raise ValueError(f"unsupported model format_version {meta.get('format_version')!r} in {d}")
        maps = json.loads((d / "id_maps.json").read_text())
        config = ModelConfig.from_dict(meta["model_config"])
        state = load_file(str(d / "model.safetensors"), device=map_location)
        # the pooling was folded before saving: rebuild without it, with the history head if the file has one
        # (models saved before the history head existed have none)
        module = RecommenderModule(
            len(maps["user_ids"]), len(maps["item_ids"]), meta["modality_dims"], len(meta["genre_names"]),
            replace(config, history_length=0), history_head=_FOLDED_KEY in state,
        )
        module.model.load_state_dict({k: v for k, v in state.items() if not k.startswith(_HISTORY_PREFIX)})
        module.model.to(map_location)  # load_state_dict copies into the CPU-built module
        return cls(module.model, config, maps["user_ids"], maps["item_ids"], content, meta["modality_dims"], meta["genre_names"])


# ---------------------------------------------------------------------- training
def _check_inputs(interactions: pd.DataFrame, content: ItemContent) -> None:
    if interactions is None or len(interactions) == 0:
        raise ValueError("interactions is empty: nothing to train on")
    missing_cols = {"user_id", "item_id", "timestamp"} - set(interactions.columns)
    if missing_cols:
        raise ValueError(f"interactions lacks columns {sorted(missing_cols)}")
    content.validate()
    items = pd.Index(interactions["item_id"].astype(str).unique())
    absent = items[~items.isin(content.item_ids)]
    if len(absent):
        n_rows = int(interactions["item_id"].astype(str).isin(absent).sum())
        raise ValueError(
            f"{len(absent)} of {len(items)} interacted items ({n_rows} interactions) are absent from the item "
            f"content, e.g. {list(absent[:5])}; filter interactions to the catalog or add their content"
        )


def train_recommender(
    interactions: pd.DataFrame,
    content: ItemContent,
    config: ModelConfig | None = None,
    trainer_config: TrainerConfig | None = None,
    logger=None,
    callbacks=(),
) -> tuple[TrainedRecommender, dict]:
    """Train the two-tower model with early stopping on validation NDCG@10 and restore the best weights.

    Args:
        interactions: ``user_id, item_id, timestamp[, value]`` implicit positives.
        content: item content covering every interacted item (may hold more items: they rank as cold items).
        config, trainer_config: see :class:`ModelConfig`, :class:`TrainerConfig`.
        logger: any Lightning logger (e.g. ``MLFlowLogger``); per-epoch ``train_loss``, ``val_ndcg_at_10``,
            ``val_recall_at_20`` go through it. ``None`` = no logging.
        callbacks: extra Lightning callbacks.

    Returns:
        ``(model, stats)`` with stats ``best_val_ndcg_at_10, epochs_trained, best_epoch, train_seconds,
        samples_per_second, n_train_interactions, n_val_users, refit, history_items_trained``.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    from .datamodule import InteractionDataModule

    config = config or ModelConfig()
    trainer_config = trainer_config or TrainerConfig()
    _check_inputs(interactions, content)
    if trainer_config.num_threads:
        torch.set_num_threads(trainer_config.num_threads)
    L.seed_everything(config.seed, workers=True, verbose=False)

    modality_dims = content.modality_dims

    def make_strategy():
        if trainer_config.strategy != "ddp":
            return trainer_config.strategy
        from lightning.pytorch.strategies import DDPStrategy

        # every buffer is the same on all ranks (item table, histories) or unused in training (folded_history):
        # DDP's default broadcast of all buffers from rank 0 before every step would only cost traffic
        return DDPStrategy(forward_sync_buffers=False)

    def make_trainer(max_epochs: int, cbs: list, with_val: bool):
        return L.Trainer(
            accelerator=trainer_config.accelerator,
            devices=trainer_config.devices,
            strategy=make_strategy(),
            precision=trainer_config.precision,
            num_nodes=trainer_config.num_nodes,
            max_epochs=max_epochs,
            logger=logger if logger is not None else False,
            callbacks=cbs,
            enable_checkpointing=False,
            enable_progress_bar=trainer_config.enable_progress_bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
            limit_val_batches=1.0 if with_val else 0,
        )

    def make_module(dm):
        table = item_table(content, dm.item_index, content.genre_names, modality_dims)
        return RecommenderModule(
            dm.n_users, dm.n_items, modality_dims, len(content.genre_names), config, table, dm.train_history
        )

    dm = InteractionDataModule(interactions, content, config.val_fraction, config.batch_size, config.seed)
    module = make_module(dm)
    best = BestStateCallback("val_ndcg_at_10", "max")
    cbs = list(callbacks)
    if dm.has_validation:
        cbs += [best, EarlyStopping(monitor="val_ndcg_at_10", mode="max", patience=config.patience)]
    trainer = make_trainer(config.max_epochs, cbs, dm.has_validation)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    epochs = int(trainer.current_epoch)
    best.restore(module)
    best_epoch = best.best_epoch if best.best_epoch is not None else epochs - 1
    n_samples = len(dm.train_pairs[0]) * epochs
    n_val_users = int(len(dm.val_users))
    if config.refit and dm.has_validation:
        # the validation holdout is each user's most recent activity: retrain on everything for the best epoch count
        L.seed_everything(config.seed, workers=True, verbose=False)
        dm = InteractionDataModule(interactions, content, 0.0, config.batch_size, config.seed)
        module = make_module(dm)
        refit = make_trainer(best_epoch + 1, list(callbacks), False)
        refit.fit(module, datamodule=dm)
        n_samples += len(dm.train_pairs[0]) * (best_epoch + 1)
    elif module.use_history and dm.has_validation:
        # serve from every interaction: the folded history ends with the user's latest (validation) items, except
        # items seen only in validation (no id embedding, so padding)
        module.set_history(*InteractionDataModule(interactions, content, 0.0, config.batch_size).train_history)
    module.fold_history()
    seconds = time.perf_counter() - t0
    stats = {
        "best_val_ndcg_at_10": float(best.best_score) if best.best_state is not None else float("nan"),
        "epochs_trained": epochs,
        "best_epoch": best_epoch,
        "train_seconds": seconds,
        "samples_per_second": n_samples / max(seconds, 1e-9),
        "n_train_interactions": len(dm.train_pairs[0]),
        "n_val_users": n_val_users,
        "refit": bool(config.refit and n_val_users > 0),
        # item ids whose history embedding was trained (merged over DDP ranks); the rest pool as padding
        "history_items_trained": int(module.h_trained[1:].sum()) if hasattr(module, "h_trained") else 0,
    }
    model = TrainedRecommender(module.model, config, dm.user_ids, dm.item_ids, content, modality_dims, list(content.genre_names))
    return model, stats
