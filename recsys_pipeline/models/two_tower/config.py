"""``ModelConfig`` and ``TrainerConfig``: the only place the two-tower model's and the Trainer's defaults are written.

Resources and the CLI build them (overriding fields the user set); the ``nn.Module``s, the ``LightningModule`` and
the recommender receive them. No torch import here, so light processes (the code location, the CLI) can build one.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

from recsys_pipeline.models.validation import VALIDATION_SPLITS

__all__ = ["ModelConfig", "TrainerConfig", "FUSIONS", "FUSION_POOLINGS", "LOSSES", "LEGACY_VALUES"]

FUSIONS = ("attention", "concat")
FUSION_POOLINGS = ("attention", "mean")
LOSSES = ("softmax", "sampled_softmax", "bpr")


@dataclass(frozen=True)
class ModelConfig:
    """Model and optimisation settings of the two-tower recommender.

    Defaults were chosen on MovieLens ml-latest-small (per-user last-20% holdout, MiniLM text vectors): larger lr /
    batch, a linear MLP shortcut (``skip``) and stronger weight decay all converged faster but to worse NDCG@10.

    Epochs: by default ``max_epochs`` epochs on every interaction, no validation split (``val_fraction=0``). With
    ``val_fraction > 0`` training early-stops on that validation split (``patience``, ``max_epochs`` the cap) and,
    with ``refit=True``, retrains on all interactions for the best epoch count: about twice the time of a fixed
    count (an early-stopping phase of best + 1 + patience epochs, then the refit), and measured over 5 seeds on
    ``model_evaluation``'s protocols (``benchmarks/results/model_changes.md``, session of 2026-12-05) 12 fixed
    epochs are level or better: per-user holdout NDCG@10 0.1386 ± 0.0026 vs 0.1300 ± 0.0069, item cold start
    0.3112 ± 0.0130 vs 0.3162 ± 0.0080 (within the seed spread). On data of another size or density the best
    epoch count differs: set ``max_epochs`` from ``benchmarks/variants.py`` or turn early stopping on
    (``val_fraction=0.1, max_epochs=20``).

    Negatives (every loss) are drawn only from items with training interactions: an item nobody has interacted
    with yet is unknown, not disliked. ``loss="softmax"`` is the full softmax over all those items (no sampling
    bias; ~8x the CPU time per step of 512 sampled negatives on ml-latest-small).

    ``history_length=L > 0`` adds a history head: a learned recency-weighted pooling of the user's last ``L`` items
    (causal in training: only items before the positive), scored against a separate item-id output embedding
    only, so a new item is ranked by the id embedding and its content alone; it is stored per user after training.
    ``history_dropout`` hides a training pair's whole history so the id-and-content part also learns to rank on its
    own.

    Modalities: by default the item tower reads every modality of the item features but images
    (``exclude_modalities="image"``): on ml-latest-small with the MovieLens posters, every way of reading them that
    was tried ranked new items worse than text alone, the posters' own items most of all, and warm items no better
    (``model_evaluation``'s splits, 3 seeds, ``benchmarks/variants.py``; ``benchmarks/results/model_changes.md``,
    session of 2026-12-06): item cold start Recall@20 text only 0.272 ± 0.006 (new items with a poster 0.287), raw
    1,280-d poster vectors 0.237 (0.207), their first 32 principal components (``pca_dim``) with attention pooling
    (``fusion_pooling="attention"``), the best image variant, 0.265 (0.245). ``exclude_modalities=""`` reads them
    (through ``pca_dim`` components, pooled by learned weights).

    ``item_item_weight=w > 0`` adds an item-item head (EASE, Steck 2019; ``item_item.ItemItemHead``) fitted in
    closed form on the training interactions: the score becomes ``z(two-tower) + w * z(item-item)``, each
    standardised per user over the trained items, so ``w`` is scale-free. It scores from the set of the user's items,
    order ignored. On ``model_evaluation``'s splits of ml-latest-small (3 seeds, ``benchmarks/variants.py``;
    ``benchmarks/results/model_changes.md``, session of 2026-12-07) ``w = 0.05`` lifts the per-user temporal
    holdout's NDCG@10 from 0.1370 ± 0.0047 to 0.1499 ± 0.0027 (Recall@20 0.1456 -> 0.1532; ``w = 0.1``: less) and
    leaves item cold start unchanged (then a new item had no item-item weight); a per-user random holdout wants
    far more (``w = 0.5`` without the history head: NDCG@10 0.40 against 0.31 without the item-item head), which
    ``model_tuning`` finds on such data. Cost: one ``(n, n)`` Cholesky
    inverse per fit over the ``item_item_max_items`` most-interacted items: the 5,000 of them score as all 9,700
    (NDCG@10 0.1499 ± 0.0029 vs 0.1499 ± 0.0027; 3,000: 0.1484) at about a seventh of the time.

    ``item_item_content_neighbours=k > 0``: an item outside the head (a new item, or a rarely interacted one)
    borrows the cosine-weighted mean of the item-item scores of its ``k`` nearest head items by the item tower's
    content vector (id hidden). Same splits and seeds (``model_changes.md``, second session of 2026-12-07):
    ``k = 10`` against none: item cold start NDCG@10 0.3542 ± 0.0155 -> 0.3799 ± 0.0134, new items in the whole
    catalogue (``item_cold_mixed``) NDCG@10 0.0001 -> 0.0175 ± 0.0047, the temporal holdout unchanged (0.1499).

    ``new_user_recency_weight=w > 0``: a user the model has no embedding for, folded in from their interactions
    (``TwoTowerRecommender.with_history``), also gets ``w * z(log(1 + recent popularity))``: the distinct users per
    item in the ``new_user_recency_days`` UTC days before the day of their latest interaction
    (``models.popularity.recent.RecentPopularity``, counted at fit time from the training interactions). Known
    users are unchanged: their embedding already places them in time. On ``benchmarks/user_cold_start.py``'s
    protocol, validation users carved from each seed's train users (3 seeds x 55 users; ``model_changes.md``,
    sixth session of 2026-12-07), Recall@20 / NDCG@10 with 3 revealed items 0.0983 / 0.4427 -> 0.1127 / 0.4803 with
    ``w = 0.5`` over 365 days (with 10: 0.0988 / 0.4213 -> 0.1156 / 0.4362); 90 days, or ``w`` 1 to 4, did less.

    History head, measured (validation split carved from the benchmark's train split, text only, seed 0): no
    history -> history head: per-user holdout NDCG@10 0.088 -> 0.153, Recall@20 0.108 -> 0.183; item cold start
    NDCG@10 0.273 -> 0.313, Recall@20 0.222 -> 0.263. Figures per change: ``benchmarks/results/model_changes.md``.
    The figures above were measured with the users' tags in the item text, as it was before the tags left it
    (seventh session of 2026-12-07); the quality benchmark's tables (``benchmarks/results/quality.md``) are on
    today's text.

    Raises:
        ValueError: a field outside its range (the message names the field).
    """

    embedding_dim: int = 64  # D: id embedding, fusion width and output width
    fusion: str = "attention"  # "attention" | "concat"
    fusion_pooling: str = "attention"  # attention fusion: learned "attention" weights of the tokens | their "mean"
    n_heads: int = 4  # attention heads over modality tokens
    cross_layers: int = 1  # DCN-V2 cross layers
    mlp_hidden: int = 64
    genre_dim: int = 16  # width of the genre projection
    year_dim: int = 8  # width of the release-year bucket embedding
    skip: bool = False  # linear shortcut around the item MLP (measured: overfits faster on ml-latest-small)
    dropout: float = 0.1
    id_dropout: float = 0.3  # training: probability of hiding an item's id (it must rank from content alone)
    modality_dropout: float = 0.2  # training: probability of hiding each present modality (never all)
    exclude_modalities: str = "image"  # comma-separated modalities the item tower does not read ("" = none)
    pca_dim: int = 32  # modalities of pca_modalities are read through their first pca_dim principal components
    pca_modalities: str = "image,audio"  # comma-separated; "" = every modality raw (see modules.ModalityPCA)
    loss: str = "sampled_softmax"  # "softmax" (full, over every known item) | "sampled_softmax" | "bpr"
    history_length: int = 50  # history head: recency-weighted pooling of the last L items (0 = off)
    history_dropout: float = 0.25  # training: probability of hiding a pair's whole history
    history_decay: float = 10.0  # initial position weights exp(-l / decay) of the history pooling
    num_negatives: int = 512
    lr: float = 3e-3
    weight_decay: float = 1e-5
    batch_size: int = 1024
    max_epochs: int = 12  # epochs on every interaction; with val_fraction > 0, the cap of early stopping
    patience: int = 2  # with val_fraction > 0: early stopping on validation NDCG@10
    val_fraction: float = 0.0  # > 0: per user, this fraction is an early-stopping validation split (0 = none)
    val_split: str = "last"  # which rows: "last" (latest by time) or "random" (seeded); evaluation sets it per protocol
    refit: bool = True  # after early stopping, train on all interactions (validation part included)
    refit_epochs: int = 0  # 0: the refit starts from scratch for the best epoch count; n: on from the best weights
    warm_start_epochs: int = 2  # warm-started retraining (fit(init=champion)): epochs on every interaction
    item_item_weight: float = 0.05  # > 0: blend in the EASE item-item head (see below); 0 = off
    item_item_l2: float = 500.0  # EASE's λ
    item_item_neighbours: int = 200  # item-item weights kept per item
    item_item_max_items: int = 5_000  # only the most-interacted items get item-item weights (O(n³) time)
    item_item_content_neighbours: int = 10  # an item outside the head borrows k content neighbours' scores (0 = off)
    new_user_recency_weight: float = 0.5  # new users folded in: blend in the popularity of their time (0 = off)
    new_user_recency_days: int = 365  # ... over the days before their latest interaction
    seed: int = 42

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.fusion_pooling not in FUSION_POOLINGS:
            raise ValueError(f"fusion_pooling must be one of {FUSION_POOLINGS}, got {self.fusion_pooling!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in (
            "embedding_dim",
            "n_heads",
            "mlp_hidden",
            "genre_dim",
            "year_dim",
            "num_negatives",
            "batch_size",
            "max_epochs",
            "warm_start_epochs",
            "item_item_neighbours",
            "item_item_max_items",
            "new_user_recency_days",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.embedding_dim % self.n_heads:
            raise ValueError(f"embedding_dim {self.embedding_dim} must be divisible by n_heads {self.n_heads}")
        if self.cross_layers < 0 or self.patience < 0 or self.refit_epochs < 0 or self.pca_dim < 0:
            raise ValueError("cross_layers, patience, refit_epochs and pca_dim must be >= 0")
        for name in ("dropout", "id_dropout", "modality_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.history_length < 0:
            raise ValueError(f"history_length must be >= 0 (0 = off), got {self.history_length}")
        if not 0.0 <= self.history_dropout < 1.0:
            raise ValueError(
                f"history_dropout must be in [0, 1) (1 would never train the history), got {self.history_dropout}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_split not in VALIDATION_SPLITS:
            raise ValueError(f"val_split must be one of {VALIDATION_SPLITS}, got {self.val_split!r}")
        if self.item_item_weight < 0 or self.item_item_l2 <= 0:
            raise ValueError(
                f"item_item_weight must be >= 0 (0 = off) and item_item_l2 > 0, got {self.item_item_weight}, "
                f"{self.item_item_l2}"
            )
        if not (self.lr > 0 and self.weight_decay >= 0 and self.history_decay > 0):
            raise ValueError("lr and history_decay must be > 0, weight_decay >= 0")
        if self.new_user_recency_weight < 0:
            raise ValueError(f"new_user_recency_weight must be >= 0 (0 = off), got {self.new_user_recency_weight}")
        if self.item_item_content_neighbours < 0:
            raise ValueError(
                f"item_item_content_neighbours must be >= 0 (0 = off), got {self.item_item_content_neighbours}"
            )

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """A config from a dict such as ``asdict(config)`` from an older release: unknown keys are ignored, a
        missing field takes the value the releases before it had (:data:`LEGACY_VALUES`), else today's default."""
        names = {f.name for f in fields(cls)}
        return cls(**{**LEGACY_VALUES, **{k: v for k, v in values.items() if k in names}})

    @classmethod
    def from_params(cls, params: dict[str, str]) -> ModelConfig:
        """A config from text values (MLflow params ``model.*`` with the prefix removed); unknown keys ignored, a
        missing field as in :meth:`from_dict`.

        Raises:
            ValueError: a value cannot be read as its field's type.
        """
        defaults = cls()
        values: dict[str, object] = dict(LEGACY_VALUES)
        for f in fields(cls):
            if f.name not in params:
                continue
            text, default = params[f.name], getattr(defaults, f.name)
            if isinstance(default, bool):
                values[f.name] = text == "True"
            elif isinstance(default, int):
                values[f.name] = int(text)
            elif isinstance(default, float):
                values[f.name] = float(text)
            else:
                values[f.name] = text
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    def excluded_modalities(self) -> list[str]:
        """The modalities of :attr:`exclude_modalities` (the item tower ignores them even when the features have
        them)."""
        return [m.strip() for m in self.exclude_modalities.split(",") if m.strip()]

    def pca_targets(self) -> list[str]:
        """The modalities to read through a PCA (:attr:`pca_modalities`; none when :attr:`pca_dim` is 0)."""
        if self.pca_dim == 0:
            return []
        return [m.strip() for m in self.pca_modalities.split(",") if m.strip()]


# What a model saved (or a run logged) before a field existed was trained with: a config read back without the
# field gets this value, not today's default, so a saved model rebuilds the architecture it was trained as.
LEGACY_VALUES = {
    "exclude_modalities": "",
    "pca_dim": 0,
    "fusion_pooling": "mean",
    "item_item_weight": 0.0,
    "item_item_content_neighbours": 0,
    "new_user_recency_weight": 0.0,
}


@dataclass(frozen=True)
class TrainerConfig:
    """Lightning ``Trainer`` settings: ``accelerator="auto"`` uses a GPU when present; ``strategy="ddp"`` with
    ``devices`` > 1 (and ``num_nodes``) trains data-parallel.

    ``num_threads``: ``torch.set_num_threads`` before training (``None`` = torch default). On a CPU shared with other
    busy processes ``1`` was measured 3x faster than 2 threads on 2 cores (OpenMP oversubscription). The thread
    count changes the order of float sums, so fits with different counts differ as fits with different seeds do.

    ``deterministic``: Lightning's ``Trainer(deterministic=...)``. ``"warn"`` (the default) makes torch use its
    deterministic algorithms where it has them and only warn where it has not (some CUDA kernels), so two fits with
    the same seed, data and thread count give the same model. Without it, the backward pass of indexing on more
    than one CPU thread accumulates in a varying order: two 2-thread fits of the default model on ml-latest-small
    differed by up to 2.0 in a score and in user 1's top-10, at the same fit time (27 s). ``True`` raises where a
    deterministic algorithm is missing; ``False`` leaves torch's defaults.
    """

    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    num_nodes: int = 1
    num_threads: int | None = None
    enable_progress_bar: bool = False
    deterministic: bool | str = "warn"

    def __post_init__(self) -> None:
        if self.deterministic not in (True, False, "warn"):
            raise ValueError(f"deterministic must be True, False or 'warn', got {self.deterministic!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def concurrent_fits(self, n_fits: int) -> int:
        """How many independent fits of this config may run at once in their own processes (the evaluation's
        per-protocol models): ``min(n_fits, cores)`` on a CPU-only machine with the ``auto`` / ``cpu``
        accelerator, else 1 (one accelerator, or DDP, is not shared between processes)."""
        if self.strategy == "ddp" or self.accelerator not in ("auto", "cpu") or self.num_nodes > 1:
            return 1
        if self.accelerator == "auto":
            import torch

            if torch.cuda.is_available() or torch.backends.mps.is_available():
                return 1
        return max(1, min(n_fits, os.cpu_count() or 1))
