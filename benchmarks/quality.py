"""Quality benchmark: our two-tower model vs popularity, ``implicit`` ALS/BPR, LightFM WARP and a content k-NN.

Data: the bundled ml-latest-small, every rating an implicit positive. Two protocols (``recsys_pipeline.evaluation``):

* warm: per-user temporal holdout (last 20% of each user with >= 5 interactions); candidates = every catalog item
  the user has not interacted with in train.
* cold: a seeded random 20% of items held out with all their interactions (``split_item_cold_start``, seed = run
  seed); each test user ranks only those items.

Metrics (Recall@20, NDCG@10) come from ``recsys_pipeline.evaluation.evaluate`` (what ``model_evaluation`` uses): every
model ranks through ``Recommender.recommend``.
Hyperparameters: each model family gets the same small grid budget, tuned once (seed 0) on a validation split
carved from the train split (warm: the last 20% per user of train; cold: 20% of the train items held out), never
on test; the chosen setting is then trained on the full train split for every seed. The table (mean ± std over
seeds) goes to ``benchmarks/results/quality.md`` and to MLflow (experiment ``quality_benchmark``; tracking URI from
``$MLFLOW_TRACKING_URI``, else the SQLite store under ``$RECSYS_HOME``).

Text vectors of the 9,742 catalog texts are computed once with the project's ``TextEncoder`` and cached in
``benchmarks/.cache/`` keyed by model id and per-item SHA-256 of the text.

Usage::

    nice -n 10 .venv/bin/python benchmarks/quality.py [--seeds 0 1 2] [--models ours als ...] [--max-users N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit's advice: its own threads, not BLAS threads
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_pipeline.content.features import ItemFeatures  # noqa: E402
from recsys_pipeline.data.catalog import build_item_catalog  # noqa: E402
from recsys_pipeline.data.sources import MovieLensSource  # noqa: E402
from recsys_pipeline.evaluation.evaluate import evaluate as evaluate_split  # noqa: E402
from recsys_pipeline.evaluation.protocols import Split, split_item_cold_start, split_user_last_fraction  # noqa: E402
from recsys_pipeline.models.base import Recommender  # noqa: E402
from recsys_pipeline.models.popularity import PopularityRecommender  # noqa: E402
from recsys_pipeline.models.random import RandomRecommender  # noqa: E402
from recsys_pipeline.models.two_tower.config import ModelConfig, TrainerConfig  # noqa: E402
from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender  # noqa: E402

CACHE_DIR = ROOT / "benchmarks" / ".cache"
RESULTS_DIR = ROOT / "benchmarks" / "results"


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


def load_catalog() -> pd.DataFrame:
    """The pipeline's ``item_catalog`` rows (``item_id, title, genres, year, text, ...``) for ml-latest-small."""
    items, tags = MovieLensSource().read_catalog()
    return build_item_catalog(items, tags).sort_values("item_id", kind="stable").reset_index(drop=True)


def text_vectors(texts: Sequence[str], encoder_factory: Callable | None = None) -> np.ndarray:
    """``(len(texts), 384) float32`` unit-norm text vectors, cached by model id + SHA-256 of each text.

    Only texts missing from the cache are encoded (project ``TextEncoder``, one thread).
    """
    from recsys_pipeline.content.text import TextEncoder, content_hash, default_text_model_path

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    model_dir = default_text_model_path()
    path = CACHE_DIR / f"text_{Path(model_dir).name}.npz"
    hashes = [content_hash(t) for t in texts]
    cached: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            cached = dict(zip(z["hashes"].tolist(), z["vectors"]))
    todo = [i for i, h in enumerate(hashes) if h not in cached]
    if todo:
        encoder = (encoder_factory or (lambda: TextEncoder(num_threads=1)))()
        t0 = time.perf_counter()
        vecs = encoder.encode([texts[i] for i in todo])
        print(f"[text] encoded {len(todo)} texts in {time.perf_counter() - t0:.1f}s", flush=True)
        for i, v in zip(todo, vecs):
            cached[hashes[i]] = v
        keys = sorted(cached)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, hashes=np.asarray(keys), vectors=np.stack([cached[k] for k in keys]).astype(np.float32))
        os.replace(tmp, path)
    return np.stack([cached[h] for h in hashes]).astype(np.float32)


def build_content(catalog: pd.DataFrame, text: np.ndarray) -> ItemFeatures:
    """``ItemFeatures`` (text modality, genres, year) for the catalog rows."""
    return ItemFeatures.from_parts(
        catalog["item_id"].tolist(),
        {"text": (catalog["item_id"].tolist(), text)},
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
        raise NotImplementedError("built from an already fitted model (fit_als, fit_bpr, fit_lightfm, ContentKNN)")


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


def _lightfm_item_features(data: Data, features: str, text_dim: int) -> sp.csr_matrix | None:
    """Rows = catalog items: [identity (train items only: cold items have no trained id), genres, text PCA]."""
    if features == "ids":
        return None
    n = len(data.content)
    warm = np.zeros(n, bool)
    warm[np.unique(data.user_items.indices)] = True
    blocks = [sp.diags(warm.astype(np.float32), format="csr"), sp.csr_matrix(data.content.genres)]
    if features == "genres+text":
        x = data.content.modalities["text"]
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        z = x @ vt[:text_dim].T
        blocks.append(sp.csr_matrix((z / np.abs(z).max()).astype(np.float32)))
    f = sp.hstack(blocks, format="csr").astype(np.float32)
    norms = np.asarray(abs(f).sum(axis=1)).ravel()  # LightFM Dataset convention: each row sums to 1
    return sp.diags(1.0 / np.maximum(norms, 1e-9)) @ f


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


def fit_ours(data: Data, **overrides):
    cfg = ModelConfig(**{**overrides, "seed": data.seed})
    return TwoTowerRecommender(cfg, TrainerConfig(num_threads=1)).fit(data.train, data.content)


@dataclass
class Family:
    """A model family: a fit function, its grid (first entry = documented default) and where it applies."""

    name: str
    fit: Callable
    grid: list[dict]
    cold: bool = True  # can it score items with no training interactions?
    note: str = ""


def families() -> list[Family]:
    lfm = dict(no_components=64, learning_rate=0.05)
    return [
        Family(
            "ours",
            fit_ours,
            [{}, {"history_dropout": 0.5}, {"history_length": 20}],
            note="two-tower + text + a history head (recency-weighted last 50 items, scored against item ids "
            "only); grid over the history",
        ),
        Family(
            "popularity",
            lambda d: PopularityRecommender().fit(d.train, d.content),
            [{}],
            cold=False,
            note="distinct train users per item",
        ),
        Family(
            "als",
            fit_als,
            [
                dict(factors=64, regularization=0.05, alpha=1.0),
                dict(factors=128, regularization=0.1, alpha=1.0),
                dict(factors=64, regularization=0.05, alpha=10.0),
            ],
            cold=False,
            note="implicit ALS, 15 iterations",
        ),
        Family(
            "bpr",
            fit_bpr,
            [
                dict(factors=64, learning_rate=0.01),
                dict(factors=64, learning_rate=0.05),
                dict(factors=128, learning_rate=0.01),
            ],
            cold=False,
            note="implicit BPR, 100 iterations, reg 0.01",
        ),
        Family(
            "lightfm_ids",
            lambda d, **kw: fit_lightfm(d, "ids", **kw),
            [dict(lfm, epochs=30), dict(lfm, epochs=60)],
            cold=False,
            note="WARP, ids only",
        ),
        Family(
            "lightfm_genres",
            lambda d, **kw: fit_lightfm(d, "genres", **kw),
            [dict(lfm, epochs=30), dict(lfm, epochs=60)],
            note="WARP, ids + genres",
        ),
        Family(
            "lightfm_genres_text",
            lambda d, **kw: fit_lightfm(d, "genres+text", **kw),
            [dict(lfm, epochs=30), dict(lfm, epochs=60)],
            note="WARP, ids + genres + text (PCA-32)",
        ),
        Family("content_knn", lambda d: ContentKNN(d), [{}], note="mean text vector of the user's items, cosine"),
        Family("random", lambda d: RandomRecommender(d.seed).fit(d.train, d.content), [{}], note="floor"),
    ]


# ---------------------------------------------------------------------- protocols
def make_split(protocol: str, interactions: pd.DataFrame, seed: int) -> Split:
    if protocol == "warm":
        return split_user_last_fraction(interactions, 0.2, 5)
    return split_item_cold_start(interactions, 0.2, seed)


def evaluate(model, split: Split, protocol: str, catalog_ids: list[str], max_users: int | None) -> dict[str, float]:
    """Recall@20 and NDCG@10 of ``model`` on ``split`` (``warm``: all non-train catalog items; ``cold``: cold only)."""
    if max_users is not None:
        keep = set(sorted(split.test["user_id"].astype(str).unique())[:max_users])
        split = Split(split.train, split.test[split.test["user_id"].astype(str).isin(keep)], split.cold_items)
    m = evaluate_split(model, split, 20).metrics
    prefix = "" if protocol == "warm" else "cold_candidates_"
    return {"recall_at_20": m[f"{prefix}recall_at_20"], "ndcg_at_10": m[f"{prefix}ndcg_at_10"]}


def tune(fam: Family, protocol: str, train: pd.DataFrame, content, catalog_ids, max_users, log) -> dict:
    """Pick the grid entry with the best validation NDCG@10 on a split carved from ``train`` (seed 0)."""
    if len(fam.grid) == 1:
        return fam.grid[0]
    inner = make_split(protocol, train, seed=1000)
    best, best_v = fam.grid[0], -1.0
    for params in fam.grid:
        t0 = time.perf_counter()
        model = fam.fit(Data(inner.train, content, 0), **params)
        v = evaluate(model, inner, protocol, catalog_ids, max_users)["ndcg_at_10"]
        log(f"  tune {fam.name}/{protocol} {params}: val NDCG@10 {v:.4f} ({time.perf_counter() - t0:.0f}s)")
        if v > best_v:
            best, best_v = params, v
    return best


def fmt(vals: list[float]) -> str:
    a = np.asarray(vals, dtype=float)
    if len(a) == 1:
        return f"{a[0]:.4f} (1 seed)"
    return f"{a.mean():.4f} ± {a.std(ddof=1):.4f}"


def write_table(rows: list[dict], seeds, path: Path, extra: str = "") -> str:
    lines = [
        "# Quality benchmark (ml-latest-small, implicit feedback)",
        "",
        f"Mean ± sample std over seeds {list(seeds)}. warm: per-user temporal last-20% holdout, candidates = all "
        "catalog items not in the user's train. cold: 20% of items held out (split seed = run seed), candidates = "
        "the held-out items only. Hyperparameters tuned on a validation split carved from train (seed 0).",
        "",
        "| model | warm Recall@20 | warm NDCG@10 | cold Recall@20 | cold NDCG@10 | chosen params | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = []
        for proto in ("warm", "cold"):
            for met in ("recall_at_20", "ndcg_at_10"):
                v = r.get(proto, {}).get(met)
                cells.append(fmt(v) if v else r.get(f"{proto}_na", "N/A"))
        params = "; ".join(
            f"{p}: {json.dumps(r.get(f'{p}_params', {}))}" for p in ("warm", "cold") if f"{p}_params" in r
        )
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {params} | {r['note']} |")
    text = "\n".join(lines) + "\n" + extra
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def log_mlflow(rows: list[dict], table_path: Path, args) -> None:
    import mlflow

    from recsys_pipeline.registry.tracking import experiment_id
    from recsys_pipeline.settings import ensure_home, get_settings

    paths = ensure_home(get_settings().paths)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or paths.mlflow_tracking_uri
    # artifacts under the home, not ./mlruns of whatever folder the script runs from
    exp = experiment_id(uri, "quality_benchmark", str(paths.mlflow_artifacts))
    with mlflow.start_run(experiment_id=exp, run_name=f"quality_{time.strftime('%Y%m%d_%H%M%S')}"):
        mlflow.log_params({"seeds": str(args.seeds), "max_users": str(args.max_users), "models": ",".join(args.models)})
        for r in rows:
            for proto in ("warm", "cold"):
                for met, vals in r.get(proto, {}).items():
                    mlflow.log_metric(f"{r['name']}.{proto}.{met}.mean", float(np.mean(vals)))
                    mlflow.log_metric(
                        f"{r['name']}.{proto}.{met}.std", float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
                    )
        mlflow.log_artifact(str(table_path))
    print(f"[mlflow] logged to {uri} (experiment quality_benchmark)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", default=[f.name for f in families()])
    p.add_argument("--protocols", nargs="+", default=["warm", "cold"])
    p.add_argument("--max-users", type=int, default=None, help="evaluate only the first N test users (smoke runs)")
    p.add_argument("--max-interactions", type=int, default=None, help="use only the N earliest ratings (smoke runs)")
    p.add_argument("--no-tune", action="store_true", help="use each family's first (default) grid entry")
    p.add_argument("--ours", default="{}", help="JSON ModelConfig overrides for our model (every grid entry)")
    p.add_argument("--out", default=str(RESULTS_DIR / "quality.md"))
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--note", default="", help="Markdown appended under the table (e.g. what did not finish)")
    p.add_argument("--rows-out", default=None, help="also write the per-seed results as JSON here")
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        help="build the table from --rows-out JSON files of runs on the same splits (no training)",
    )
    args = p.parse_args(argv)
    if args.merge:
        by_name = {}
        for f in args.merge:
            for r in json.loads(Path(f).read_text()):
                by_name[r["name"]] = r
        order = [f.name for f in families()]
        # our model's rows (variants named ours_*) first, then the peers in family order
        rows = sorted(
            by_name.values(),
            key=lambda r: (
                not r["name"].startswith("ours"),
                order.index(r["name"]) if r["name"] in order else len(order),
            ),
        )
        args.models = [r["name"] for r in rows]
        out = Path(args.out)
        print(write_table(rows, args.seeds, out, "\n" + args.note + "\n" if args.note else ""))
        if not args.no_mlflow:
            log_mlflow(rows, out, args)
        return 0

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    interactions = load_interactions()
    if args.max_interactions:
        interactions = interactions.sort_values("timestamp", kind="stable").head(args.max_interactions)
    catalog = load_catalog()
    content = build_content(catalog, text_vectors(catalog["text"].tolist()))
    catalog_ids = content.item_ids
    ours_overrides = json.loads(args.ours)
    fams = [f for f in families() if f.name in args.models]
    for f in fams:
        if f.name == "ours":
            f.grid = [{**ours_overrides, **g} for g in f.grid]
    rows = []
    for fam in fams:
        row = {"name": fam.name, "note": fam.note}
        for proto in args.protocols:
            if proto == "cold" and not fam.cold:
                row["cold_na"] = "N/A"
                continue
            base = make_split(proto, interactions, args.seeds[0])
            params = (
                fam.grid[0] if args.no_tune else tune(fam, proto, base.train, content, catalog_ids, args.max_users, log)
            )
            row[f"{proto}_params"] = params
            res: dict[str, list[float]] = {"recall_at_20": [], "ndcg_at_10": []}
            for seed in args.seeds:
                split = make_split(proto, interactions, seed)
                t0 = time.perf_counter()
                model = fam.fit(Data(split.train, content, seed), **params)
                fit_s = time.perf_counter() - t0
                m = evaluate(model, split, proto, catalog_ids, args.max_users)
                for k in res:
                    res[k].append(m[k])
                extra = ""
                if hasattr(model, "train_stats"):
                    s = model.train_stats
                    extra = (
                        f" epochs {s['epochs_trained']} best {s['best_epoch']} {s['samples_per_second']:.0f} samples/s"
                    )
                log(
                    f"{fam.name}/{proto} seed {seed}: R@20 {m['recall_at_20']:.4f} NDCG@10 {m['ndcg_at_10']:.4f}"
                    f" fit {fit_s:.0f}s{extra}"
                )
            row[proto] = res
        rows.append(row)
    if args.rows_out:
        Path(args.rows_out).write_text(json.dumps(rows, indent=1))
    out = Path(args.out)
    print(write_table(rows, args.seeds, out))
    if not args.no_mlflow:
        log_mlflow(rows, out, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
