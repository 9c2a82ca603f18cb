"""Quality benchmark: our two-tower model vs strong peers on the project's evaluation protocols, equal tuning budgets.

Data: the bundled ml-latest-small, every rating an implicit positive; ``--k-core N`` evaluates on its ``N``-core
(``EvaluationSettings.k_core``: ``0`` every interaction, ``10`` users and items with >= 10 interactions).

Protocols (``recsys_pipeline.evaluation.protocols``, the splits ``model_evaluation`` uses; ``--protocols``, default
all four), each split with ``EvaluationSettings(seed=run seed, k_core=N)``:

* ``user_last_fraction``: per user the latest 20% is test; candidates = the catalog minus the user's train items.
  The split does not depend on the seed (the spread over seeds is the models' own).
* ``user_random_fraction``: per user a seeded random 25% is test (seed-dependent); candidates as above.
* ``item_cold_start``: a seeded random 20% of items moves to test with all its interactions (seed-dependent); each
  test user ranks only those held-out items: ``evaluate()``'s ``cold_candidates_ndcg_at_10`` /
  ``cold_candidates_recall_at_20``.
* ``item_cold_mixed``: the same split and the same fitted model as ``item_cold_start`` (``split_family``), but the
  held-out items are ranked among the whole catalogue: ``evaluate()``'s ``cold_ndcg_at_10`` / ``cold_recall_at_20``
  (truth = the test items not in train, i.e. every held-out item here, in the whole-catalogue ranking) and
  ``cold_share_at_20`` (the share of the top-20 slots the new items get).

Metrics come from ``recsys_pipeline.evaluation.evaluate.evaluate`` (what ``model_evaluation`` uses): every model,
peers included, ranks through ``Recommender.recommend``.

Peers (``--models``, default all): ``ours`` (two-tower, text), ``popularity``, ``random``, ``content_knn`` (mean text
vector of the user's items, cosine), ``implicit`` ``als`` / ``bpr``; cornac 3.x ``cornac_bpr``, ``bivae``, ``ease``
and ``vbpr`` (visual features = poster embeddings of the project's ``ImageEncoder``, EfficientNet-Lite0, when
``--posters DIR`` is given, e.g. ``../shared/data/movielens-posters``: 2,947 of the 9,742 items have one, the others
get a zero vector; encoded once in ~30 s and cached in ``benchmarks/.cache/``; without posters its row is N/A);
``itemknn`` (item-based k-NN for top-N, cosine; not cornac's ``ItemKNN``, a rating predictor that ranks nothing on
all-ones data, see :class:`ItemKNN`); LightFM WARP ``lightfm_ids``, ``lightfm_genres`` (ids + genres),
``lightfm_genres_text`` (ids + genres + text PCA-32) and ``lightfm_content`` (item features only: genres + the full
text vectors, no id features: a cold-start peer). Pure collaborative peers cannot rank an item with no interactions
(no trained factor): their cold-protocol cells are N/A, with the reason in the notes; VBPR ranks a new item by its
visual part alone. Every peer is wrapped behind the ``Recommender`` contract (``FactorScorer``, ``CornacScorer``:
our ids map to cornac's through ``Dataset.from_uir`` of the train part); seeds are set and BLAS / OpenMP / torch
run one thread per fit.

Budgets: every family with hyperparameters gets the same number of Optuna trials (``--trials``, default 10;
``TPESampler(seed=0)``; the first trial is the family's documented default via ``study.enqueue_trial``); a family
without hyperparameters (popularity, random, content k-NN) takes 1. Each trial is fitted on an inner train part and
scored by validation NDCG@10 (of the protocol's own ranking; the two item-cold protocols share a split and a model and
are tuned on the mean of their two NDCG@10, ``evaluation.tuning.validation_value``); the validation split is carved from
the first seed's train part exactly as the protocol carves its test part (``make_split(train, protocol,
EvaluationSettings(seed=1000 + seed))``), never from test; our model also gets ``val_split=validation_split(protocol)``.
Tuning is done once per split (``item_cold_mixed`` shares ``item_cold_start``'s); the chosen setting is then fitted on
each seed's train part. With MLflow on, every trial is a child run of the benchmark run (experiment
``quality_benchmark``; tracking URI from ``$MLFLOW_TRACKING_URI``, else the SQLite store under ``$RECSYS_HOME``).

Table (``benchmarks/results/quality.md``): rows = models, columns = protocol x {Recall@20, NDCG@10} (+ cold
share@20 for ``item_cold_mixed``), mean ± sample std over seeds, the chosen parameters, mean fit seconds and notes;
the header gives the data view, seeds, trials, commit, wall time and the command line.

The item text is the pipeline's (``build_item_catalog``): title and genres, without the users' tags (``tags.csv``),
which a brand-new item would not have yet and which follow popularity; ``--user-tags-in-text`` puts them in (the
text of the runs before 2026-12-07's seventh session), and with it ``--cold-without-tags`` describes the held-out
items of the item-cold protocols (and of their tuning splits) without their tags, their text rebuilt and re-encoded
(:class:`UntaggedColdItems`; the table goes to ``..._cold_without_tags.md``). ``--params-from`` takes each family's
chosen params from an earlier run's ``--rows-out`` file instead of searching (the header says so).

Text vectors of the 9,742 catalog texts are computed once with the project's ``TextEncoder`` and cached in
``benchmarks/.cache/`` keyed by model id and per-item SHA-256 of the text (poster vectors likewise, by file SHA-256).

Duration (full data, one thread per fit, 2 shared cores, measured 2026-12-07 at commit a60c794): one fit of ours
(12 epochs) ~28 s, EASE ~30 s, VBPR ~2.2 s per epoch, LightFM ~1.2 s per epoch with ids / genres / PCA-32 text but
~11.5 s per epoch with the full 384-d text (``lightfm_content``), BiVAE ~0.23 s per epoch, ALS / BPR / cornac BPR /
item k-NN 0.4-3 s, an evaluation 0.5-2 s. A family with hyperparameters fits 3 splits x (trials + seeds) times (2
splits for the pure collaborative ones): the default run (4 protocols, 3 seeds, 10 trials, posters) is about 7.5 h
in one process, ~4.5 h of it ``lightfm_content``; run that family in a second process (``--models lightfm_content
--rows-out b.json``) beside the others (``--rows-out a.json``) and ``--merge a.json b.json``.

Usage::

    nice -n 10 .venv/bin/python benchmarks/quality.py [--seeds 0 1 2] [--trials 10] [--k-core 0]
        [--protocols user_last_fraction ...] [--models ours ease ...] [--posters DIR] [--max-users N]
        [--rows-out rows.json] [--no-mlflow] [--cold-without-tags] [--params-from rows.json ...]
    .venv/bin/python benchmarks/quality.py --merge a.json b.json   # one table from runs on the same splits
    .venv/bin/python benchmarks/quality.py --quick --no-mlflow      # smoke: 1 seed, 2 trials, tiny epochs (to /tmp)
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS / OpenMP thread per fit: deterministic, no oversubscription
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Collection, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_pipeline.content.features import ItemFeatures  # noqa: E402
from recsys_pipeline.data.catalog import build_item_catalog  # noqa: E402
from recsys_pipeline.data.sources import MovieLensSource  # noqa: E402
from recsys_pipeline.evaluation.evaluate import evaluate as evaluate_split  # noqa: E402
from recsys_pipeline.evaluation.protocols import (  # noqa: E402
    EvaluationSettings,
    Split,
    make_split,
    split_family,
    validation_split,
    view_catalog,
)
from recsys_pipeline.evaluation.tuning import (  # noqa: E402
    TUNED_FIELDS,
    Trial,
    tune,
    two_tower_space,
    two_tower_variants,
    validation_metric,
)
from recsys_pipeline.models.base import Recommender  # noqa: E402
from recsys_pipeline.models.popularity import PopularityRecommender  # noqa: E402
from recsys_pipeline.models.random import RandomRecommender  # noqa: E402
from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig  # noqa: E402
from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender  # noqa: E402

CACHE_DIR = ROOT / "benchmarks" / ".cache"
RESULTS_DIR = ROOT / "benchmarks" / "results"
DEFAULT_POSTERS = ROOT.parent / "shared" / "data" / "movielens-posters"

BENCH_PROTOCOLS = ("user_last_fraction", "user_random_fraction", "item_cold_start", "item_cold_mixed")
SEED_DEPENDENT = ("user_random_fraction", "item_cold_start", "item_cold_mixed")
# protocol -> (table column, evaluate() key); see the module docstring for what each key means
METRICS = {
    "user_last_fraction": [("Recall@20", "recall_at_20"), ("NDCG@10", "ndcg_at_10")],
    "user_random_fraction": [("Recall@20", "recall_at_20"), ("NDCG@10", "ndcg_at_10")],
    "item_cold_start": [("Recall@20", "cold_candidates_recall_at_20"), ("NDCG@10", "cold_candidates_ndcg_at_10")],
    "item_cold_mixed": [
        ("Recall@20", "cold_recall_at_20"),
        ("NDCG@10", "cold_ndcg_at_10"),
        ("cold share@20", "cold_share_at_20"),
    ],
}
NO_FACTOR = "no interactions = no trained factor"
TAGGED_TEXT = "title, genres and the users' tags"


# ---------------------------------------------------------------------- data
def load_interactions() -> pd.DataFrame:
    """``user_id, item_id, timestamp`` (str, str, datetime64) of every rating in the bundled ml-latest-small."""
    src = MovieLensSource()
    r = pd.read_csv(src.root / "ratings.csv", dtype=str)
    return pd.DataFrame(
        {
            "user_id": r["userId"].astype(str),
            "item_id": r["movieId"].astype(str),
            "timestamp": pd.to_datetime(r["timestamp"].astype(np.int64), unit="s"),
        }
    )


def load_catalog(tags_in_text: bool = False, untagged: Collection[str] = ()) -> pd.DataFrame:
    """The pipeline's ``item_catalog`` rows (``item_id, title, genres, year, text, ...``) for ml-latest-small, the
    users' tags (``tags.csv``) in the text when ``tags_in_text`` (the pipeline's ``RECSYS_USER_TAGS_IN_TEXT``)
    except for the items of ``untagged``, described as a brand-new item would be."""
    items, tags = MovieLensSource().read_catalog()
    if len(untagged):
        tags = tags[~tags["item_id"].astype(str).isin(set(map(str, untagged)))]
    catalog = build_item_catalog(items, tags, tags_in_text=tags_in_text)
    return catalog.sort_values("item_id", kind="stable").reset_index(drop=True)


class UntaggedColdItems:
    """``--user-tags-in-text --cold-without-tags``: ``(split, content) -> content`` where the split's held-out (cold)
    items are described
    without their user tags, their text rebuilt by the pipeline's ``build_item_catalog`` and re-encoded (cached like
    every text vector); other splits and items are unchanged. Tags are written by users who interacted with a movie
    (and which movies got tagged follows their popularity), so a brand-new item has none: with them, a cold item's
    text carries a trace of its interactions. ``image``: the poster vectors, kept as they are."""

    def __init__(self, image: tuple[list[str], np.ndarray] | None = None):
        self.image = image
        self._built: dict[frozenset, ItemFeatures] = {}

    def __call__(self, split: Split, content: ItemFeatures) -> ItemFeatures:
        if split.cold_items is None or not len(split.cold_items):
            return content
        cold = frozenset(map(str, split.cold_items))
        if cold not in self._built:
            catalog = load_catalog(tags_in_text=True, untagged=cold)
            self._built[cold] = build_content(catalog, text_vectors(catalog["text"].tolist()), self.image)
        return self._built[cold].subset(list(content.item_ids))  # the data view's items, in its order


def _cached_vectors(name: str, keys: list[str], encode: Callable[[list[int]], tuple[list[int], np.ndarray]]):
    """``{key: vector}`` for ``keys`` from ``benchmarks/.cache/{name}.npz``; missing keys are encoded (``encode(
    positions) -> (encoded positions, vectors)``) and added to the cache."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"{name}.npz"
    cached: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            cached = dict(zip(z["hashes"].tolist(), z["vectors"]))
    todo = [i for i, h in enumerate(keys) if h not in cached]
    if todo:
        done, vecs = encode(todo)
        for i, v in zip(done, vecs):
            cached[keys[i]] = v
        if cached:
            order = sorted(cached)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, hashes=np.asarray(order), vectors=np.stack([cached[k] for k in order]).astype(np.float32))
            os.replace(tmp, path)
    return cached


def text_vectors(texts: Sequence[str], encoder_factory: Callable | None = None) -> np.ndarray:
    """``(len(texts), 384) float32`` unit-norm text vectors, cached by model id + SHA-256 of each text.

    Only texts missing from the cache are encoded (project ``TextEncoder``, one thread).
    """
    from recsys_pipeline.content.text import TextEncoder, content_hash, default_text_model_path

    hashes = [content_hash(t) for t in texts]

    def encode(todo):
        encoder = (encoder_factory or (lambda: TextEncoder(num_threads=1)))()
        t0 = time.perf_counter()
        vecs = encoder.encode([texts[i] for i in todo])
        print(f"[text] encoded {len(todo)} texts in {time.perf_counter() - t0:.1f}s", flush=True)
        return todo, vecs

    cached = _cached_vectors(f"text_{Path(default_text_model_path()).name}", hashes, encode)
    return np.stack([cached[h] for h in hashes]).astype(np.float32)


def poster_vectors(item_ids: Sequence[str], posters: Path) -> tuple[list[str], np.ndarray]:
    """``(ids, (n, 1280) float32)`` poster embeddings (project ``ImageEncoder``, EfficientNet-Lite0) of the items
    with a ``{posters}/{item_id}.jpg``, cached by file SHA-256; undecodable files are skipped."""
    import hashlib

    from recsys_pipeline.content.image import ImageEncoder

    files = [(str(i), posters / f"{i}.jpg") for i in item_ids if (posters / f"{i}.jpg").is_file()]
    keys = [hashlib.sha256(p.read_bytes()).hexdigest() for _, p in files]

    def encode(todo):
        import torch

        torch.set_num_threads(1)
        encoder = ImageEncoder(cache_dir=CACHE_DIR / "image_models", batch_size=32)
        t0 = time.perf_counter()
        out = encoder.encode_files([files[i][1] for i in todo])
        print(f"[image] encoded {len(out.positions)} posters in {time.perf_counter() - t0:.1f}s", flush=True)
        return [todo[j] for j in out.positions], out.vectors

    cached = _cached_vectors("image_tf_efficientnet_lite0", keys, encode)
    ok = [j for j, k in enumerate(keys) if k in cached]
    vecs = np.stack([cached[keys[j]] for j in ok]) if ok else np.zeros((0, 1280), np.float32)
    return [files[j][0] for j in ok], vecs.astype(np.float32)


def build_content(catalog: pd.DataFrame, text: np.ndarray, image: tuple[list[str], np.ndarray] | None = None):
    """``ItemFeatures`` (text modality, optionally an ``image`` modality, genres, year) for the catalog rows."""
    ids = catalog["item_id"].tolist()
    modalities = {"text": (ids, text)}
    if image is not None:
        modalities["image"] = image
    return ItemFeatures.from_parts(
        ids,
        modalities,
        genres=catalog["genres"].map(lambda g: "|".join(g)).tolist(),
        year=catalog["year"].fillna(0).astype(np.int64).to_numpy(),
    )


# ---------------------------------------------------------------------- peers
@dataclass
class Data:
    """Everything a model factory needs: the train frame and the catalog's content (row order = catalog)."""

    train: pd.DataFrame
    content: ItemFeatures
    seed: int
    item_index: dict[str, int] = field(init=False)
    user_ids: list[str] = field(init=False)
    user_index: dict[str, int] = field(init=False)
    user_items: sp.csr_matrix = field(init=False)

    def __post_init__(self) -> None:
        self.item_index = self.content.index
        self.user_ids = sorted(self.train["user_id"].astype(str).unique())
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        t = self.train.drop_duplicates(["user_id", "item_id"])
        r = t["user_id"].astype(str).map(self.user_index).to_numpy()
        c = t["item_id"].astype(str).map(self.item_index).to_numpy()
        self.user_items = sp.csr_matrix(
            (np.ones(len(r), np.float32), (r, c)), shape=(len(self.user_ids), len(self.content))
        )


class FittedScorer(Recommender):
    """A peer fitted by its own library: ``Recommender`` for ranking (catalog and seen items from ``data``)."""

    def __init__(self, data: Data):
        self.data = data
        self._remember(data.content.item_ids, data.train)

    def fit(self, interactions, features=None):
        raise NotImplementedError("built from an already fitted model (fit_als, fit_cornac, ContentKNN, ...)")


class FactorScorer(FittedScorer):
    """``score = U[user] @ V[item].T (+ item_bias)``; unknown users score 0 for every item."""

    def __init__(self, data: Data, user_factors: np.ndarray, item_factors: np.ndarray, item_bias=None):
        super().__init__(data)
        self.U, self.V = np.asarray(user_factors, np.float32), np.asarray(item_factors, np.float32)
        self.b = None if item_bias is None else np.asarray(item_bias, np.float32)

    def score(self, user_ids, item_ids) -> np.ndarray:
        u = np.array([self.data.user_index.get(str(x), -1) for x in user_ids])
        i = self.data.content.rows([str(x) for x in item_ids])
        out = np.zeros((len(u), len(i)), np.float32)
        known = u >= 0
        out[known] = self.U[u[known]] @ self.V[i].T
        if self.b is not None:
            out += self.b[i]
        return out


def fit_als(data: Data, factors=64, regularization=0.05, alpha=1.0, iterations=15):
    from implicit.cpu.als import AlternatingLeastSquares

    m = AlternatingLeastSquares(
        factors=factors,
        regularization=regularization,
        alpha=alpha,
        iterations=iterations,
        random_state=data.seed,
        num_threads=1,
    )
    m.fit(data.user_items, show_progress=False)
    return FactorScorer(data, m.user_factors, m.item_factors)


def fit_bpr(data: Data, factors=64, learning_rate=0.01, regularization=0.01, iterations=100):
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    m = BayesianPersonalizedRanking(
        factors=factors,
        learning_rate=learning_rate,
        regularization=regularization,
        iterations=iterations,
        random_state=data.seed,
        num_threads=1,
    )
    m.fit(data.user_items, show_progress=False)
    # implicit's BPR appends an item-bias column to item_factors and a matching constant 1 to user_factors
    return FactorScorer(data, m.user_factors, m.item_factors)


class CornacScorer(FittedScorer):
    """A fitted cornac 3.x model behind the ``Recommender`` contract.

    Our ids map to cornac's through the train ``Dataset``'s ``uid_map`` / ``iid_map``. A known user's scores come
    from the model's ``score(user_idx)`` over every item it knows; an item cornac never saw (no train interaction)
    scores below every known item (it has no trained factor), and an unknown user scores 0 everywhere.
    ``item_scores(user_rows) -> (n, n_known_items)`` replaces the per-user loop where the model allows a matrix.
    """

    def __init__(self, data: Data, model, train_set, item_scores: Callable | None = None):
        super().__init__(data)
        self.model, self.train_set = model, train_set
        self.uid = train_set.uid_map
        self.iid = train_set.iid_map
        # catalog row -> cornac item index (-1: cold for cornac)
        self.col = np.full(len(data.content), -1, np.int64)
        for item, j in self.iid.items():
            self.col[data.item_index[item]] = j
        self._item_scores = item_scores or (lambda rows: np.stack([model.score(int(r)) for r in rows]))

    def score(self, user_ids, item_ids) -> np.ndarray:
        u = np.array([self.uid.get(str(x), -1) for x in user_ids], dtype=np.int64)
        cols = self.col[self.data.content.rows([str(x) for x in item_ids])]
        out = np.zeros((len(u), len(cols)), np.float32)
        known = np.flatnonzero(u >= 0)
        if len(known):
            s = np.asarray(self._item_scores(u[known]), dtype=np.float32).reshape(len(known), -1)
            floor = float(np.min(s)) - 1.0 if s.size else -1.0
            block = np.full((len(known), len(cols)), floor, np.float32)
            ok = cols >= 0
            block[:, ok] = s[:, cols[ok]]
            out[known] = block
        return out


def _cornac_train_set(data: Data):
    from cornac.data import Dataset

    t = data.train.drop_duplicates(["user_id", "item_id"])
    triples = list(zip(t["user_id"].astype(str), t["item_id"].astype(str), np.ones(len(t))))
    return Dataset.from_uir(triples, seed=data.seed)


def _torch_one_thread() -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)


def fit_cornac_bpr(data: Data, k=10, learning_rate=0.001, lambda_reg=0.01, max_iter=100):
    from cornac.models import BPR

    ts = _cornac_train_set(data)
    m = BPR(k=k, max_iter=max_iter, learning_rate=learning_rate, lambda_reg=lambda_reg, seed=data.seed, num_threads=1)
    m.fit(ts)
    return CornacScorer(data, m, ts, lambda rows: m.u_factors[rows] @ m.i_factors.T + m.i_biases)


def fit_ease(data: Data, lamb=500.0):
    from cornac.models import EASE

    ts = _cornac_train_set(data)
    m = EASE(lamb=lamb, posB=True, verbose=False, seed=data.seed)
    m.fit(ts)
    return CornacScorer(data, m, ts, lambda rows: np.asarray(m.U[rows] @ m.B))


class ItemKNN(FittedScorer):
    """Item-based k-NN for top-N on implicit data (Deshpande & Karypis 2004): cosine similarity of the items' binary
    user vectors, ``sim = co-occurrence / (|i| |j| + shrink)``, each item keeping its ``k`` nearest, raised to
    ``amplify``; ``score(u, i) = sum over the user's train items j of sim(i, j)``; unknown users score 0.

    Not cornac's ``ItemKNN``: measured on this data, its similarity is computed over co-rated users only, so on
    all-ones implicit ratings every pair that shares a user has similarity 1.0 (whatever ``k`` or weighting), and
    its ``score`` is rating prediction (a similarity-weighted *average* of the user's ratings, 1.0 for every item
    with a rated neighbour): Recall@20 0.004 on user_last_fraction (200 users) against 0.116 for ALS.
    """

    def __init__(self, data: Data, k: int = 20, shrink: float = 0.0, amplify: float = 1.0):
        super().__init__(data)
        x = data.user_items.T.tocsr().astype(np.float32)  # items x users, binary
        norms = np.sqrt(np.asarray(x.sum(axis=1)).ravel())
        co = (x @ x.T).tocsr()
        co.setdiag(0.0)
        co.eliminate_zeros()
        rows = np.repeat(np.arange(co.shape[0]), np.diff(co.indptr))
        co.data = co.data / (norms[rows] * norms[co.indices] + shrink)
        keep = np.zeros(co.nnz, bool)
        for i in range(co.shape[0]):  # each item's k nearest neighbours
            lo, hi = co.indptr[i], co.indptr[i + 1]
            if hi - lo <= k:
                keep[lo:hi] = True
            else:
                keep[lo + np.argpartition(-co.data[lo:hi], k - 1)[:k]] = True
        co.data = np.where(keep, co.data**amplify, 0.0).astype(np.float32)
        co.eliminate_zeros()
        self.sim_t = co.T.tocsr()  # column i: the neighbours of item i
        self.rated = data.user_items

    def score(self, user_ids, item_ids) -> np.ndarray:
        u = np.array([self.data.user_index.get(str(x), -1) for x in user_ids])
        i = self.data.content.rows([str(x) for x in item_ids])
        out = np.zeros((len(u), len(i)), np.float32)
        known = u >= 0
        out[known] = (self.rated[u[known]] @ self.sim_t[:, i]).toarray()
        return out


def fit_bivae(data: Data, k=10, encoder_width=20, n_epochs=100, learning_rate=0.001, batch_size=100):
    from cornac.models import BiVAECF

    _torch_one_thread()
    ts = _cornac_train_set(data)
    m = BiVAECF(
        k=k,
        encoder_structure=[encoder_width],
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=data.seed,
        use_gpu=False,
        verbose=False,
    )
    m.fit(ts)
    return CornacScorer(data, m, ts)


class VBPRScorer(CornacScorer):
    """cornac VBPR with every catalog item's visual vector: a known item scores ``beta_i + gamma_u.gamma_i +
    theta_u.(E f_i) + beta'.f_i``; an item without interactions keeps the visual part only (``gamma_i = beta_i = 0``:
    VBPR's own cold-start ranking), so VBPR ranks cold items."""

    def __init__(self, data: Data, model, train_set, features: np.ndarray):
        super().__init__(data, model, train_set)
        theta_item = features @ model.emb_matrix  # (n_catalog, k2)
        self.visual_bias = (features @ model.beta_prime).ravel()
        self.gamma_item = np.zeros((len(features), model.gamma_item.shape[1]), np.float32)
        self.beta_item = np.zeros(len(features), np.float32)
        warm = self.col >= 0
        self.gamma_item[warm] = model.gamma_item[self.col[warm]]
        self.beta_item[warm] = model.beta_item[self.col[warm]]
        self.theta_item = theta_item

    def score(self, user_ids, item_ids) -> np.ndarray:
        u = np.array([self.uid.get(str(x), -1) for x in user_ids], dtype=np.int64)
        i = self.data.content.rows([str(x) for x in item_ids])
        out = np.zeros((len(u), len(i)), np.float32)
        known = u >= 0
        m = self.model
        out[known] = (
            m.gamma_user[u[known]] @ self.gamma_item[i].T
            + m.theta_user[u[known]] @ self.theta_item[i].T
            + (self.beta_item[i] + self.visual_bias[i])
        )
        return out


def vbpr_features(data: Data) -> np.ndarray | None:
    """Catalog-row visual features for VBPR: the ``image`` modality (zero rows where an item has no poster)."""
    if "image" not in data.content.modalities:
        return None
    return np.asarray(data.content.modalities["image"], np.float32)


def fit_vbpr(data: Data, k=10, k2=10, n_epochs=50, learning_rate=0.005, lambda_w=0.01, batch_size=100):
    from cornac.data import ImageModality
    from cornac.models import VBPR

    features = vbpr_features(data)
    if features is None:
        raise ValueError("VBPR needs the image modality (--posters DIR)")
    _torch_one_thread()
    ts = _cornac_train_set(data)
    image = ImageModality(features=features, ids=data.content.item_ids, normalized=True)
    image.build(id_map=ts.iid_map)
    ts.add_modalities(item_image=image)
    m = VBPR(
        k=k,
        k2=k2,
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        lambda_w=lambda_w,
        lambda_b=0.01,
        use_gpu=False,
        verbose=False,
        seed=data.seed,
    )
    with contextlib.redirect_stdout(sys.stderr):  # cornac's VBPR prints "Optimization finished!" unconditionally
        m.fit(ts)
    return VBPRScorer(data, m, ts, features)


def _lightfm_item_features(data: Data, features: str, text_dim: int) -> sp.csr_matrix | None:
    """Rows = catalog items. ``ids``: none (LightFM's identity); ``genres``: [identity (train items only: cold items
    have no trained id), genres]; ``genres+text``: also the text PCA-``text_dim``; ``content``: genres + the full
    text vectors and NO identity block (item features only: a cold-start peer)."""
    if features == "ids":
        return None
    n = len(data.content)
    blocks = [sp.csr_matrix(data.content.genres)]
    if features != "content":
        warm = np.zeros(n, bool)
        warm[np.unique(data.user_items.indices)] = True
        blocks.insert(0, sp.diags(warm.astype(np.float32), format="csr"))
    if features == "genres+text":
        x = data.content.modalities["text"]
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        z = x @ vt[:text_dim].T
        blocks.append(sp.csr_matrix((z / np.abs(z).max()).astype(np.float32)))
    elif features == "content":
        blocks.append(sp.csr_matrix(np.asarray(data.content.modalities["text"], np.float32)))
    f = sp.hstack(blocks, format="csr").astype(np.float32)
    norms = np.asarray(abs(f).sum(axis=1)).ravel()  # LightFM Dataset convention: each row sums to 1
    return (sp.diags(1.0 / np.maximum(norms, 1e-9)) @ f).tocsr()


def fit_lightfm(
    data: Data, features="ids", no_components=64, learning_rate=0.05, epochs=30, item_alpha=0.0, text_dim=32
):
    from lightfm import LightFM

    item_features = _lightfm_item_features(data, features, text_dim)
    m = LightFM(
        no_components=no_components,
        loss="warp",
        learning_rate=learning_rate,
        item_alpha=item_alpha,
        random_state=data.seed,
    )
    m.fit(data.user_items.tocoo(), item_features=item_features, epochs=epochs, num_threads=1)
    ib, iv = m.get_item_representations(item_features)
    _, uv = m.get_user_representations()
    return FactorScorer(data, uv, iv, ib)


class ContentKNN(FittedScorer):
    """User profile = mean of the user's train items' text vectors; score = cosine(profile, item text)."""

    def __init__(self, data: Data):
        super().__init__(data)
        x = data.content.modalities["text"]
        self.x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
        prof = data.user_items @ self.x
        self.prof = prof / np.maximum(np.linalg.norm(prof, axis=1, keepdims=True), 1e-9)

    def score(self, user_ids, item_ids) -> np.ndarray:
        u = np.array([self.data.user_index.get(str(x), -1) for x in user_ids])
        i = self.data.content.rows([str(x) for x in item_ids])
        out = np.zeros((len(u), len(i)), np.float32)
        known = u >= 0
        out[known] = self.prof[u[known]] @ self.x[i].T
        return out


def fit_ours(data: Data, val_split: str = "last", **overrides):
    cfg = ModelConfig(**{**overrides, "seed": data.seed, "val_split": val_split})
    return TwoTowerRecommender(cfg, TrainerConfig(num_threads=1)).fit(data.train, data.content)


# ---------------------------------------------------------------------- families and their search spaces
@dataclass
class Family:
    """A model family: ``fit(data, **params)``, its Optuna search space (``space(trial) -> params``; ``None`` = no
    hyperparameters, 1 trial), ``default`` (enqueued as trial 0), ``fixed`` (always passed; e.g. iterations),
    ``quick`` (``--quick`` overrides, applied last), and why it cannot run the cold protocols (``cold_na``)."""

    name: str
    fit: Callable
    space: Callable | None = None
    default: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)
    quick: dict = field(default_factory=dict)
    cold_na: str = ""  # non-empty: N/A on item_cold_start / item_cold_mixed, with this reason
    note: str = ""
    needs: Callable[[ItemFeatures], str] | None = None  # content -> reason it cannot run ("" = it can)
    # (params, fitted, fixed=...) -> [(params, model)]: settings scored on one fit (tuning.tune's ``variants``)
    variants: Callable | None = None


def _space_als(t):
    return dict(
        factors=t.suggest_categorical("factors", [32, 64, 128]),
        regularization=t.suggest_float("regularization", 1e-3, 1.0, log=True),
        alpha=t.suggest_float("alpha", 0.5, 50.0, log=True),
    )


def _space_bpr(t):
    return dict(
        factors=t.suggest_categorical("factors", [32, 64, 128]),
        learning_rate=t.suggest_float("learning_rate", 1e-3, 0.1, log=True),
        regularization=t.suggest_float("regularization", 1e-4, 0.1, log=True),
    )


def _space_cornac_bpr(t):
    return dict(
        k=t.suggest_categorical("k", [10, 32, 64, 128]),
        learning_rate=t.suggest_float("learning_rate", 1e-3, 0.1, log=True),
        lambda_reg=t.suggest_float("lambda_reg", 1e-4, 0.1, log=True),
    )


def _space_ease(t):
    return dict(lamb=t.suggest_float("lamb", 10.0, 5000.0, log=True))


def _space_itemknn(t):
    return dict(
        k=t.suggest_int("k", 10, 500, log=True),
        shrink=t.suggest_float("shrink", 0.0, 100.0),
        amplify=t.suggest_float("amplify", 1.0, 3.0),
    )


def _space_bivae(t):
    return dict(
        k=t.suggest_categorical("k", [10, 20, 50]),
        encoder_width=t.suggest_categorical("encoder_width", [20, 40, 100]),
        n_epochs=t.suggest_int("n_epochs", 20, 100),
        learning_rate=t.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
    )


def _space_vbpr(t):
    return dict(
        k=t.suggest_categorical("k", [10, 20, 50]),
        k2=t.suggest_categorical("k2", [10, 20, 50]),
        n_epochs=t.suggest_int("n_epochs", 10, 50),
        learning_rate=t.suggest_float("learning_rate", 1e-3, 0.05, log=True),
        lambda_w=t.suggest_float("lambda_w", 1e-4, 0.1, log=True),
    )


def _space_lightfm(t):
    return dict(
        no_components=t.suggest_categorical("no_components", [32, 64, 128]),
        learning_rate=t.suggest_float("learning_rate", 0.01, 0.1, log=True),
        epochs=t.suggest_int("epochs", 10, 60),
        item_alpha=t.suggest_categorical("item_alpha", [0.0, 1e-6, 1e-5]),
    )


def _vbpr_needs(content: ItemFeatures) -> str:
    return "" if "image" in content.modalities else "no image modality: run with --posters DIR"


def families() -> list[Family]:
    lfm = dict(no_components=64, learning_rate=0.05, epochs=30, item_alpha=0.0)
    lfm_quick = dict(epochs=3)
    return [
        Family(
            "ours",
            fit_ours,
            two_tower_space,
            default={f: getattr(ModelConfig(), f) for f in TUNED_FIELDS},
            quick=dict(max_epochs=2),
            variants=two_tower_variants,
            note="two-tower + text (+ history head, + EASE item-item head where tuned); trial 0 = ModelConfig defaults",
        ),
        Family(
            "popularity",
            lambda d: PopularityRecommender().fit(d.train, d.content),
            cold_na="no interactions = no popularity",
            note="distinct train users per item",
        ),
        Family("random", lambda d: RandomRecommender(d.seed).fit(d.train, d.content), note="floor"),
        Family("content_knn", lambda d: ContentKNN(d), note="mean text vector of the user's items, cosine"),
        Family(
            "als",
            fit_als,
            _space_als,
            default=dict(factors=64, regularization=0.05, alpha=1.0),
            fixed=dict(iterations=15),
            quick=dict(iterations=3),
            cold_na=NO_FACTOR,
            note="implicit ALS, 15 iterations",
        ),
        Family(
            "bpr",
            fit_bpr,
            _space_bpr,
            default=dict(factors=64, learning_rate=0.01, regularization=0.01),
            fixed=dict(iterations=100),
            quick=dict(iterations=10),
            cold_na=NO_FACTOR,
            note="implicit BPR, 100 iterations",
        ),
        Family(
            "cornac_bpr",
            fit_cornac_bpr,
            _space_cornac_bpr,
            default=dict(k=10, learning_rate=0.001, lambda_reg=0.01),
            fixed=dict(max_iter=100),
            quick=dict(max_iter=20),
            cold_na=NO_FACTOR,
            note="cornac BPR, 100 iterations",
        ),
        Family(
            "bivae",
            fit_bivae,
            _space_bivae,
            default=dict(k=10, encoder_width=20, n_epochs=100, learning_rate=0.001),
            quick=dict(n_epochs=3),
            cold_na=NO_FACTOR,
            note="cornac BiVAECF, Poisson likelihood",
        ),
        Family(
            "ease",
            fit_ease,
            _space_ease,
            default=dict(lamb=500.0),
            cold_na=NO_FACTOR,
            note="cornac EASE^R, B >= 0",
        ),
        Family(
            "itemknn",
            ItemKNN,
            _space_itemknn,
            default=dict(k=20, shrink=0.0, amplify=1.0),
            cold_na="no interactions = no item-item similarity",
            note="item-based k-NN, cosine, score = sum of similarities to the user's items (not cornac's ItemKNN: "
            "rating prediction, all-ones similarities on implicit data; see ItemKNN)",
        ),
        Family(
            "vbpr",
            fit_vbpr,
            _space_vbpr,
            default=dict(k=10, k2=10, n_epochs=50, learning_rate=0.005, lambda_w=0.01),
            quick=dict(n_epochs=2),
            note="cornac VBPR on the poster embeddings (EfficientNet-Lite0, zero for items without a poster); "
            "cold items ranked by the visual part alone",
            needs=_vbpr_needs,
        ),
        Family(
            "lightfm_ids",
            lambda d, **kw: fit_lightfm(d, "ids", **kw),
            _space_lightfm,
            default=lfm,
            quick=lfm_quick,
            cold_na=NO_FACTOR,
            note="WARP, ids only",
        ),
        Family(
            "lightfm_genres",
            lambda d, **kw: fit_lightfm(d, "genres", **kw),
            _space_lightfm,
            default=lfm,
            quick=lfm_quick,
            note="WARP, ids + genres",
        ),
        Family(
            "lightfm_genres_text",
            lambda d, **kw: fit_lightfm(d, "genres+text", **kw),
            _space_lightfm,
            default=lfm,
            quick=lfm_quick,
            note="WARP, ids + genres + text (PCA-32)",
        ),
        Family(
            "lightfm_content",
            lambda d, **kw: fit_lightfm(d, "content", **kw),
            _space_lightfm,
            default=lfm,
            quick=lfm_quick,
            note="WARP, item features only (genres + full text vectors, no id features)",
        ),
    ]


# ---------------------------------------------------------------------- evaluation and tuning
def restrict_users(split: Split, max_users: int | None) -> Split:
    """``split`` with the test part of its first ``max_users`` test users (sorted ids) only."""
    if max_users is None:
        return split
    keep = set(sorted(split.test["user_id"].astype(str).unique())[:max_users])
    return Split(split.train, split.test[split.test["user_id"].astype(str).isin(keep)], split.cold_items)


def figures(model: Recommender, split: Split, protocols: Sequence[str]) -> dict[str, dict[str, float]]:
    """``protocol -> {evaluate() key: value}`` (:data:`METRICS`) of ``model`` on ``split`` (one ``evaluate``)."""
    m = evaluate_split(model, split, 20).metrics
    return {p: {key: float(m[key]) for _, key in METRICS[p]} for p in protocols}


def effective_params(fam: Family, params: dict, quick: bool) -> dict:
    """What ``fam.fit`` receives: its fixed budget, then the tuned ``params``, then the ``--quick`` overrides."""
    return {**fam.fixed, **params, **(fam.quick if quick else {})}


def fit_family(fam: Family, data: Data, params: dict, protocol: str, quick: bool) -> Recommender:
    kw = effective_params(fam, params, quick)
    if fam.name == "ours":
        kw["val_split"] = validation_split(protocol)
    return fam.fit(data, **kw)


@dataclass
class Tuner:
    """Optuna tuning with an equal budget per family; each trial is a child MLflow run when ``mlflow_on``."""

    trials: int
    quick: bool = False
    max_users: int | None = None
    mlflow_on: bool = False
    log: Callable[[str], None] = print
    overrides: dict = field(default_factory=dict)  # family name -> fixed params (``--ours``)
    # the content a split's models read (``--cold-without-tags``: its held-out items without user tags)
    content_for: Callable[[Split, ItemFeatures], ItemFeatures] = lambda split, content: content  # noqa: E731
    given: dict = field(default_factory=dict)  # family name -> {split family: params} (``--params-from``)

    def tune(self, fam: Family, protocols: Sequence[str], train: pd.DataFrame, content, seed: int) -> dict:
        """The params of ``fam`` with the best validation figure of ``protocols[0]`` (``validation_value``) on a split
        carved from ``train`` as that protocol carves its test part (split seed ``1000 + seed``;
        ``evaluation.tuning.tune``, the loop ``model_tuning`` uses); ``{}`` without a space."""
        fixed = self.overrides.get(fam.name, {})
        if fam.space is None:
            return dict(fixed)
        protocol = protocols[0]
        if fam.name in self.given:  # chosen by an earlier run on the same splits: no search here
            return {**self.given[fam.name][split_family(protocol)], **fixed}
        inner = restrict_users(make_split(train, protocol, EvaluationSettings(seed=1000 + seed)), self.max_users)
        content = self.content_for(inner, content)

        def fit(params: dict, part: pd.DataFrame) -> Recommender:
            return fit_family(fam, Data(part, content, seed), {**params, **fixed}, protocol, self.quick)

        def report(trial: Trial) -> None:
            shown = effective_params(fam, {**trial.params, **fixed}, self.quick)
            self.log(
                f"  trial {trial.number} {fam.name}/{protocol} {shown}: val {validation_metric(protocol)} "
                f"{trial.value:.4f} ({trial.seconds:.1f}s)"
            )
            if self.mlflow_on:
                import mlflow

                with mlflow.start_run(run_name=f"{fam.name}/{protocol}/trial{trial.number}", nested=True):
                    mlflow.log_params({"family": fam.name, "protocol": protocol, **shown})
                    mlflow.log_metrics({"val_ndcg_at_10": trial.value, "fit_seconds": trial.seconds})

        variants = partial(fam.variants, fixed=fixed) if fam.variants is not None else None
        result = tune(
            fit, fam.space, inner, protocol, self.trials, fam.default, seed=0, on_trial=report, variants=variants
        )
        return {**result.best_params, **fixed}


def run(
    interactions: pd.DataFrame,
    content: ItemFeatures,
    fams: Sequence[Family],
    protocols: Sequence[str],
    seeds: Sequence[int],
    tuner: Tuner,
    k_core: int = 0,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Tune and evaluate every family on every protocol; one row per family (see :func:`write_table`).

    Row: ``name, note, results {protocol: {key: [value per seed]}}, params {split family: params}, na {protocol:
    reason}, fit_s [seconds per fit]``.
    """
    content = view_catalog(content, interactions, k_core)  # a k-core view ranks its own items
    groups: dict[str, list[str]] = {}
    for p in protocols:
        groups.setdefault(split_family(p), []).append(p)
    splits: dict[tuple[str, int], Split] = {}

    def split_of(fam_split: str, seed: int) -> Split:
        if (fam_split, seed) not in splits:
            s = make_split(interactions, fam_split, EvaluationSettings(seed=seed, k_core=k_core))
            if s.train.empty or s.test.empty:
                raise ValueError(f"{fam_split} (seed {seed}, k_core {k_core}): empty train or test part")
            splits[fam_split, seed] = s
        return splits[fam_split, seed]

    rows = []
    for fam in fams:
        row: dict = {"name": fam.name, "note": fam.note, "results": {}, "params": {}, "na": {}, "fit_s": []}
        missing = fam.needs(content) if fam.needs else ""
        for fam_split, members in groups.items():
            if missing or (fam.cold_na and fam_split == "item_cold_start"):
                for p in members:
                    row["na"][p] = missing or fam.cold_na
                continue
            params = tuner.tune(fam, members, split_of(fam_split, seeds[0]).train, content, seeds[0])
            row["params"][fam_split] = effective_params(fam, params, tuner.quick)
            for seed in seeds:
                split = split_of(fam_split, seed)
                t0 = time.perf_counter()
                data = Data(split.train, tuner.content_for(split, content), seed)
                model = fit_family(fam, data, params, members[0], tuner.quick)
                fit_s = time.perf_counter() - t0
                row["fit_s"].append(round(fit_s, 2))
                res = figures(model, restrict_users(split, tuner.max_users), members)
                for p in members:
                    for key, v in res[p].items():
                        row["results"].setdefault(p, {}).setdefault(key, []).append(v)
                shown = " ".join(f"{p}: " + " ".join(f"{k} {v:.4f}" for k, v in res[p].items()) for p in members)
                log(f"{fam.name} seed {seed} fit {fit_s:.1f}s {shown}")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------- table
def fmt(vals: list[float]) -> str:
    a = np.asarray(vals, dtype=float)
    if len(a) == 1:
        return f"{a[0]:.4f}"
    return f"{a.mean():.4f} ± {a.std(ddof=1):.4f}"


def write_result(text: str, out: str | Path) -> None:
    """Print a benchmark's Markdown result and write it to ``out`` (folders created)."""
    print(text)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(f"wrote {out}", flush=True)


def _short(params: dict) -> str:
    """``{"lr": 0.0044248}`` -> ``lr=0.00442`` (4 significant digits), comma-separated."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "-"


def header_lines(meta: dict) -> list[str]:
    protocols = meta["protocols"]
    dep = [p for p in protocols if p in SEED_DEPENDENT]
    fixed = [p for p in protocols if p not in SEED_DEPENDENT]
    view = f"{meta['k_core']}-core" if meta.get("k_core") else "every interaction"
    lines = [
        "# Quality benchmark (ml-latest-small, implicit feedback)",
        "",
        f"- data view: {view}; test users per split: {meta.get('max_users') or 'all'}",
        f"- seeds: {list(meta['seeds'])} (mean ± sample std; a single value with 1 seed). Seed-dependent splits "
        f"(the seed also draws the split): {', '.join(dep) or 'none'}; the same split for every seed (model seed "
        f"only): {', '.join(fixed) or 'none'}",
        f"- tuning: Optuna TPESampler(seed=0), {meta['trials']} trials per family with hyperparameters (1 without), "
        "trial 0 = the documented default, objective = validation NDCG@10 on a split carved from the first seed's "
        "train part as the protocol carves test (item_cold_mixed shares item_cold_start's split, model and tuning; "
        "their objective is the mean of both protocols' NDCG@10); ours' item-item blend weight does not change "
        "training, so each trial's one fit is scored at every weight of `evaluation.tuning.ITEM_ITEM_WEIGHTS` "
        "(one fit per trial, as for every family)",
        "- metrics: user_*: whole-catalogue ranking; item_cold_start: the held-out items ranked among themselves "
        "(cold_candidates_*); item_cold_mixed: the held-out items in the whole-catalogue ranking (cold_*) and "
        "their share of the top-20 slots (cold_share_at_20)",
        f"- commit {meta.get('commit', '?')}, wall time {meta.get('wall_s', 0):.0f} s, "
        f"{meta.get('cores', os.cpu_count())} cores",
        f"- command: `{meta.get('command', '')}`",
    ]
    if meta.get("text"):
        lines.append(f"- item text: {meta['text']}")
    if meta.get("params_from"):
        lines.append(f"- params: {meta['params_from']}")
    if meta.get("cold_items"):
        lines.append(f"- item-cold protocols: {meta['cold_items']} (`--cold-without-tags`)")
    if meta.get("quick"):
        lines.append("- QUICK MODE: tiny budgets (smoke test), figures are not comparable to a full run")
    return lines


def compare_with_best(mine: Sequence[float], peers: Sequence[tuple[str, Sequence[float]]]) -> dict:
    """Ours' per-seed figures against the peer with the highest mean: the benchmark's reading rule.

    **first** when ours' mean exceeds the best peer's by more than the larger of the two seed spreads (sample std),
    **level** when the gap is within it, **behind** otherwise. When both have the same number (> 1) of seeds, seed
    ``i`` being the same split and seed for both, the per-seed difference is paired: its mean ± sample std and the
    number of seeds ours leads on.

    Args:
        mine: ours' value per seed.
        peers: ``(name, value per seed)``, at least one.

    Returns:
        ``ours (mean, std), peer_name, peer (mean, std), margin, spread, verdict, paired (mean, std) or None,
        ahead "k/n" or None``.
    """
    name, theirs = max(peers, key=lambda nv: float(np.mean(nv[1])))
    a, b = np.asarray(mine, dtype=float), np.asarray(theirs, dtype=float)
    sd_a = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    sd_b = float(b.std(ddof=1)) if len(b) > 1 else 0.0
    margin, spread = float(a.mean() - b.mean()), max(sd_a, sd_b)
    verdict = "first" if margin > spread else ("level" if abs(margin) <= spread else "behind")
    paired = ahead = None
    if len(a) == len(b) and len(a) > 1:
        d = a - b
        paired, ahead = (float(d.mean()), float(d.std(ddof=1))), f"{int((d > 0).sum())}/{len(d)}"
    return dict(
        ours=(float(a.mean()), sd_a),
        peer_name=name,
        peer=(float(b.mean()), sd_b),
        margin=margin,
        spread=spread,
        verdict=verdict,
        paired=paired,
        ahead=ahead,
    )


def against_best_peer(rows: list[dict], protocols: Sequence[str]) -> list[dict]:
    """Ours (the row named ``ours``) against the best peer per protocol x metric (Recall@20, NDCG@10), the
    criterion the benchmark is read by (:func:`compare_with_best`).

    The best peer is the peer row (not ``ours*``, not ``random``) with the highest mean. Every family runs the same
    split and seed for seed ``i`` (``run``), so the per-seed difference is paired (``None`` when the two have
    different seed counts, e.g. merged runs of different seeds).

    Returns:
        one dict per (protocol, metric) where ours and a peer both have figures: ``protocol, metric`` and the keys
        of :func:`compare_with_best`.
    """
    ours = next((r for r in rows if r["name"] == "ours"), None)
    if ours is None:
        return []
    out = []
    for p in protocols:
        for label, key in METRICS[p][:2]:
            mine = ours.get("results", {}).get(p, {}).get(key)
            peers = [
                (r["name"], r["results"][p][key])
                for r in rows
                if not r["name"].startswith("ours")
                and r["name"] != "random"
                and r.get("results", {}).get(p, {}).get(key)
            ]
            if not mine or not peers:
                continue
            out.append(dict(protocol=p, metric=label, **compare_with_best(mine, peers)))
    return out


def against_best_peer_lines(rows: list[dict], protocols: Sequence[str]) -> list[str]:
    """The Markdown section of :func:`against_best_peer` (empty without an ``ours`` row)."""
    found = against_best_peer(rows, protocols)
    if not found:
        return []
    lines = [
        "",
        "## Ours against the best peer",
        "",
        "Margin = ours' mean minus the best peer's (random excluded); verdict against the larger of the two seed "
        "spreads (first: margin > spread; level: |margin| <= spread; behind). Paired: the per-seed difference (the "
        "same split and seed for both), mean ± sample std, and on how many seeds ours is ahead.",
        "",
        "| protocol | metric | ours | best peer | margin | larger spread | verdict | paired difference "
        "| ours ahead on |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in found:
        paired = f"{v['paired'][0]:+.4f} ± {v['paired'][1]:.4f}" if v["paired"] else "-"
        lines.append(
            f"| {v['protocol']} | {v['metric']} | {v['ours'][0]:.4f} ± {v['ours'][1]:.4f} | {v['peer_name']} "
            f"{v['peer'][0]:.4f} ± {v['peer'][1]:.4f} | {v['margin']:+.4f} | {v['spread']:.4f} | {v['verdict']} | "
            f"{paired} | {v['ahead'] or '-'} |"
        )
    return lines


def write_table(rows: list[dict], meta: dict, path: Path | None = None, extra: str = "") -> str:
    """The Markdown table (see the module docstring), then ours against the best peer
    (:func:`against_best_peer_lines`); written to ``path`` when given."""
    protocols = meta["protocols"]
    cols = [(p, label, key) for p in protocols for label, key in METRICS[p]]
    head = [f"{p} {label}" for p, label, _ in cols]
    lines = header_lines(meta) + [
        "",
        "| model | " + " | ".join(head) + " | chosen params | fit s | notes |",
        "|" + "---|" * (len(head) + 4),
    ]
    for r in rows:
        cells = []
        for p, _, key in cols:
            v = r.get("results", {}).get(p, {}).get(key)
            cells.append(fmt(v) if v else "N/A")
        params = "; ".join(f"{p}: {_short(v)}" for p, v in r.get("params", {}).items()) or "-"
        notes = [r.get("note", "")]
        reasons: dict[str, list[str]] = {}
        for p, why in r.get("na", {}).items():
            reasons.setdefault(why, []).append(p)
        notes += [f"N/A on {', '.join(ps)}: {why}" for why, ps in reasons.items()]
        fit_s = f"{np.mean(r['fit_s']):.1f}" if r.get("fit_s") else "-"
        note = "; ".join(n for n in notes if n) or "-"
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {params} | {fit_s} | {note} |")
    lines += against_best_peer_lines(rows, protocols)
    text = "\n".join(lines) + "\n" + extra
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return text


def merge_runs(runs: Sequence[dict]) -> tuple[list[dict], dict]:
    """One table's rows and header facts from ``--rows-out`` files (``{"meta", "rows"}``) of runs on the same splits.

    A family's results are merged per protocol: a later run's figures (and its params for that split) replace an
    earlier run's for the protocols it ran, and keep the others' (e.g. ``ours`` re-run on the item-cold protocols
    only). A protocol a family has neither figures for nor an N/A reason for is N/A "not run". The header names
    each run's commit and the families (and protocols, where not all) whose figures in the table it gave, and sums
    the wall times.

    Raises:
        ValueError: the runs described held-out items differently (``--cold-without-tags`` in some only).
    """
    if len({saved["meta"].get("cold_items") for saved in runs}) > 1:
        raise ValueError("the runs describe held-out items differently (--cold-without-tags): not one table")
    texts = [saved["meta"].get("text", TAGGED_TEXT) for saved in runs]  # runs before the option: tags in the text
    by_name: dict[str, dict] = {}
    origin: dict[tuple[str, str], int] = {}  # (family, protocol) -> the run whose figures or N/A the table shows
    for n, saved in enumerate(runs):
        for r in saved["rows"]:
            old = by_name.setdefault(r["name"], {**r, "results": {}, "params": {}, "na": {}, "fit_s": []})
            old["results"].update(r["results"])
            old["params"].update(r["params"])
            old["na"] = {p: why for p, why in {**old["na"], **r["na"]}.items() if p not in old["results"]}
            old["fit_s"] = list(old["fit_s"]) + list(r.get("fit_s", []))
            origin.update({(r["name"], p): n for p in [*r["results"], *r["na"]]})
    protocols = [p for p in BENCH_PROTOCOLS if any(p in saved["meta"]["protocols"] for saved in runs)]
    for r in by_name.values():
        for p in protocols:
            if p not in r["results"] and p not in r["na"]:
                r["na"][p] = "not run"
    rows = order_rows(list(by_name.values()))
    meta = {**runs[0]["meta"], "protocols": protocols}
    if len(runs) > 1:
        gave = []
        for n, saved in enumerate(runs):
            names = []
            for r in rows:
                mine = [p for p in protocols if origin.get((r["name"], p)) == n]
                if mine:
                    names.append(r["name"] if len(mine) == len(protocols) else f"{r['name']} on {', '.join(mine)}")
            gave.append(f"{saved['meta'].get('commit')} ({', '.join(names) or 'nothing kept'})")
        given = [
            f"{saved['meta'].get('commit')}: {saved['meta']['params_from']}"
            for saved in runs
            if "params_from" in saved["meta"]
        ]
        if given:
            meta["params_from"] = "; ".join(given)
        if len(set(texts)) > 1:  # families that read no text (EASE, ALS, ...) are unaffected: the header says which
            meta["text"] = "; ".join(f"{saved['meta'].get('commit')}: {t}" for saved, t in zip(runs, texts))
        meta.update(
            commit="; ".join(gave),
            wall_s=sum(float(m["meta"].get("wall_s", 0)) for m in runs),
            command=" ; ".join(f"`{m['meta'].get('command', '')}`" for m in runs).strip("`"),
        )
    return rows, meta


def order_rows(rows: list[dict]) -> list[dict]:
    """Our rows (``ours*``) first, then the peers in family order."""
    order = [f.name for f in families()]
    return sorted(
        rows,
        key=lambda r: (not r["name"].startswith("ours"), order.index(r["name"]) if r["name"] in order else len(order)),
    )


# ---------------------------------------------------------------------- MLflow
def mlflow_parent(run_name: str):
    """A context manager: the benchmark's MLflow run (experiment ``quality_benchmark``)."""
    import mlflow

    from recsys_pipeline.registry.tracking import experiment_id
    from recsys_pipeline.settings import ensure_home, get_settings

    paths = ensure_home(get_settings().paths)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or paths.mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    # artifacts under the home, not ./mlruns of whatever folder the script runs from
    exp = experiment_id(uri, "quality_benchmark", str(paths.mlflow_artifacts))
    mlflow.set_experiment(experiment_id=exp)  # the trials' nested runs go to the same experiment
    print(f"[mlflow] logging to {uri} (experiment quality_benchmark)")
    return mlflow.start_run(experiment_id=exp, run_name=run_name)


def log_results(rows: list[dict], meta: dict, table_path: Path) -> None:
    import mlflow

    mlflow.log_params({k: str(meta[k])[:500] for k in ("seeds", "trials", "k_core", "protocols", "max_users")})
    for r in rows:
        for proto, by_key in r.get("results", {}).items():
            for key, vals in by_key.items():
                mlflow.log_metric(f"{r['name']}.{proto}.{key}.mean", float(np.mean(vals)))
                mlflow.log_metric(f"{r['name']}.{proto}.{key}.std", float(np.std(vals, ddof=1)) if len(vals) > 1 else 0)
    mlflow.log_artifact(str(table_path))


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ---------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--quick: 0)")
    p.add_argument("--models", nargs="+", default=[f.name for f in families()], choices=[f.name for f in families()])
    p.add_argument("--protocols", nargs="+", default=list(BENCH_PROTOCOLS), choices=BENCH_PROTOCOLS)
    p.add_argument("--k-core", type=int, default=0, help="data view: 0 = every interaction, N = the N-core")
    p.add_argument("--trials", type=int, default=None, help="Optuna trials per family (default 10; --quick: 2)")
    p.add_argument("--max-users", type=int, default=None, help="evaluate only the first N test users (smoke runs)")
    p.add_argument("--max-interactions", type=int, default=None, help="use only the N earliest ratings (smoke runs)")
    p.add_argument("--posters", default=None, help=f"poster folder ({{item_id}}.jpg) for VBPR, e.g. {DEFAULT_POSTERS}")
    p.add_argument("--quick", action="store_true", help="tiny budgets: 2 trials, 1 seed, few epochs, 100 users")
    p.add_argument("--ours", default="{}", help="JSON ModelConfig overrides for our model (fixed in every trial)")
    p.add_argument(
        "--user-tags-in-text",
        action="store_true",
        help="the item text carries the users' tags (the pipeline's RECSYS_USER_TAGS_IN_TEXT; default: not)",
    )
    p.add_argument(
        "--cold-without-tags",
        action="store_true",
        help="with --user-tags-in-text, item-cold protocols: the held-out items without their tags (as a new item)",
    )
    p.add_argument(
        "--params-from",
        nargs="+",
        default=None,
        help="--rows-out JSON files of earlier runs: each family found there uses the params chosen there (no search)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="the table's file (default: the committed result of the data view, benchmarks/results/quality.md or "
        "quality_<K>core.md; --quick: quality_quick.md in the temp folder, never over a committed result)",
    )
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--note", default="", help="Markdown appended under the table (e.g. what did not finish)")
    p.add_argument(
        "--note-file", default=None, help="a Markdown file appended under the table (after --note); the header names it"
    )
    p.add_argument("--rows-out", default=None, help="also write the rows and the header's facts as JSON here")
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        help="build the table from --rows-out JSON files of runs on the same splits (no training)",
    )
    args = p.parse_args(argv)
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1, 2]
    if args.trials is None:
        args.trials = 2 if args.quick else 10
    if args.quick and args.max_users is None:
        args.max_users = 100
    return args


def default_out(quick: bool, k_core: int, cold_without_tags: bool = False) -> Path:
    """Where a run's table goes without ``--out``: the committed result of its data view (``quality.md``, or
    ``quality_<k_core>core.md``; ``..._cold_without_tags.md`` for ``--cold-without-tags``); a ``--quick`` smoke run
    goes to the temp folder, never over a committed result."""
    if quick:
        return Path(tempfile.gettempdir()) / "quality_quick.md"
    name = f"quality_{k_core}core" if k_core else "quality"
    return RESULTS_DIR / (name + ("_cold_without_tags" if cold_without_tags else "") + ".md")


def read_rows_file(path: str | Path) -> dict:
    """One ``--rows-out`` file for ``--merge``: ``{"meta": {"protocols": [...], ...}, "rows": [{"name", "results",
    ...}, ...]}``.

    Raises:
        ValueError: the file is missing, unreadable, not JSON, or not of that shape (the message names the file).
    """
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable --rows-out JSON file ({exc})") from exc
    meta = saved.get("meta") if isinstance(saved, dict) else None
    rows = saved.get("rows") if isinstance(saved, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("protocols"), list) or not isinstance(rows, list):
        raise ValueError(
            f'{path}: not a --rows-out file (expected {{"meta": {{"protocols": [...], ...}}, "rows": [...]}})'
        )
    bad = [i for i, r in enumerate(rows) if not isinstance(r, dict) or "name" not in r or "results" not in r]
    if bad:
        raise ValueError(f"{path}: rows {bad[:5]} lack a name or results")
    return saved


def main(argv=None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["quality.py", *argv])
    try:
        note_text = Path(args.note_file).read_text().strip() if args.note_file else ""
        runs = [read_rows_file(f) for f in args.merge or []]
    except (OSError, ValueError) as exc:
        print(f"quality.py: error: {exc}", file=sys.stderr)
        return 2
    note = "\n\n".join(t for t in [args.note, note_text] if t)
    extra = "\n" + note + "\n" if note else ""
    if args.merge:
        try:
            rows, meta = merge_runs(runs)
        except ValueError as exc:
            print(f"quality.py: error: {exc}", file=sys.stderr)
            return 2
        view = bool(meta.get("quick")), int(meta.get("k_core") or 0), bool(meta.get("cold_items"))
        out = Path(args.out) if args.out else default_out(*view)
        meta = {**meta, "command": f"{meta.get('command', '')}  (merged: {command})"}
        print(write_table(rows, meta, out, extra))
        if not args.no_mlflow:
            with mlflow_parent(f"quality_merge_{time.strftime('%Y%m%d_%H%M%S')}"):
                log_results(rows, meta, out)
        return 0

    out = Path(args.out) if args.out else default_out(args.quick, args.k_core, args.cold_without_tags)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    interactions = load_interactions()
    if args.max_interactions:
        interactions = interactions.sort_values("timestamp", kind="stable").head(args.max_interactions)
    if args.cold_without_tags and not args.user_tags_in_text:
        print("quality.py: error: --cold-without-tags needs --user-tags-in-text (no tags in the text)", file=sys.stderr)
        return 2
    catalog = load_catalog(tags_in_text=args.user_tags_in_text)
    image = poster_vectors(catalog["item_id"].tolist(), Path(args.posters)) if args.posters else None
    content = build_content(catalog, text_vectors(catalog["text"].tolist()), image)
    fams = [f for f in families() if f.name in args.models]
    meta = dict(
        protocols=list(args.protocols),
        seeds=list(args.seeds),
        trials=args.trials,
        k_core=args.k_core,
        max_users=args.max_users,
        quick=args.quick,
        commit=git_commit(),
        command=command,
        cores=os.cpu_count(),
    )
    given: dict[str, dict] = {}
    try:
        for path in args.params_from or []:
            given |= {row["name"]: row["params"] for row in read_rows_file(path)["rows"] if row["params"]}
    except (OSError, ValueError, KeyError) as exc:
        print(f"quality.py: error: --params-from: {exc}", file=sys.stderr)
        return 2
    if given:
        meta["params_from"] = f"{', '.join(sorted(given))} from {' '.join(args.params_from)} (no search)"
    meta["text"] = TAGGED_TEXT if args.user_tags_in_text else "title and genres (no user tags)"
    if args.cold_without_tags:
        meta["cold_items"] = "held-out items described without their user tags"
    ctx = contextlib.nullcontext() if args.no_mlflow else mlflow_parent(f"quality_{time.strftime('%Y%m%d_%H%M%S')}")
    with ctx:
        tuner = Tuner(args.trials, args.quick, args.max_users, not args.no_mlflow, log, {"ours": json.loads(args.ours)})
        tuner.given = given
        if args.cold_without_tags:
            tuner.content_for = UntaggedColdItems(image)
        rows = run(interactions, content, fams, args.protocols, args.seeds, tuner, args.k_core, log)
        rows = order_rows(rows)
        meta["wall_s"] = time.perf_counter() - started
        if args.rows_out:
            Path(args.rows_out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        print(write_table(rows, meta, out, extra))
        if not args.no_mlflow:
            log_results(rows, meta, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
