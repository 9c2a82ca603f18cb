"""``recsys serve``: a small HTTP endpoint (FastAPI, run by uvicorn) over the published snapshots.

It reads only the Parquet snapshots under ``$RECSYS_HOME/published/`` (``serving.snapshot``), never DuckDB, so a running
materialization (which holds DuckDB's single-writer lock) never blocks it; a new snapshot is picked up on the next
request after its file changes (atomic ``os.replace``: a request sees the old list or the new one).

Contract of ``GET /recommendations/{user_id}?k=10[&fallback=true]``:

- ``user_id`` in the published recommendations (the user has interactions): ``200``, the user's top-``k`` list
  by the champion model, seen items excluded. ``strategy`` is ``"personalized"``, or ``"cold_user_prior"`` for a
  user whose history arrived after the champion's training cutoff (no user embedding yet: ranked by the model's
  content-aware item prior, seen items still excluded).
- any other ``user_id`` has no history in the system: the server cannot tell a new user from a typo, so it answers
  ``404`` with ``{"error": "unknown_user", ...}``, unless the caller says it is a new (cold) user with
  ``fallback=true``: then ``200`` with the most popular items (distinct users, all time) and
  ``strategy = "popularity_fallback"``.
- nothing published yet: ``503`` with ``{"error": "not_published", ...}``.

``GET /health``: ``200`` with what is loaded (users, model version, production date), ``503`` before the first
publish.

``GET /openapi.json``: the OpenAPI schema of the above. There is no ``/docs`` page (it would load Swagger UI from a
CDN, so it is blank offline).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_pipeline.serving.publish import PERSONALIZED, POPULARITY_FALLBACK
from recsys_pipeline.serving.snapshot import ITEMS, RECOMMENDATIONS, read_snapshot, snapshot_path
from recsys_pipeline.settings import HomePaths

MAX_K = 1000


def _file_id(path: Path) -> tuple[int, int, int] | None:
    """``(mtime_ns, size, inode)`` of ``path`` (``os.replace`` changes the inode), or ``None`` when absent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


@dataclass
class _Loaded:
    """The snapshots as a request needs them: the lists' columns as arrays aligned with ``recs`` (a request slices
    them, no pandas on the request path) and the popularity list as JSON-ready items."""

    recs: pd.DataFrame  # sorted by user_id, rank
    spans: dict[str, tuple[int, int]]  # user_id -> [start, stop) rows in recs
    titles: dict[str, str]
    popular: pd.DataFrame  # item_id, title, users, rank (by rank)
    file_ids: tuple
    meta: dict[str, str | None]  # model_version, produced_on
    ranks: np.ndarray  # (n_rows,) int
    item_ids: np.ndarray  # (n_rows,) object (str)
    item_titles: np.ndarray  # (n_rows,) object (str or None)
    scores: np.ndarray  # (n_rows,) float64, rounded to 6 decimals
    strategies: np.ndarray  # (n_rows,) object (str)
    run_ids: np.ndarray  # (n_rows,) object (str or None)
    popular_items: list[dict]  # {"rank", "item_id", "title", "score"} by rank


class PublishedSnapshots:
    """The recommendations and item snapshots of one home, reloaded when either file changes on disk.

    Thread-safe (the lock guards a reload); the endpoints run on uvicorn's event loop, so a reload (reading the
    Parquet files, once per publish) holds requests for its duration.
    """

    def __init__(self, paths: HomePaths):
        self.paths = paths
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self.reloads = 0

    def files(self) -> tuple[Path, Path]:
        return snapshot_path(self.paths, RECOMMENDATIONS), snapshot_path(self.paths, ITEMS)

    def current(self) -> _Loaded | None:
        """The loaded snapshots, reloaded first if a file changed; ``None`` when nothing (readable) is published.
        A file that cannot be read keeps the previous snapshot in service (logged as a warning)."""
        ids = tuple(_file_id(p) for p in self.files())
        if ids[0] is None:
            return None
        with self._lock:
            if self._loaded is None or self._loaded.file_ids != ids:
                try:
                    self._loaded = self._load(ids)
                except (OSError, ValueError) as exc:  # unreadable file (pyarrow raises both): keep the last good one
                    logging.getLogger(__name__).warning(
                        "published snapshot unreadable, serving the previous one (%s): %s",
                        "none loaded" if self._loaded is None else "still loaded",
                        exc,
                    )
                    return self._loaded
                self.reloads += 1
            return self._loaded

    def _load(self, ids: tuple) -> _Loaded:
        recs = read_snapshot(self.paths, RECOMMENDATIONS)
        recs["user_id"] = recs["user_id"].astype(str)
        recs["item_id"] = recs["item_id"].astype(str)
        if "strategy" not in recs.columns:  # published before strategies were recorded
            recs["strategy"] = PERSONALIZED
        recs = recs.sort_values(["user_id", "rank"], kind="stable").reset_index(drop=True)
        users, starts, counts = np.unique(recs["user_id"].to_numpy(dtype=str), return_index=True, return_counts=True)
        spans = {u: (int(s), int(s + c)) for u, s, c in zip(users, starts, counts)}
        if ids[1] is not None:
            popular = read_snapshot(self.paths, ITEMS).sort_values("rank", kind="stable").reset_index(drop=True)
            popular["item_id"] = popular["item_id"].astype(str)
        else:
            popular = pd.DataFrame({"item_id": [], "title": [], "users": [], "rank": []})
        titles = dict(zip(popular["item_id"], popular["title"]))
        run_ids = recs["model_run_id"] if "model_run_id" in recs.columns else pd.Series(None, index=recs.index)
        return _Loaded(
            recs=recs,
            spans=spans,
            titles=titles,
            popular=popular,
            file_ids=ids,
            meta={"model_version": _first(recs, "model_version"), "produced_on": _first(recs, "produced_on")},
            ranks=recs["rank"].to_numpy(dtype=np.int64),
            item_ids=recs["item_id"].to_numpy(dtype=object),
            item_titles=np.array([titles.get(i) for i in recs["item_id"]], dtype=object),
            scores=recs["score"].to_numpy(dtype=np.float64).round(6),
            strategies=recs["strategy"].astype(str).to_numpy(dtype=object),
            run_ids=np.array([None if pd.isna(r) else str(r) for r in run_ids], dtype=object),
            popular_items=[
                {"rank": int(r.rank), "item_id": r.item_id, "title": r.title, "score": float(r.users)}
                for r in popular.itertuples()
            ],
        )


def _first(frame: pd.DataFrame, column: str):
    if column not in frame.columns or frame.empty:
        return None
    value = frame[column].iloc[0]
    return None if pd.isna(value) else str(value)


MAX_ECHO_CHARS = 200  # at most this much of a caller's id is echoed in an error body


def _echo(text: str) -> str:
    """``text`` cut to ``MAX_ECHO_CHARS`` characters (marked with ``…``) for an error body."""
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "…"


def create_app(paths: HomePaths, api_key: str | None = None):
    """The FastAPI app serving ``paths``' published snapshots (see the module docstring for the contract).

    ``api_key``: when given, every request must carry the header ``X-API-Key`` with that value, else ``401
    {"error": "unauthorized"}`` (compared in constant time); ``recsys serve`` passes ``RECSYS_API_KEY``.
    """
    import hmac

    from fastapi import FastAPI, Query, Request
    from fastapi.responses import JSONResponse

    state = PublishedSnapshots(paths)
    # No /docs or /redoc: FastAPI's pages load Swagger UI / ReDoc from a CDN, blank offline. The schema they would
    # render is /openapi.json (served as usual).
    app = FastAPI(title="recsys_pipeline recommendations", description=__doc__, docs_url=None, redoc_url=None)

    if api_key:
        expected = api_key.encode()

        @app.middleware("http")
        async def require_api_key(request: Request, call_next):
            given = request.headers.get("x-api-key", "").encode()
            if not hmac.compare_digest(given, expected):
                return JSONResponse(
                    status_code=401, content={"error": "unauthorized", "detail": "missing or wrong X-API-Key header"}
                )
            return await call_next(request)

    app.state.snapshots = state

    def not_published() -> JSONResponse:
        path = snapshot_path(paths, RECOMMENDATIONS)
        return JSONResponse(
            status_code=503,
            content={
                "error": "not_published",
                "detail": f"no published recommendations at {path}: materialize "
                "`recommendations` (or run `recsys demo`)",
            },
        )

    # async: the work is a dict lookup and a few array slices; a thread-pool hop per request would cost more
    @app.get("/health")
    async def health():
        """Liveness plus what is loaded: users, model version, production date."""
        loaded = state.current()
        if loaded is None:
            return JSONResponse(status_code=503, content={"status": "no_snapshot", "home": str(paths.root)})
        return {
            "status": "ok",
            "users": len(loaded.spans),
            "items_with_titles": len(loaded.titles),
            "model_version": _first(loaded.recs, "model_version"),
            "model_run_id": _first(loaded.recs, "model_run_id"),
            "produced_on": _first(loaded.recs, "produced_on"),
        }

    @app.get("/recommendations/{user_id}")
    async def recommendations(
        user_id: str,
        k: int = Query(10, ge=1, le=MAX_K, description="list length (at most what was published per user)"),
        fallback: bool = Query(False, description="an id without history is a new user: popularity list, not 404"),
    ):
        """A user's top-``k`` list. Known user (has history): personalized list from the champion. Unknown id:
        404, or with ``fallback=true`` the popularity list (``strategy = popularity_fallback``)."""
        loaded = state.current()
        if loaded is None:
            return not_published()
        span = loaded.spans.get(user_id)
        if span is not None:
            start, stop = span[0], min(span[1], span[0] + k)
            items = [
                {"rank": rank, "item_id": item, "title": title, "score": score}
                for rank, item, title, score in zip(
                    loaded.ranks[start:stop].tolist(),
                    loaded.item_ids[start:stop].tolist(),
                    loaded.item_titles[start:stop].tolist(),
                    loaded.scores[start:stop].tolist(),
                )
            ]
            # "k": what is returned (the published list may be shorter than requested_k)
            return JSONResponse(
                {
                    "user_id": user_id,
                    "strategy": loaded.strategies[start],
                    "k": len(items),
                    "requested_k": k,
                    **loaded.meta,
                    "model_run_id": loaded.run_ids[start],
                    "items": items,
                }
            )
        if not fallback:
            return JSONResponse(
                status_code=404,
                content={
                    "error": "unknown_user",
                    "user_id": _echo(user_id),
                    "detail": "no interactions for this user_id in the published recommendations; for a new user "
                    "without history, ask again with ?fallback=true for the popularity list",
                },
            )
        items = loaded.popular_items[:k]
        return JSONResponse(
            {
                "user_id": user_id,
                "strategy": POPULARITY_FALLBACK,
                "k": len(items),
                "requested_k": k,
                **loaded.meta,
                "score_unit": "distinct users who interacted with the item",
                "items": items,
            }
        )

    return app


def serve(paths: HomePaths, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    from recsys_pipeline.settings import get_settings

    uvicorn.run(create_app(paths, get_settings().api_key), host=host, port=port, log_level="info")
