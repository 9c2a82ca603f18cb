"""``TwoTowerRecommender``: the multimodal two-tower model behind the :class:`~recsys_pipeline.models.base.Recommender`
contract: ``fit`` trains it with Lightning, ``score`` / ``recommend`` rank, ``save`` / ``load`` persist it without
pickle (safetensors weights, JSON config and id maps, ``.npz`` item features, Parquet seen items).

Example::

    model = TwoTowerRecommender(ModelConfig(max_epochs=5)).fit(train, item_features)
    model.recommend(["1", "2"], k=10)            # user_id, rank, item_id, score; seen items excluded
    model.with_features(new_catalog).score(...)  # same weights; items new since training ranked from content
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Collection, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from lightning.pytorch.loggers import Logger

from recsys_pipeline.content.features import ItemFeatures
from recsys_pipeline.models.base import Recommender, SeenItems
from recsys_pipeline.models.popularity.recent import RecentPopularity, utc_seconds
from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig
from recsys_pipeline.models.two_tower.item_item import ItemItemHead
from recsys_pipeline.models.two_tower.item_tensors import item_table
from recsys_pipeline.models.two_tower.lightning_module import (
    BestStateCallback,
    RecommenderModule,
    compute_item_vectors,
)
from recsys_pipeline.models.two_tower.modules import HistoryPooling, TwoTowerModel, fit_modality_pca
from recsys_pipeline.models.two_tower.warm_start import carry_rows, remap_state

__all__ = ["TwoTowerRecommender", "FORMAT_VERSION", "two_tower_for_split"]

# 3: an item-item head (``item_item.npz``; written only when there is one, so a model without it stays readable by
# the release before); 2: history head (``user_tower.folded_history``, ``next_item_emb``); 1: plain two-tower
FORMAT_VERSION = 3
_READABLE_FORMATS = (1, 2, 3)
_HISTORY_PREFIX = "user_tower.history."  # the pooling module: training only
_FOLDED_KEY = "user_tower.folded_history"


REFIT_PREFIX = "refit_"  # the refit's per-epoch metrics: ``refit_train_loss`` next to the fit's ``train_loss``


class _RefitLogger(Logger):
    """Hands the refit's metrics to the fit's logger as ``refit_<name>``: one run, two separate series (the refit
    starts again at epoch 0 and would otherwise continue the fit's ``train_loss`` curve)."""

    def __init__(self, inner: Logger) -> None:
        super().__init__()
        self._inner = inner

    @property
    def name(self):
        return self._inner.name

    @property
    def version(self):
        return self._inner.version

    @property
    def save_dir(self):
        return self._inner.save_dir

    def log_metrics(self, metrics, step=None) -> None:
        self._inner.log_metrics({f"{REFIT_PREFIX}{k}": v for k, v in metrics.items()}, step)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self._inner.log_hyperparams(params, *args, **kwargs)

    def save(self) -> None:
        self._inner.save()

    def finalize(self, status: str) -> None:
        self._inner.finalize(status)


class TwoTowerRecommender(Recommender):
    """Two-tower recommender: user id (+ history head) against item id + fused content (+ genres, year).

    Args:
        config: model and optimisation settings (:class:`ModelConfig`; its defaults are the product's).
        trainer: Lightning ``Trainer`` settings (:class:`TrainerConfig`).
        logger: a Lightning logger (e.g. ``MLFlowLogger``) for per-epoch ``train_loss``, ``val_ndcg_at_10``,
            ``val_recall_at_20``, and the refit's ``refit_train_loss``; ``None`` = no logging.
        callbacks: extra Lightning callbacks.

    After :meth:`fit`:
        ``item_ids``: the catalog (``features.item_ids``); ``trained_item_ids``: items with a trained id embedding
        (index ``i + 1``), any other catalog item is a cold item ranked from its content. ``user_ids``: users with
        an embedding (index ``i + 1``); another user scores as the unknown user, i.e. by the learned,
        content-aware item bias alone. ``item_item``: the EASE head (``config.item_item_weight > 0``) or ``None``.
        ``train_stats``: see :meth:`fit`.
    """

    def __init__(
        self,
        config: ModelConfig | None = None,
        trainer: TrainerConfig | None = None,
        logger=None,
        callbacks: Sequence = (),
    ) -> None:
        self.config = config or ModelConfig()
        self.trainer_config = trainer or TrainerConfig()
        self.logger = logger
        self.callbacks = tuple(callbacks)
        self.model: TwoTowerModel | None = None
        self.train_stats: dict = {}
        self._history_state: dict[str, torch.Tensor] = {}  # pooling weights of a loaded model (warm starts)
        self.item_item: ItemItemHead | None = None
        self.recent_popularity: RecentPopularity | None = None  # for new users (config.new_user_recency_weight)

    # ------------------------------------------------------------------ fitted state
    def _set_state(
        self,
        model: TwoTowerModel,
        user_ids: list[str],
        trained_item_ids: list[str],
        features: ItemFeatures,
        modality_dims: dict[str, int],
        genre_names: list[str],
        seen: SeenItems,
    ) -> TwoTowerRecommender:
        self.model = model.eval()
        self.user_ids = list(user_ids)
        self.trained_item_ids = list(trained_item_ids)
        self.modality_dims = dict(modality_dims)
        self.genre_names = list(genre_names)
        self.user_index = {u: i + 1 for i, u in enumerate(self.user_ids)}
        self.item_index = {it: i + 1 for i, it in enumerate(self.trained_item_ids)}
        features.validate()
        self.features = features
        self.item_ids = list(features.item_ids)
        self.seen = seen
        self._table = item_table(features, self.item_index, self.genre_names, self.modality_dims)
        self._item_vecs: torch.Tensor | None = None
        self._trained_rows_cache: torch.Tensor | None = None
        self._item_item_map_cache: sp.csc_matrix | None = None
        self._folded_index: dict[str, int] = {}  # with_history: user -> row of _folded_vectors
        self._folded_vectors: torch.Tensor | None = None
        self._folded_times: dict[str, int] = {}  # with_history: new user -> latest interaction (UTC seconds)
        self._recency_columns_cache = None
        self._pooling_cache = None
        return self

    @property
    def known_users(self) -> Collection[str]:
        return self.user_index.keys()

    def with_item_item_weight(self, weight: float) -> TwoTowerRecommender:
        """The same fitted model scoring with the item-item head at blend weight ``weight`` (``0`` = the two-tower
        alone). The weight does not change training, so tuning evaluates one fit at several weights
        (``evaluation.tuning.two_tower_variants``); the copy shares the weights and caches.

        Raises:
            ValueError: ``weight < 0``, or ``weight > 0`` for a model fitted without a head (``item_item_weight=0``).
        """
        if weight < 0:
            raise ValueError(f"item_item_weight must be >= 0, got {weight}")
        if weight > 0 and self.item_item is None:
            raise ValueError("this model has no item-item head (fitted with item_item_weight=0): refit with a weight")
        other = copy.copy(self)
        other.config = replace(self.config, item_item_weight=float(weight))
        return other

    def with_features(self, features: ItemFeatures) -> TwoTowerRecommender:
        """The same weights, seen items and folded-in users over another catalog (e.g. one with new, cold items)."""
        other = TwoTowerRecommender(self.config, self.trainer_config)
        other.train_stats = dict(self.train_stats)
        other._history_state = self._history_state
        other.item_item = self.item_item
        other.recent_popularity = self.recent_popularity
        other._set_state(
            self.model, self.user_ids, self.trained_item_ids, features, self.modality_dims, self.genre_names, self.seen
        )
        other._folded_index, other._folded_vectors = self._folded_index, self._folded_vectors
        other._folded_times = self._folded_times
        return other

    @torch.no_grad()
    def with_history(self, interactions: pd.DataFrame, pool_new_users: bool = False) -> TwoTowerRecommender:
        """The same weights with users' histories folded in at request time, without retraining.

        For each user in ``interactions`` (a new user, or a known one with interactions newer than the model):
        their items join the ``seen`` items (so they are excluded from lists and feed the item-item term). A known
        user's history head is re-pooled from their last ``config.history_length`` items of ``interactions`` by
        time (give their whole recent history, not only the newest events: the pooled history is that of
        ``interactions`` alone). A new user (no id embedding) is scored by the content-aware item prior and the
        item-item head over their items; ``pool_new_users=True`` also pools their history: on
        ``benchmarks/user_cold_start.py`` (seed 0, 61 held-out users) that lowered NDCG@10 for every number of
        revealed items (n = 3: 0.445 vs 0.493; n = 10: 0.378 vs 0.466): the head was trained beside an id
        embedding, and alone it leans on the few first items. A new user's latest timestamp also sets the window
        of the recent-popularity term (``config.new_user_recency_weight``; see :meth:`score`). Items the model has
        no history embedding for (new items, items never in a training history) pool as padding, as in training.

        Args:
            interactions: ``user_id, item_id, timestamp`` (str, str, datetime64 or numbers = seconds since the
                epoch; UTC).
            pool_new_users: pool a new user's history too (see above).

        Returns:
            a new recommender sharing the weights; the other users score as before.

        Raises:
            ValueError: a column is missing, or a timestamp is missing or unreadable.
        """
        missing = {"user_id", "item_id", "timestamp"} - set(interactions.columns)
        if missing:
            raise ValueError(f"with_history: interactions lack {sorted(missing)}")
        events = interactions[["user_id", "item_id", "timestamp"]].astype({"user_id": str, "item_id": str})
        self.warm()  # every fold-in shares the item-side caches
        other = copy.copy(self)  # same catalog: shares the weights and the item-side caches
        other.seen = self.seen.with_pairs(events[["user_id", "item_id"]])
        users = sorted(events["user_id"].unique())
        idx = torch.tensor([self.user_index.get(u, 0) for u in users], dtype=torch.long, device=self.device)
        vectors = self.model.user_vectors(idx).clone()
        pooling = self._history_pooling()
        if pooling is not None and users:
            newest_first = events.sort_values(["timestamp", "item_id"], ascending=False, kind="stable")
            length = pooling.length
            history = torch.zeros(len(users), length, dtype=torch.long)
            trained = pooling.emb.weight.detach().norm(dim=1).cpu() > 0  # zero rows: never trained, pool as padding
            row_of = {u: r for r, u in enumerate(users)}
            for user, group in newest_first.groupby("user_id", sort=False):
                if user not in self.user_index and not pool_new_users:
                    continue  # a new user's history part stays zero
                ids = [self.item_index.get(i, 0) for i in group["item_id"].head(length)]
                ids = [i if trained[i] else 0 for i in ids]
                history[row_of[user], : len(ids)] = torch.tensor(ids, dtype=torch.long)
            dim = self.config.embedding_dim
            vectors[:, dim + 1 :] = pooling.eval()(history.to(self.device))
        folded = dict(self._folded_index)
        rows = [folded.setdefault(u, len(folded)) for u in users]
        table = torch.zeros(len(folded), vectors.shape[1], device=self.device)
        if self._folded_vectors is not None:
            table[: len(self._folded_vectors)] = self._folded_vectors
        table[torch.tensor(rows, dtype=torch.long)] = vectors
        other._folded_index, other._folded_vectors = folded, table
        codes, names = pd.factorize(events["user_id"])
        latest = np.full(len(names), np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(latest, codes, utc_seconds(events["timestamp"]))
        other._folded_times = {**self._folded_times, **dict(zip(names, latest.tolist()))}
        for user in self.user_index.keys() & set(users):  # a known user (folded again) gets no recency term
            other._folded_times.pop(user, None)
        return other

    def warm(self) -> TwoTowerRecommender:
        """Fill the item-side caches (item vectors, the trained rows, the catalog index, the item-item map, the
        recency columns) now; returns self. A model shared by threads (a server) calls it once before serving:
        otherwise concurrent first requests would each compute them (seconds and gigabytes on a large catalog)."""
        self.item_vectors()
        self._trained_rows()
        self._catalog_index()
        if self.item_item is not None and self.config.item_item_weight > 0:
            self._item_item_map()
        if self.recent_popularity is not None:
            self._recency_columns()
        return self

    @property
    def folded_users(self) -> Collection[str]:
        """Users whose history was folded in by :meth:`with_history` (new or known)."""
        return self._folded_index.keys()

    def _history_pooling(self) -> HistoryPooling | None:
        """The history head's pooling (the fitted one, or one rebuilt from a loaded model's saved weights), or
        ``None`` without a history head."""
        tower = self.model.user_tower
        if not tower.history_head:
            return None
        if tower.history is not None:
            return tower.history
        if getattr(self, "_pooling_cache", None) is None:
            state = {k[len(_HISTORY_PREFIX) :]: v for k, v in self._history_state.items()}
            if "emb.weight" not in state:
                return None  # saved before the pooling weights were kept
            rows, dim = state["emb.weight"].shape
            pooling = HistoryPooling(rows - 1, dim, int(state["pos_logits"].shape[0]), self.config.history_decay)
            pooling.load_state_dict(state)
            self._pooling_cache = pooling.to(self.device).eval()
        return self._pooling_cache

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> TwoTowerRecommender:
        """Move the weights (and drop cached item vectors) to ``device``; returns self."""
        self.model.to(device)
        self._item_vecs = None
        self._trained_rows_cache = None
        return self

    def item_vectors(self) -> torch.Tensor:
        """``(n_catalog_items, model.out_dim)`` float32 item vectors, computed once per catalog and cached."""
        if self._item_vecs is None:
            self._item_vecs = compute_item_vectors(self.model, self._table)
        return self._item_vecs

    @torch.no_grad()
    def user_vectors(self, user_ids: Sequence[str]) -> torch.Tensor:
        """``(len(user_ids), model.out_dim)`` float32; an unknown user is row 0 (zeros but the bias coordinate)."""
        idx = torch.tensor([self.user_index.get(str(u), 0) for u in user_ids], dtype=torch.long, device=self.device)
        vectors = self.model.user_vectors(idx)
        if self._folded_index:
            pairs = [(r, self._folded_index[str(u)]) for r, u in enumerate(user_ids) if str(u) in self._folded_index]
            if pairs:
                at, rows = (torch.tensor(x, dtype=torch.long, device=self.device) for x in zip(*pairs))
                vectors = vectors.clone()
                vectors[at] = self._folded_vectors[rows]
        return vectors

    def _item_rows(self, item_ids: Sequence[str]) -> np.ndarray:
        if len(item_ids) == len(self.item_ids) and list(item_ids) == self.item_ids:  # the whole catalog, in order
            return np.arange(len(self.item_ids))
        rows = self.features.rows([str(i) for i in item_ids])
        if (rows < 0).any():
            missing = [str(i) for i, r in zip(item_ids, rows) if r < 0]
            raise ValueError(
                f"{len(missing)} of {len(rows)} item_ids are not in this model's item features "
                f"(e.g. {missing[:5]}); pass features that have them via with_features()"
            )
        return rows

    @torch.no_grad()
    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """``(n_users, n_items)`` float32 scores; unknown users get the item-bias (popularity-like) score.

        With an item-item head (``config.item_item_weight = w > 0``): ``z(two-tower) + w * z(item-item)``, each
        term standardised per user by its mean and standard deviation over a fixed set (the two-tower term over the
        trained items, the item-item term over the head's items), not over the items asked for, so an item's score
        does not depend on the others asked. The item-item term reads the user's ``seen`` items (0 for a user with
        none). An item outside the head (a new item, or a rarely interacted one) borrows the cosine-weighted mean of
        the item-item scores of its ``config.item_item_content_neighbours`` nearest head items by the item tower's
        content vector (the tower with the id hidden; :meth:`ItemItemHead.catalog_map`); with ``0`` its raw value
        is 0, the same per-user constant after standardisation for every such item.

        A new user folded in by :meth:`with_history` (no id embedding) gets ``+ r * z(log(1 + c))`` with ``r =
        config.new_user_recency_weight`` and ``c`` the item's distinct users in the ``config.new_user_recency_days``
        UTC days before the day of the user's latest interaction (:class:`RecentPopularity`), standardised over the
        trained items like the other terms; their two-tower term is then standardised even without an item-item
        head. Other users' scores do not depend on it.
        """
        if self.model is None:
            raise RuntimeError("TwoTowerRecommender.score called before fit or load")
        rows = torch.from_numpy(self._item_rows(item_ids)).to(self.device)
        users = self.user_vectors(user_ids)
        scores = (users @ self.item_vectors()[rows].T).float().cpu().numpy()
        recent = self._recency_rows(user_ids)
        has_head = self.item_item is not None and self.config.item_item_weight > 0
        if not has_head and not len(recent):
            return scores
        trained = self._trained_rows()
        standardised = np.arange(len(user_ids)) if has_head else recent
        picked = torch.from_numpy(standardised).to(self.device)
        reference = (users[picked] @ self.item_vectors()[trained].T).float().cpu().numpy()
        scores[standardised] = _standardise(scores[standardised], reference)
        if has_head:
            item_item = self.item_item.scores(self.seen, user_ids)
            asked = item_item @ self._item_item_map()[:, rows.cpu().numpy()]  # dense @ sparse: (n_users, n_asked)
            scores += self.config.item_item_weight * _standardise(np.asarray(asked), item_item)
        if len(recent):
            times = np.array([self._folded_times[str(user_ids[r])] for r in recent], dtype=np.int64)
            counts = self.recent_popularity
            per_item = np.log1p(counts.window_counts(times, self.config.new_user_recency_days))
            catalog = self._recency_columns()  # (n_catalog,) columns of counts
            wanted = counts.take(per_item, catalog[rows.cpu().numpy()])
            over = counts.take(per_item, catalog[trained.cpu().numpy()])
            scores[recent] += self.config.new_user_recency_weight * _standardise(wanted, over)
        return scores.astype(np.float32)

    def _recency_columns(self) -> np.ndarray:
        """``(n_catalog,)`` int64: each catalog item's column in :attr:`recent_popularity` (``-1``: none), cached."""
        cached = getattr(self, "_recency_columns_cache", None)
        if cached is None or cached[0] is not self.recent_popularity:
            cached = (self.recent_popularity, self.recent_popularity.columns(self.item_ids))
            self._recency_columns_cache = cached
        return cached[1]

    def _recency_rows(self, user_ids: Sequence[str]) -> np.ndarray:
        """Rows of ``user_ids`` that get the recent-popularity term: new users folded in with a timestamp, when
        the model has counts and a weight > 0."""
        if self.recent_popularity is None or self.config.new_user_recency_weight == 0 or not self._folded_times:
            return np.zeros(0, dtype=np.int64)
        return np.array([r for r, u in enumerate(user_ids) if str(u) in self._folded_times], dtype=np.int64)

    @torch.no_grad()
    def explain(self, user_ids: Sequence[str], item_ids: Sequence[str], top: int = 3) -> pd.DataFrame:
        """Why each user's score of each item is what it is: the user's items that raise it most, and for the item
        its content modalities' shares.

        ``because`` is exact for the served model: :meth:`score` reads a user's items through the item-item head
        (the user vector, id embedding and history as folded, is stored, not recomputed from them), and that head
        is linear in them (EASE, Steck 2019), so the drop of the final score when item ``i`` is removed from the
        user's items is computed in closed form, the per-user standardisation included: ``w * (z_j - z_j^{-i})``
        with ``z^{-i}`` the standardised item-item term of the user's items without ``i``. (Retraining without the
        item, or re-pooling a folded history, could move the user vector too; that is not measured here.)

        Args:
            user_ids: users (known, folded in, or unknown: an unknown user has no items, ``because`` is empty).
            item_ids: catalog items to explain (e.g. a user's list).
            top: at most this many items in ``because``.

        Returns:
            one row per (user, item), users major: ``user_id, item_id`` (str), ``because`` (list of up to ``top``
            item ids whose removal lowers the score, largest drop first; empty without an item-item head),
            ``contributions`` (list of float: those drops, in the score's units), ``modality_weights`` (dict
            modality -> share of the item's fused content vector: the fusion's pooling weights, e.g. ``{"text":
            1.0}``; ``{}`` for an item without content).

        Raises:
            ValueError: an item not in this model's catalog.
        """
        if self.model is None:
            raise RuntimeError("TwoTowerRecommender.explain called before fit or load")
        items = [str(i) for i in item_ids]
        rows = self._item_rows(items)
        modality = self._modality_weights(rows)
        users = [str(u) for u in user_ids]
        because: list[list[str]] = [[] for _ in range(len(users) * len(items))]
        drops: list[list[float]] = [[] for _ in range(len(users) * len(items))]
        if self.item_item is not None and self.config.item_item_weight > 0 and items:
            head = self.item_item.weights  # (H, H) csr
            n_head = head.shape[0]
            columns = self._item_item_map()[:, rows]  # (H, n_items): how each asked item reads the head
            mapped = (head @ columns).toarray()  # (H, n_items): B_i . M_j per head item i
            for u, user in enumerate(users):
                _, cols = self.seen.mask_positions([user], self.item_item.item_ids)
                if not len(cols):
                    continue
                mine = head[cols]  # (S, H): the rows of the user's head items
                scores = np.asarray(mine.sum(axis=0)).ravel()  # (H,) the item-item term over the head
                asked = scores @ columns  # (n_items,)
                mean, var = scores.mean(), scores.var()
                mean_without = mean - np.asarray(mine.mean(axis=1)).ravel()  # (S,)
                square_without = (
                    (scores**2).mean()
                    - 2 * (mine @ scores) / n_head
                    + np.asarray(mine.multiply(mine).sum(1)).ravel() / n_head
                )
                std = np.sqrt(var) if var > 0 else 1.0
                var_without = np.maximum(square_without - mean_without**2, 0.0)
                std_without = np.where(var_without > 0, np.sqrt(var_without), 1.0)
                z = (asked - mean) / std  # (n_items,)
                z_without = (asked[None, :] - mapped[cols] - mean_without[:, None]) / std_without[:, None]
                drop = self.config.item_item_weight * (z[None, :] - z_without)  # (S, n_items)
                names = self.item_item.item_ids[cols]
                for j in range(len(items)):
                    order = np.argsort(-drop[:, j], kind="stable")[:top]
                    order = order[drop[order, j] > 0]
                    because[u * len(items) + j] = [str(names[o]) for o in order]
                    drops[u * len(items) + j] = [float(drop[o, j]) for o in order]
        return pd.DataFrame(
            {
                "user_id": np.repeat(np.array(users, dtype=object), len(items)),
                "item_id": np.tile(np.array(items, dtype=object), len(users)),
                "because": because,
                "contributions": drops,
                "modality_weights": modality * len(users),
            }
        )

    def _modality_weights(self, rows: np.ndarray) -> list[dict[str, float]]:
        """Per catalog row: ``modality -> share`` in the item's fused content vector (present modalities only)."""
        tower = self.model.item_tower
        table = item_table(self.features, self.item_index, self.genre_names, self.modality_dims, rows=rows)
        device = self.device
        feats = tower.reduce([table["features"][m].to(device) for m in tower.modality_names])
        present = table["present"].to(device)
        weights = tower.fusion.modality_weights(feats, present).float().cpu().numpy()
        names = tower.modality_names
        return [
            {names[m]: round(float(w[m]), 4) for m in range(len(names)) if bool(present[r, m])}
            for r, w in enumerate(weights)
        ]

    @torch.no_grad()
    def _item_item_map(self) -> sp.csc_matrix:
        """``(n_head_items, n_catalog)``: how each catalog item reads the item-item head (cached per catalog)."""
        if getattr(self, "_item_item_map_cache", None) is None:
            hidden_ids = item_table(self.features, {}, self.genre_names, self.modality_dims)
            vectors = compute_item_vectors(self.model, hidden_ids)[:, : self.config.embedding_dim]  # v: no bias
            content = vectors.float().cpu().numpy()
            self._item_item_map_cache = self.item_item.catalog_map(
                self.item_ids, content, self.config.item_item_content_neighbours
            )
        return self._item_item_map_cache

    def _trained_rows(self) -> torch.Tensor:
        """Catalog rows of the trained items (the fixed reference set of :meth:`score`'s standardisation)."""
        if getattr(self, "_trained_rows_cache", None) is None:
            rows = self.features.rows(self.trained_item_ids)
            self._trained_rows_cache = torch.from_numpy(rows[rows >= 0]).to(self.device)
        return self._trained_rows_cache

    # ------------------------------------------------------------------ training
    def fit(
        self,
        interactions: pd.DataFrame,
        features: ItemFeatures | None = None,
        init: TwoTowerRecommender | None = None,
    ) -> TwoTowerRecommender:
        """Train ``max_epochs`` epochs on every interaction (the default, ``val_fraction=0``); or, with
        ``val_fraction > 0``, early-stop on validation NDCG@10 (that fraction of each user: the latest rows, or
        random ones with ``val_split="random"``), restore the best weights, then (``refit``) train on everything:
        from scratch for the best epoch count, or (``refit_epochs = n > 0``) on from the best weights for ``n``
        epochs.

        Args:
            interactions: ``user_id, item_id, timestamp[, value]`` implicit positives.
            features: item features covering every interacted item (may hold more items: they rank as cold
                items). Required. The item tower reads its modalities but ``config.exclude_modalities``, wide ones
                of ``config.pca_targets()`` through a PCA fitted here on the catalog's vectors.
            init: warm-started retraining: a trained model of the same architecture (e.g. the champion) to start
                from. Its weights are carried over by user and item id (``warm_start.remap_state``; ids it never
                saw start fresh), then it trains ``config.warm_start_epochs`` epochs on every interaction (the
                new ones and, as replay, all the older ones), without validation, early stopping or refit.

        Sets ``train_stats``: ``best_val_ndcg_at_10, epochs_trained, best_epoch, train_seconds,
        samples_per_second, n_train_interactions, n_val_users, refit, history_items_trained, warm_start,
        item_item_seconds, item_item_items`` (``train_seconds`` includes the item-item fit) (and
        with ``init``: ``warm_start_users_carried``, ``warm_start_items_carried``, the ids whose rows came from it).

        Raises:
            ValueError: no features, empty interactions, missing columns, or interacted items absent from the
                features.
        """
        import lightning as L
        from lightning.pytorch.callbacks import EarlyStopping

        from recsys_pipeline.models.two_tower.datamodule import InteractionDataModule

        if features is None:
            raise ValueError("TwoTowerRecommender.fit needs item features (the content the item tower reads)")
        config, trainer_config = self.config, self.trainer_config
        _check_inputs(interactions, features)
        if trainer_config.num_threads:
            torch.set_num_threads(trainer_config.num_threads)
        L.seed_everything(config.seed, workers=True, verbose=False)
        excluded = config.excluded_modalities()  # the item tower's inputs: the features minus these
        read = features.with_modalities([m for m in features.modality_names if m not in excluded])
        modality_dims = read.modality_dims

        def make_strategy():
            if trainer_config.strategy != "ddp":
                return trainer_config.strategy
            from lightning.pytorch.strategies import DDPStrategy

            # every buffer is the same on all ranks (item table, histories) or unused in training (folded_history):
            # DDP's default broadcast of all buffers from rank 0 before every step would only cost traffic
            return DDPStrategy(forward_sync_buffers=False)

        def make_trainer(max_epochs: int, cbs: list, with_val: bool, logger=self.logger):
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
                deterministic=trainer_config.deterministic,
            )

        reductions = _fit_reductions(read, config, init)

        def make_module(dm):
            table = item_table(read, dm.item_index, features.genre_names, modality_dims)
            return RecommenderModule(
                dm.n_users,
                dm.n_items,
                modality_dims,
                len(features.genre_names),
                config,
                table,
                dm.train_history,
                reductions=reductions,
            )

        dm = InteractionDataModule(
            interactions,
            features,
            0.0 if init is not None else config.val_fraction,
            config.batch_size,
            config.seed,
            val_split=config.val_split,
        )
        module = make_module(dm)
        carried = {}
        if init is not None:
            if init.model is None:
                raise ValueError("fit(init=...) needs a trained model to start from")
            carried = _warm_start(module, init, init.user_ids, dm.user_ids, init.trained_item_ids, dm.item_ids)
        best = BestStateCallback("val_ndcg_at_10", "max")
        cbs = list(self.callbacks)
        if dm.has_validation:
            cbs += [best, EarlyStopping(monitor="val_ndcg_at_10", mode="max", patience=config.patience)]
        trainer = make_trainer(
            config.warm_start_epochs if init is not None else config.max_epochs, cbs, dm.has_validation
        )
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        epochs = int(trainer.current_epoch)
        best.restore(module)
        best_epoch = best.best_epoch if best.best_epoch is not None else epochs - 1
        n_samples = len(dm.train_pairs[0]) * epochs
        n_val_users = int(len(dm.val_users))
        if config.refit and dm.has_validation:
            # the validation holdout is part of each user's activity: train on everything, either again from
            # scratch for the best epoch count or (refit_epochs > 0) on from the best weights for a few epochs
            L.seed_everything(config.seed, workers=True, verbose=False)
            fit_dm, fit_module = dm, module
            dm = InteractionDataModule(interactions, features, 0.0, config.batch_size, config.seed)
            module = make_module(dm)
            refit_epochs = config.refit_epochs or best_epoch + 1
            if config.refit_epochs:
                _warm_start(module, fit_module, fit_dm.user_ids, dm.user_ids, fit_dm.item_ids, dm.item_ids)
            refit_logger = _RefitLogger(self.logger) if self.logger is not None else None
            refit = make_trainer(refit_epochs, list(self.callbacks), False, refit_logger)
            refit.fit(module, datamodule=dm)
            n_samples += len(dm.train_pairs[0]) * refit_epochs
        elif module.use_history and dm.has_validation:
            # serve from every interaction: the folded history ends with the user's latest (validation) items,
            # except items seen only in validation (no id embedding, so padding)
            module.set_history(*InteractionDataModule(interactions, features, 0.0, config.batch_size).train_history)
        module.fold_history()
        if module.model.user_tower.history is not None and hasattr(module, "h_trained"):
            with torch.no_grad():  # rows never trained pool as padding in a later fold-in (with_history)
                pooling = module.model.user_tower.history.emb.weight
                pooling[~module.h_trained.to(pooling.device)] = 0.0
        item_item_seconds = 0.0
        self.item_item = None
        if config.item_item_weight > 0:
            started = time.perf_counter()
            self.item_item = ItemItemHead.fit(
                interactions, config.item_item_l2, config.item_item_neighbours, config.item_item_max_items
            )
            item_item_seconds = time.perf_counter() - started
        self.recent_popularity = RecentPopularity.fit(interactions)  # seconds; new users' fold-in reads it
        seconds = time.perf_counter() - t0
        self.train_stats = {
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
            "warm_start": init is not None,
            "item_item_seconds": item_item_seconds,
            "item_item_items": len(self.item_item.item_ids) if self.item_item is not None else 0,
            **{f"warm_start_{k}": v for k, v in carried.items()},
        }
        self._history_state = {}
        return self._set_state(
            module.model,
            dm.user_ids,
            dm.item_ids,
            features,
            modality_dims,
            list(features.genre_names),
            SeenItems(interactions[["user_id", "item_id"]]),
        )

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` (weights), ``config.json`` (config, widths, genres), ``id_maps.json``,
        ``item_features.npz``, ``seen.parquet``, ``recommender.json`` and, with an item-item head,
        ``item_item.npz`` + ``item_item_ids.json``, and ``recent_popularity.npz`` (new users' recency term); no
        pickle anywhere."""
        from safetensors.torch import save_file

        d = Path(directory)
        version = FORMAT_VERSION if self.item_item is not None else 2
        self._save_common(d, {"format_version": version})
        # the user-history pooling is folded into ``user_tower.folded_history`` after training: its weights are
        # dead in the served model, saved for warm-started retraining only (``fit(init=...)``)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        state.update({k: v.detach().cpu().contiguous() for k, v in getattr(self, "_history_state", {}).items()})
        save_file(state, str(d / "model.safetensors"), metadata={"format_version": str(version)})
        meta = {
            "format_version": version,
            "model_config": self.config.to_dict(),
            "modality_dims": self.modality_dims,
            "genre_names": self.genre_names,
            "n_users": len(self.user_ids),
            "n_items": len(self.trained_item_ids),
        }
        (d / "config.json").write_text(json.dumps(meta, indent=2))
        (d / "id_maps.json").write_text(json.dumps({"user_ids": self.user_ids, "item_ids": self.trained_item_ids}))
        self.features.to_npz(d / "item_features.npz")
        if self.item_item is not None:
            self.item_item.save(d)
        if self.recent_popularity is not None:
            self.recent_popularity.save(d)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        features: ItemFeatures | None = None,
        seen: pd.DataFrame | None = None,
        map_location: str = "cpu",
    ) -> TwoTowerRecommender:
        """Rebuild what :meth:`save` wrote, with identical scores.

        Args:
            directory: the saved model.
            features: the catalog to rank (e.g. today's, with new items); default the saved ``item_features.npz``.
            seen: ``user_id, item_id`` pairs to exclude; default the saved ``seen.parquet`` (none when absent).
            map_location: device for the weights.

        Raises:
            ValueError: an unknown ``format_version``, or no features given and none saved.
        """
        from safetensors.torch import load_file

        d = Path(directory)
        meta = json.loads((d / "config.json").read_text())
        if meta.get("format_version") not in _READABLE_FORMATS:
            raise ValueError(f"unsupported model format_version {meta.get('format_version')!r} in {d}")
        maps = json.loads((d / "id_maps.json").read_text())
        config = ModelConfig.from_dict(meta["model_config"])
        if features is None:
            if not (d / "item_features.npz").exists():
                raise ValueError(f"{d} holds no item_features.npz: pass the item features to rank")
            features = ItemFeatures.from_npz(d / "item_features.npz")
        if seen is None:
            path = d / "seen.parquet"
            seen = pd.read_parquet(path) if path.exists() else pd.DataFrame({"user_id": [], "item_id": []})
        state = load_file(str(d / "model.safetensors"), device=map_location)
        # the pooling was folded before saving: rebuild without it, with the history head if the file has one
        # (models saved before the history head existed have none)
        module = RecommenderModule(
            len(maps["user_ids"]),
            len(maps["item_ids"]),
            meta["modality_dims"],
            len(meta["genre_names"]),
            replace(config, history_length=0),
            history_head=_FOLDED_KEY in state,
            reductions=_saved_reductions(state),
        )
        module.model.load_state_dict({k: v for k, v in state.items() if not k.startswith(_HISTORY_PREFIX)})
        module.model.to(map_location)  # load_state_dict copies into the CPU-built module
        loaded = cls(config)
        loaded._history_state = {k: v for k, v in state.items() if k.startswith(_HISTORY_PREFIX)}
        loaded.item_item = ItemItemHead.load(d)
        loaded.recent_popularity = RecentPopularity.load(d)  # None for a model saved before it existed: no term
        if loaded.item_item is None and config.item_item_weight > 0:
            raise ValueError(
                f"{d} was trained with an item-item head (weight {config.item_item_weight}) but holds no "
                f"{ItemItemHead.FILE}: its scores cannot be rebuilt"
            )
        return loaded._set_state(
            module.model,
            maps["user_ids"],
            maps["item_ids"],
            features,
            meta["modality_dims"],
            meta["genre_names"],
            SeenItems(seen),
        )


def two_tower_for_split(config: ModelConfig, trainer: TrainerConfig, val_split: str) -> TwoTowerRecommender:
    """An unfitted model whose validation split (if ``config`` has one) is carved as ``val_split``: evaluation's
    ``make_model`` as ``functools.partial(two_tower_for_split, config, trainer)`` (picklable, unlike a lambda)."""
    return TwoTowerRecommender(replace(config, val_split=val_split), trainer)


def _warm_start(
    module: RecommenderModule,
    trained: RecommenderModule | TwoTowerRecommender,
    old_users: Sequence[str],
    new_users: Sequence[str],
    old_items: Sequence[str],
    new_items: Sequence[str],
) -> dict[str, int]:
    """Load ``trained``'s weights (a module being fitted, or a fitted / loaded recommender) into ``module``
    (other vocabularies: ``warm_start.remap_state``), and which items' history embeddings were trained.
    Returns the counts of carried users and items."""
    old_state = dict(trained.model.state_dict())
    old_state.update(getattr(trained, "_history_state", {}))  # a loaded model keeps its pooling weights aside
    # a loaded model has no flags: the warm epochs mark every item they pool again
    trained_ids = getattr(trained, "h_trained", None)
    state, counts = remap_state(old_state, module.model.state_dict(), old_users, new_users, old_items, new_items)
    module.model.load_state_dict(state)
    if trained_ids is not None and hasattr(module, "h_trained"):
        module.h_trained, _ = carry_rows(trained_ids.cpu(), module.h_trained, old_items, new_items)
    return counts


_REDUCER_KEY = "item_tower.reducers.{}.{}"


def _fit_reductions(
    features: ItemFeatures, config: ModelConfig, init: TwoTowerRecommender | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """``name -> fitted PCA`` of the modalities of ``config.pca_targets()`` that are wider than ``pca_dim`` and
    present on more than ``pca_dim`` items (fitted on their present vectors of the whole catalog: content only, no
    interaction); the others stay raw. With ``init`` (a warm start), ``init``'s fitted PCAs: its fusion weights
    read those coordinates.

    Raises:
        ValueError: "cannot warm start": ``init`` reduces other modalities or to other widths than ``config`` would.
    """
    plan = {}
    for m in config.pca_targets():
        if m in features.modalities:
            vectors = features.modalities[m][features.present[:, features.modality_names.index(m)]]
            if config.pca_dim < min(vectors.shape):
                plan[m] = vectors
    if init is not None:
        carried = _saved_reductions(init.model.state_dict())
        wanted = dict.fromkeys(plan, config.pca_dim)
        if {m: len(r["components"]) for m, r in carried.items()} != wanted:
            raise ValueError(f"cannot warm start: the trained model reduces {sorted(carried)}, this config {wanted}")
        return carried
    return {m: fit_modality_pca(vectors, config.pca_dim) for m, vectors in plan.items()}


def _saved_reductions(state: dict[str, torch.Tensor]) -> dict[str, dict[str, np.ndarray]]:
    """The fitted PCAs in a ``TwoTowerModel`` state dict (none in a model saved before they existed)."""
    names = sorted({k.split(".")[2] for k in state if k.startswith("item_tower.reducers.")})
    return {
        m: {part: state[_REDUCER_KEY.format(m, part)].cpu().numpy() for part in ("mean", "components", "scale")}
        for m in names
    }


def _standardise(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(values - mean) / std`` per row, with the mean and std of ``reference``'s row (a constant row: std 1)."""
    mean = reference.mean(axis=1, keepdims=True)
    std = reference.std(axis=1, keepdims=True)
    return (values - mean) / np.where(std > 0, std, 1.0)


def _check_inputs(interactions: pd.DataFrame, features: ItemFeatures) -> None:
    if interactions is None or len(interactions) == 0:
        raise ValueError("interactions is empty: nothing to train on")
    missing_cols = {"user_id", "item_id", "timestamp"} - set(interactions.columns)
    if missing_cols:
        raise ValueError(f"interactions lacks columns {sorted(missing_cols)}")
    features.validate()
    items = pd.Index(interactions["item_id"].astype(str).unique())
    absent = items[~items.isin(features.item_ids)]
    if len(absent):
        n_rows = int(interactions["item_id"].astype(str).isin(absent).sum())
        raise ValueError(
            f"{len(absent)} of {len(items)} interacted items ({n_rows} interactions) are absent from the item "
            f"features, e.g. {list(absent[:5])}; filter interactions to the catalog or add their features"
        )
