"""``RecommenderModule``: the two-tower model and its optimisation (sampled softmax or BPR), full-catalog validation.

The item table (content of every catalog item, non-persistent buffers) lives on the module so it moves with the
device; the state dict holds only model weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torchmetrics import MeanMetric

from recsys_pipeline.models.two_tower.config import LOSSES, ModelConfig
from recsys_pipeline.models.two_tower.modules import TwoTowerModel

__all__ = [
    "RecommenderModule",
    "BestStateCallback",
    "sampled_softmax_loss",
    "full_softmax_loss",
    "bpr_loss",
    "topk_metrics",
    "compute_item_vectors",
]


@torch.no_grad()
def compute_item_vectors(model: TwoTowerModel, table, chunk: int = 16384) -> Tensor:
    """All item vectors ``(n, model.out_dim)`` of an item ``table`` (see ``content.item_table``) in eval mode."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    n = int(table["id_idx"].shape[0])
    names = list(table["features"])
    out = []
    for s in range(0, n, chunk):
        sl = slice(s, min(s + chunk, n))
        feats = [table["features"][m][sl].to(device, torch.float32) for m in names]
        out.append(
            model.item_vectors(
                table["id_idx"][sl].to(device),
                feats,
                table["present"][sl].to(device),
                table["genres"][sl].to(device),
                table["year"][sl].to(device),
            )
        )
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, model.out_dim, device=device)


def sampled_softmax_loss(pos: Tensor, neg: Tensor, hit_mask: Tensor) -> Tensor:
    """Softmax cross-entropy of the positive against shared negatives.

    Args:
        pos: ``(B,)`` positive scores. neg: ``(B, N)`` scores of shared negatives.
        hit_mask: ``(B, N)`` True where the negative is the positive itself (accidental hit, excluded).
    """
    logits = torch.cat([pos[:, None], neg.masked_fill(hit_mask, float("-inf"))], dim=1)
    return (torch.logsumexp(logits, dim=1) - pos).mean()


def full_softmax_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Softmax cross-entropy over the whole candidate set (no sampling, so no sampling bias to correct).

    Args:
        logits: ``(B, N)`` scores of every candidate item. target: ``(B,)`` int64 column of the positive.
    """
    return F.cross_entropy(logits, target)


def bpr_loss(pos: Tensor, neg: Tensor, hit_mask: Tensor) -> Tensor:
    """BPR (Rendle et al. 2009): ``-mean log sigmoid(s_pos - s_neg)`` over non-hit (positive, negative) pairs."""
    keep = (~hit_mask).to(pos.dtype)
    return -(F.logsigmoid(pos[:, None] - neg) * keep).sum() / keep.sum().clamp(min=1.0)


def topk_metrics(scores: Tensor, truth_pairs: Tensor, k_ndcg: int = 10, k_recall: int = 20) -> tuple[Tensor, Tensor]:
    """Per-user NDCG@k_ndcg and Recall@k_recall from a masked score matrix.

    Args:
        scores: ``(b, n_items)``, already ``-inf`` at excluded items.
        truth_pairs: ``(2, n)`` ``[row, item]`` relevant items.
    Returns:
        ``(ndcg (b',), recall (b',))`` for the ``b'`` rows with at least one relevant item.
    """
    b, n_items = scores.shape
    k = min(max(k_ndcg, k_recall), n_items)
    top = scores.topk(k, dim=1).indices  # (b, k)
    rel = torch.zeros(b, n_items, dtype=torch.bool, device=scores.device)
    rel[truth_pairs[0], truth_pairs[1]] = True
    hits = rel.gather(1, top).to(scores.dtype)  # (b, k)
    n_rel = rel.sum(dim=1)
    ok = n_rel > 0
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=scores.device, dtype=scores.dtype))
    kn = min(k_ndcg, k)
    dcg = (hits[:, :kn] * discount[:kn]).sum(dim=1)
    idcg = torch.cumsum(discount[:kn], 0)[(n_rel.clamp(min=1, max=kn) - 1)]
    recall = hits[:, : min(k_recall, k)].sum(dim=1) / n_rel.clamp(min=1)
    return (dcg / idcg)[ok], recall[ok]


class RecommenderModule(L.LightningModule):
    """Two-tower recommender trained on implicit positives.

    Args:
        n_users, n_items: id vocabulary sizes (embeddings have one more row, index 0 = unknown).
        modality_dims: ordered ``name -> d_m``. n_genres: genre vector width.
        config: the :class:`~recsys_pipeline.models.two_tower.config.ModelConfig`.
        table: item table from :func:`~recsys_pipeline.models.two_tower.item_tensors.item_table` (the catalog;
            negatives are sampled from it and validation ranks over all of it). ``None`` for inference-only use.
        history: user histories as CSR ``(indptr (n_users + 2,), item_rows)`` over user index (0 = unknown) and
            table rows, time-ordered within each user. Used when ``config.history_length > 0``: the user vector
            gains a history head ``HistoryPooling(last L items)`` scored against the item's id only (see
            ``TwoTowerModel``), where in training "last" means *before the positive* (causal, like next-item
            models: the pooled items never include the target or anything after it) and for validation and
            serving it means the user's last ``L`` training items. After training, :meth:`fold_history` stores
            that pooled vector per user, so the saved model is a two-tower model with fixed user vectors.
        history_head: build the history head without the pooling (a folded model being loaded).
        reductions: ``name -> fitted PCA`` (:func:`~recsys_pipeline.models.two_tower.modules.fit_modality_pca`'s
            arrays) of the modalities the item tower reads reduced; the table's vectors of those modalities are
            reduced once here, not at every step.

    Batches: training ``(user_idx (B,), item_row (B,), position (B,))`` (position of the pair in the history CSR);
    validation ``(users (b,), seen (2, n), truth (2, m))``.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        modality_dims: Mapping[str, int],
        n_genres: int,
        config: ModelConfig,
        table=None,
        history=None,
        history_head: bool = False,
        reductions: Mapping[str, Mapping] | None = None,
    ):
        super().__init__()
        self.config = config
        if config.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {config.loss!r}")
        reductions = dict(reductions or {})
        reduced_dims = {m: len(r["components"]) for m, r in reductions.items()}
        self.model = TwoTowerModel(n_users, n_items, modality_dims, n_genres, config, history_head, reduced_dims)
        for name, fitted in reductions.items():
            self.model.item_tower.reducers[name].set(fitted)
        self.modality_names = list(modality_dims)
        self.n_table = 0
        if table is not None:
            self.set_table(table)
        self.history_length = config.history_length
        self.use_history = self.history_length > 0 and history is not None
        if self.use_history:
            self.set_history(*history)
        self.val_ndcg = MeanMetric()
        self.val_recall = MeanMetric()
        self._val_item_vecs: Tensor | None = None

    # ------------------------------------------------------------------ item table
    def set_table(self, table) -> None:
        self.register_buffer("t_id_idx", table["id_idx"], persistent=False)
        with torch.no_grad():  # the fixed PCAs once for the whole table: steps gather reduced rows
            feats = self.model.item_tower.reduce([table["features"][m].float() for m in self.modality_names])
        for j, x in enumerate(feats):
            self.register_buffer(f"t_feat_{j}", x, persistent=False)
        self.register_buffer("t_present", table["present"], persistent=False)
        self.register_buffer("t_genres", table["genres"], persistent=False)
        self.register_buffer("t_year", table["year"], persistent=False)
        self.n_table = int(table["id_idx"].shape[0])
        # negatives come only from items with training interactions: catalog items nobody has interacted with yet
        # (cold items) are unknown, not disliked; as negatives they would teach the content path to bury them
        warm = torch.nonzero(table["id_idx"] > 0).flatten()
        self.register_buffer("t_warm_rows", warm if len(warm) else torch.arange(self.n_table), persistent=False)
        col = torch.full((self.n_table,), -1, dtype=torch.long)
        col[self.t_warm_rows] = torch.arange(len(self.t_warm_rows))
        self.register_buffer("t_warm_col", col, persistent=False)

    def set_history(self, indptr, item_rows) -> None:
        """User histories (CSR over user index, time-ordered, see class doc) as buffers of item id indices."""
        if self.n_table == 0:
            raise ValueError("set_history needs the item table (table=...) to map table rows to item ids")
        self.register_buffer("h_indptr", torch.as_tensor(indptr, dtype=torch.long), persistent=False)
        rows = torch.as_tensor(item_rows, dtype=torch.long)
        self.register_buffer("h_item", self.t_id_idx[rows], persistent=False)  # id index per history entry
        if not hasattr(self, "h_trained"):
            # items whose history embedding got a gradient (an item that is only ever a user's newest never does).
            # A plain attribute, not a buffer: a DDP broadcast of buffers from rank 0 would erase the ids the other
            # ranks marked; they are merged explicitly (_merge_trained_ids)
            n_ids = self.model.user_tower.history.emb.num_embeddings
            self.h_trained = torch.zeros(n_ids, dtype=torch.bool)

    def history_index(self, users: Tensor, end: Tensor | None = None) -> Tensor:
        """``(B, L)`` id indices of each user's last ``L`` items before CSR position ``end``, newest first, 0 pad.

        ``end`` ``(B,)``: exclusive end (a training pair's own position); ``None`` = the user's whole history.
        """
        start = self.h_indptr[users]
        if end is None:
            end = self.h_indptr[users + 1]
        idx = end[:, None] - 1 - torch.arange(self.history_length, device=users.device)  # (B, L)
        return torch.where(idx >= start[:, None], self.h_item[idx.clamp(min=0)], torch.zeros_like(idx))

    def serving_history(self, users: Tensor) -> Tensor:
        """``(B, L)`` each user's last ``L`` items (as :meth:`history_index`), minus items whose history
        embedding never received a gradient in training (still at their random init, e.g. an item only ever seen
        as some user's newest): those become padding rather than noise."""
        hist = self.history_index(users)
        return torch.where(self.h_trained.to(hist.device)[hist], hist, torch.zeros_like(hist))

    def user_vectors(self, users: Tensor, end: Tensor | None = None) -> Tensor:
        """``(B, model.out_dim)`` user vectors; with history, the history head is the pooled last ``L`` items
        before ``end`` (``end=None``: the user's whole history, as validation and serving see it,
        :meth:`serving_history`)."""
        if not self.use_history:
            return self.model.user_vectors(users)
        hist = self.serving_history(users) if end is None else self.history_index(users, end)
        return self.model.user_vectors(users, hist)

    @torch.no_grad()
    def fold_history(self, chunk: int = 65536) -> None:
        """Write each user's pooled (eval-mode) :meth:`serving_history` into ``user_tower.folded_history``;
        history is then off (scores are unchanged, see ``TwoTowerModel``)."""
        if not self.use_history:
            return
        tower = self.model.user_tower
        was = tower.training
        tower.eval()
        n = len(self.h_indptr) - 1
        for s in range(0, n, chunk):  # chunks: (chunk, L, D) floats at a time, not every user's at once
            users = torch.arange(s, min(s + chunk, n), device=self.h_indptr.device)
            tower.folded_history[users] = tower.history(self.serving_history(users))
        tower.train(was)
        tower.folded_history[0] = 0.0  # the unknown user stays at zero
        self.use_history = False

    def table_item_vectors(self, rows: Tensor | None = None) -> Tensor:
        """Item vectors ``(n, model.out_dim)`` for table ``rows`` (all rows when ``None``)."""
        if rows is None:
            rows = torch.arange(self.n_table, device=self.t_id_idx.device)
        feats = [getattr(self, f"t_feat_{j}")[rows] for j in range(len(self.modality_names))]
        return self.model.item_vectors(
            self.t_id_idx[rows], feats, self.t_present[rows], self.t_genres[rows], self.t_year[rows], reduced=True
        )

    @torch.no_grad()
    def all_item_vectors(self, chunk: int = 16384) -> Tensor:
        was = self.model.training
        self.model.eval()
        out = torch.cat(
            [
                self.table_item_vectors(torch.arange(s, min(s + chunk, self.n_table), device=self.t_id_idx.device))
                for s in range(0, self.n_table, chunk)
            ]
        )
        self.model.train(was)
        return out

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        users, rows, positions = batch
        if self.use_history:
            hist = self.history_index(users, positions)
            p = self.config.history_dropout
            if p > 0:  # whole-history dropout: the id embedding must also predict on its own
                hist = hist * (torch.rand(len(users), 1, device=hist.device) >= p)
            self.h_trained = self.h_trained.to(hist.device)  # no-op after the first step
            self.h_trained[hist.flatten()] = True
            u = self.model.user_vectors(users, hist)
        else:
            u = self.model.user_vectors(users)
        if self.config.loss == "softmax":
            v = self.table_item_vectors(self.t_warm_rows)  # (n_warm, out_dim): every known item
            loss = full_softmax_loss(u @ v.T, self.t_warm_col[rows])
            self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(rows), sync_dist=True)
            return loss
        n_warm = len(self.t_warm_rows)
        n_neg = min(self.config.num_negatives, n_warm)
        neg = self.t_warm_rows[torch.randint(0, n_warm, (n_neg,), device=rows.device)]
        # run the item tower once per distinct item of the batch (positives repeat: popular items)
        uniq, inv = torch.unique(torch.cat([rows, neg]), return_inverse=True)
        vecs = self.table_item_vectors(uniq)[inv]
        pos_v, neg_v = vecs[: len(rows)], vecs[len(rows) :]
        pos = (u * pos_v).sum(dim=1)
        negs = u @ neg_v.T
        hit = rows[:, None] == neg[None, :]
        loss_fn = sampled_softmax_loss if self.config.loss == "sampled_softmax" else bpr_loss
        loss = loss_fn(pos, negs, hit)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(rows), sync_dist=True)
        return loss

    def _merge_trained_ids(self) -> None:
        # under DDP each rank saw its own shard of pairs: an id trained on any rank counts as trained (a collective:
        # every rank calls it at the same hooks)
        if self.use_history and self.trainer.world_size > 1:
            self.h_trained = self.all_gather(self.h_trained.to(torch.int32)).amax(dim=0).bool()

    def on_train_epoch_end(self) -> None:
        self._merge_trained_ids()

    def configure_optimizers(self):
        # fused: one kernel for the whole update instead of a dozen per tensor group (the same AdamW arithmetic)
        return torch.optim.AdamW(
            self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay, fused=True
        )

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        # Lightning validates before on_train_epoch_end: merge here too, so every rank serves the same history
        self._merge_trained_ids()
        self._val_item_vecs = self.all_item_vectors()

    def validation_step(self, batch, batch_idx):
        users, seen, truth = batch
        if self._val_item_vecs is None:  # called outside a Trainer's validation loop
            self._val_item_vecs = self.all_item_vectors()
        scores = self.user_vectors(users) @ self._val_item_vecs.T
        scores[seen[0], seen[1]] = float("-inf")
        ndcg, recall = topk_metrics(scores, truth, 10, 20)
        self.val_ndcg.update(ndcg)
        self.val_recall.update(recall)
        # logging the metric objects lets Lightning/torchmetrics sync them across DDP ranks and reset per epoch
        self.log("val_ndcg_at_10", self.val_ndcg, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val_recall_at_20", self.val_recall, on_step=False, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        self._val_item_vecs = None


class BestStateCallback(Callback):
    """Keep the best state dict (by ``monitor``) in memory; restore it with :meth:`restore`.

    A checkpoint-file-free alternative to ``ModelCheckpoint`` for small models.
    """

    def __init__(self, monitor: str = "val_ndcg_at_10", mode: str = "max"):
        self.monitor, self.mode = monitor, mode
        self.best_score = -math.inf if mode == "max" else math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, Tensor] | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        v = float(value)
        better = v > self.best_score if self.mode == "max" else v < self.best_score
        if better or self.best_state is None:
            self.best_score = v
            self.best_epoch = trainer.current_epoch
            self.best_state = {k: t.detach().cpu().clone() for k, t in pl_module.model.state_dict().items()}

    def restore(self, pl_module) -> None:
        if self.best_state is not None:
            pl_module.model.load_state_dict(copy.deepcopy(self.best_state))
