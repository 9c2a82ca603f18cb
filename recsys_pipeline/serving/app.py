"""``recsys serve``: a small HTTP endpoint (FastAPI, run by uvicorn) over the published snapshots.

It reads only the Parquet snapshots under ``$RECSYS_HOME/published/`` (``serving.snapshot``), never DuckDB, so a running
materialization (which holds DuckDB's single-writer lock) never blocks it; a new snapshot is picked up on the next
request after its file changes (atomic ``os.replace``: a request sees the old list or the new one).

Contract of ``GET /recommendations/{user_id}?k=10[&fallback=true][&date=YYYY-MM-DD]``:

- ``date``: the lists of that UTC day (``published/days/D``); without it, the current day (``published/
  current.json``: the newest published day, or the day a rollback named). A day without published lists is ``404``
  with ``{"error": "unknown_date", ...}`` naming the published days; a malformed date is ``422``.

- ``user_id`` in the published recommendations (the user has interactions): ``200``, the user's top-``k`` list
  by the champion model, seen items excluded; each entry carries ``because`` (the user's items that raise its
  score most, with titles and the score each adds: ``TwoTowerRecommender.explain``) and ``modality_weights``
  (the shares of text / image / audio in the item's content vector). ``strategy`` is ``"personalized"``, or
  ``"folded_in"`` for a user with interactions newer than the champion (folded in when the lists were made,
  ``serving.publish``).
- any other ``user_id`` has no history in the system: the server cannot tell a new user from a typo, so it answers
  ``404`` with ``{"error": "unknown_user", ...}``, unless the caller says it is a new (cold) user with
  ``fallback=true``: then ``200`` with the most popular items (distinct users, all time) and
  ``strategy = "popularity_fallback"``.
- nothing published yet: ``503`` with ``{"error": "not_published", ...}``.

``POST /recommendations`` with ``{"items": ["1", "50", ...], "k": 10[, "date": "YYYY-MM-DD"]}``: a visitor without an
id, served from the items they just interacted with (oldest first), without retraining: the day's published model
(``published/days/D/model-*``, loaded on first use) folds them in (``TwoTowerRecommender.with_history``) and ranks
the catalogue minus those items. ``200`` with ``strategy = "folded_in"`` and ``ignored_items`` (ids not in the
model's catalogue, left out: the first 20, and ``n_ignored_items`` counts them all); ``422`` when no item is known
(``{"error": "unknown_items"}``) or the body is malformed; ``413`` ``body_too_large`` for a body over
:data:`MAX_BODY_BYTES`; ``503`` ``model_not_published`` for a day published without a model.

``GET /health`` (or ``HEAD``): ``200`` with what is loaded (users, model version, production date, the current day
and the published days), ``503`` ``not_published`` before the first publish.

Every error body has ``error`` (a word: ``unknown_user``, ``not_found``, ``method_not_allowed``, ...) and ``detail``.

``GET /openapi.json``: the OpenAPI schema of the above. There is no ``/docs`` page (it would load Swagger UI from a
CDN, so it is blank offline).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from recsys_pipeline.serving.publish import FOLDED_IN, PERSONALIZED, POPULARITY_FALLBACK, explanation_json
from recsys_pipeline.serving.snapshot import (
    ITEMS,
    MAX_ECHO_CHARS,
    RECOMMENDATIONS,
    current_day,
    describe_days,
    echoed_id,
    published_days,
    published_model,
    snapshot_path,
)
from recsys_pipeline.settings import HomePaths

MAX_K = 1000
# the largest body a POST needs: MAX_VISITOR_ITEMS ids of a few hundred characters each fit in well under this
MAX_BODY_BYTES = 1 << 20
CACHED_DAYS = 8  # loaded days kept in memory besides the current one (a request for another day reads it once)


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
    meta: dict[str, str | None]  # date (of the lists), model_version, produced_on
    ranks: np.ndarray  # (n_rows,) int
    item_ids: np.ndarray  # (n_rows,) object (str)
    item_titles: np.ndarray  # (n_rows,) object (str or None)
    scores: np.ndarray  # (n_rows,) float64, rounded to 6 decimals
    strategies: np.ndarray  # (n_rows,) object (str)
    run_ids: np.ndarray  # (n_rows,) object (str or None)
    popular_items: list[dict]  # {"rank", "item_id", "title", "score"} by rank
    explanations: np.ndarray  # (n_rows,) object: the stored JSON (str) or None (parsed per request)


class PublishedSnapshots:
    """The recommendations and item snapshots of one home, by day, each reloaded when its files change on disk.

    Thread-safe (the lock guards a reload); the endpoints run on uvicorn's event loop, so a reload (reading the
    Parquet files, once per publish) holds requests for its duration.
    """

    def __init__(self, paths: HomePaths):
        self.paths = paths
        self._lock = threading.Lock()
        self._loaded: dict[date | None, _Loaded] = {}  # day (None: a home without days) -> its snapshots
        self._current: date | None = None
        self.reloads = 0

    def files(self, day: date | None = None) -> tuple[Path, Path]:
        """The lists and items files of UTC day ``day`` (``None``: the current day's)."""
        return snapshot_path(self.paths, RECOMMENDATIONS, day), snapshot_path(self.paths, ITEMS, day)

    def current_day(self) -> date | None:
        """The day ``published/current.json`` names (``None``: a home without days, or nothing published); an
        unreadable pointer keeps the day read before (logged as a warning)."""
        try:
            self._current = current_day(self.paths)
        except (OSError, ValueError) as exc:
            logging.getLogger(__name__).warning("published-day pointer unreadable, keeping %s: %s", self._current, exc)
        return self._current

    def current(self) -> _Loaded | None:
        """The current day's snapshots, reloaded first if a file changed; ``None`` when nothing (readable) is
        published. A file that cannot be read keeps the previous snapshot in service (logged as a warning)."""
        day = self.current_day()
        return self.for_day(day) if day is not None else self._get(None)

    def for_day(self, day: date) -> _Loaded | None:
        """The snapshots of UTC day ``day``; ``None`` when that day has none (readable)."""
        return self._get(day)

    def _get(self, day: date | None) -> _Loaded | None:
        paths = (
            self.files(day)
            if day is not None
            else (self.paths.published / f"{RECOMMENDATIONS}.parquet", self.paths.published / f"{ITEMS}.parquet")
        )
        ids = tuple(_file_id(p) for p in paths)
        if ids[0] is None:
            return None
        with self._lock:
            loaded = self._loaded.get(day)
            if loaded is None or loaded.file_ids != ids:
                try:
                    loaded = self._load(paths, ids, day)
                except (OSError, ValueError) as exc:  # unreadable file (pyarrow raises both): keep the last good one
                    logging.getLogger(__name__).warning(
                        "published snapshot unreadable, serving the previous one (%s): %s",
                        "none loaded" if loaded is None else "still loaded",
                        exc,
                    )
                    return loaded
                self._loaded[day] = loaded
                self.reloads += 1
                others = [d for d in self._loaded if d not in (day, self._current)]
                for stale in others[: max(0, len(others) - CACHED_DAYS)]:
                    del self._loaded[stale]
            return loaded

    def _load(self, files: tuple[Path, Path], ids: tuple, day: date | None) -> _Loaded:
        recs = _read(files[0])
        recs["user_id"] = recs["user_id"].astype(str)
        recs["item_id"] = recs["item_id"].astype(str)
        if "strategy" not in recs.columns:  # published before strategies were recorded
            recs["strategy"] = PERSONALIZED
        recs = recs.sort_values(["user_id", "rank"], kind="stable").reset_index(drop=True)
        users, starts, counts = np.unique(recs["user_id"].to_numpy(dtype=str), return_index=True, return_counts=True)
        spans = {u: (int(s), int(s + c)) for u, s, c in zip(users, starts, counts)}
        if ids[1] is not None:
            popular = _read(files[1]).sort_values("rank", kind="stable").reset_index(drop=True)
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
            meta={
                "date": day.isoformat() if day is not None else _first(recs, "partition_date"),
                "model_version": _first(recs, "model_version"),
                "produced_on": _first(recs, "produced_on"),
            },
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
            explanations=(
                np.array([None if pd.isna(e) else str(e) for e in recs["explanation"]], dtype=object)
                if "explanation" in recs.columns
                else np.full(len(recs), None, dtype=object)
            ),
        )


class PublishedModels:
    """The published model of each day, loaded on first use (torch is imported then, not at start) and kept while
    its folder is the one the day's ``model.json`` names; the latest two are kept in memory."""

    def __init__(self, paths: HomePaths):
        self.paths = paths
        self._lock = threading.Lock()
        self._loaded: dict[Path, object] = {}

    def get(self, day: date):
        """The model of UTC day ``day``, or ``None`` when that day published none."""
        found = published_model(self.paths, day)
        if found is None:
            return None
        folder = found[0]
        with self._lock:
            model = self._loaded.get(folder)
            if model is None:
                import torch

                from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

                # one request is a few small products: intra-op threads cost more than they give (p50 20 ms
                # instead of 24 ms in process on 2 busy cores), and uvicorn's thread pool serves requests at once
                torch.set_num_threads(1)
                model = TwoTowerRecommender.load(folder).warm()  # under the lock: requests share its caches
                self._loaded[folder] = model
                for stale in list(self._loaded)[:-2]:
                    del self._loaded[stale]
            return model


MAX_LISTED_IGNORED = 20  # unknown ids a POST answer lists (all are counted)
VISITOR = "\x00visitor"  # the user id a POST's visitor folds in under: no real id contains NUL
MAX_VISITOR_ITEMS = 1000


class VisitorRequest(BaseModel):
    """Body of ``POST /recommendations``: a visitor's items, oldest first, and the list length."""

    items: list[str] = Field(min_length=1, max_length=MAX_VISITOR_ITEMS, description="item ids, oldest first")
    # strict: JSON true or "3" is a client's mistake, not k = 1 or 3
    k: int = Field(10, ge=1, le=MAX_K, strict=True, description="list length (a JSON integer)")
    date: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$", description="UTC day (default: current)")


MAX_REPORTED_ERRORS = 20  # entries of a 422 body's detail


def _cut_validation_error(error: dict) -> dict:
    """One pydantic error as JSON: ``type``, ``loc``, ``msg`` and ``input`` (its JSON text cut with
    :func:`echoed_id` when longer than 200 characters); ``ctx`` as text, ``url`` dropped."""
    from fastapi.encoders import jsonable_encoder

    cut = {k: error[k] for k in ("type", "loc", "msg") if k in error}
    cut["loc"] = [echoed_id(str(part)) if isinstance(part, str) else part for part in cut.get("loc", [])]
    if "input" in error:
        value = jsonable_encoder(error["input"])
        text = json.dumps(value)  # NaN / Infinity and lone surrogates: text, not values JSON cannot carry
        cut["input"] = value if len(text) <= MAX_ECHO_CHARS and _renders(value) else echoed_id(text)
    if "ctx" in error:
        cut["ctx"] = {k: echoed_id(str(v)) for k, v in error["ctx"].items()}
    return cut


def _renders(value) -> bool:
    """``value`` can be sent as strict JSON in UTF-8 (no NaN / Infinity, no lone surrogate)."""
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return False
    return True


ERROR_WORDS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` (by its ``Content-Length``, or counted as it streams in)
    is answered ``413 {"error": "body_too_large"}`` before the app reads it all."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes
        self.detail = f"the request body is over {max_bytes} bytes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from fastapi import HTTPException

        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._too_large(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # a chunked body: FastAPI answers this as the 413 below
                raise HTTPException(413, self.detail)
            return message

        return await self.app(scope, limited, send)

    async def _too_large(self, scope, receive, send):
        from fastapi.responses import JSONResponse

        content = {"error": ERROR_WORDS[413], "detail": self.detail}
        await JSONResponse(status_code=413, content=content)(scope, receive, send)


def _explained(stored: str | None, titles: dict[str, str]) -> dict:
    """A list entry's ``because`` (the user's items raising it most, with titles) and ``modality_weights`` (the
    item's content shares), from the stored explanation JSON; ``{}`` when the entry has none."""
    if stored is None:
        return {}
    why = json.loads(stored)
    return {
        "because": [
            {"item_id": i, "title": titles.get(i), "contribution": c}
            for i, c in zip(why.get("because", []), why.get("contributions", []))
        ],
        "modality_weights": why.get("modalities", {}),
    }


def _read(path: Path) -> pd.DataFrame:
    """One snapshot file, read through one open handle (``snapshot.read_snapshot``'s reason)."""
    with open(path, "rb") as handle:
        return pd.read_parquet(handle)


def _first(frame: pd.DataFrame, column: str):
    if column not in frame.columns or frame.empty:
        return None
    value = frame[column].iloc[0]
    return None if pd.isna(value) else str(value)


def create_app(paths: HomePaths, api_key: str | None = None):
    """The FastAPI app serving ``paths``' published snapshots (see the module docstring for the contract).

    ``api_key``: when given, every request must carry the header ``X-API-Key`` with that value, else ``401
    {"error": "unauthorized"}`` (compared in constant time); ``recsys serve`` passes ``RECSYS_API_KEY``.
    """
    import hmac

    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    state = PublishedSnapshots(paths)
    models = PublishedModels(paths)
    # fold-ins at once: one per core; more threads only contend for the GIL (measured: 74 req/s one at a time,
    # 43 req/s with 20 concurrent requests each in its own thread, benchmarks/results/serve_load.md)
    fold_in_slots = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))
    # No /docs or /redoc: FastAPI's pages load Swagger UI / ReDoc from a CDN, blank offline. The schema they would
    # render is /openapi.json (served as usual).
    # redirect_slashes off: /recommendations/ is a 404, not a redirect built from the Host header
    app = FastAPI(
        title="recsys_pipeline recommendations",
        description=__doc__,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own errors (no route, wrong method, a body too large) in the app's shape: ``error`` and
        ``detail``."""
        word = ERROR_WORDS.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse(
            status_code=exc.status_code, content={"error": word, "detail": str(exc.detail)}, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 body (``detail``: one entry per error), with ``error: invalid_request`` as the app's other
        errors have, each entry's ``input`` cut to its first 200 characters of JSON and at most 20 entries: the
        default echoes the whole input, megabytes for a hostile request."""
        errors = exc.errors()
        return JSONResponse(
            status_code=422,
            content={
                "error": "invalid_request",
                "n_errors": len(errors),
                "detail": [_cut_validation_error(e) for e in errors[:MAX_REPORTED_ERRORS]],
            },
        )

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
        try:
            snapshot_path(paths, RECOMMENDATIONS)
        except ValueError as exc:  # an unreadable current-day pointer: say so, not a 500
            return JSONResponse(status_code=503, content={"error": "not_published", "detail": str(exc)[:500]})
        return JSONResponse(
            status_code=503,
            content={
                "error": "not_published",
                "detail": f"no published recommendations under {paths.published}: materialize "
                "`recommendations` (or run `recsys demo`)",
            },
        )

    def snapshots_of(day_text: str | None):
        """The snapshots of ``day_text`` (``None``: the current day), or the error response to send."""
        try:
            day = date.fromisoformat(day_text) if day_text is not None else None
        except ValueError as exc:  # matches the pattern but is no day, e.g. 2018-02-30
            return JSONResponse(status_code=422, content={"error": "invalid_date", "detail": str(exc)[:200]})
        if day is not None:
            loaded = state.for_day(day)
            if loaded is None:
                days = published_days(paths)
                shown = describe_days(days)
                return JSONResponse(
                    status_code=404,
                    content={
                        "error": "unknown_date",
                        "date": day.isoformat(),
                        "detail": f"no recommendations published for {day}; published days: {shown}",
                    },
                )
        else:
            loaded = state.current()
        return not_published() if loaded is None else loaded

    # async: the work is a dict lookup and a few array slices; a thread-pool hop per request would cost more
    @app.api_route("/health", methods=["GET", "HEAD"])  # HEAD: what load balancers' health checks send
    async def health():
        """Liveness plus what is loaded: users, model version, production date."""
        loaded = state.current()
        if loaded is None:
            return JSONResponse(
                status_code=503,
                content={
                    "error": "not_published",
                    "status": "no_snapshot",
                    "home": str(paths.root),
                    "detail": "nothing published yet: materialize `recommendations` (or run `recsys demo`)",
                },
            )
        days = published_days(paths)
        return {
            "status": "ok",
            "date": loaded.meta["date"],
            "users": len(loaded.spans),
            "items_with_titles": len(loaded.titles),
            "model_version": _first(loaded.recs, "model_version"),
            "model_run_id": _first(loaded.recs, "model_run_id"),
            "produced_on": _first(loaded.recs, "produced_on"),
            "published_days": len(days),
            "first_day": days[0].isoformat() if days else None,
            "last_day": days[-1].isoformat() if days else None,
        }

    @app.get("/recommendations/{user_id}")
    async def recommendations(
        user_id: str,
        k: int = Query(10, ge=1, le=MAX_K, description="list length (at most what was published per user)"),
        fallback: bool = Query(False, description="an id without history is a new user: popularity list, not 404"),
        day_text: str | None = Query(
            None,
            alias="date",
            pattern=r"^\d{4}-\d{2}-\d{2}$",  # YYYY-MM-DD only: no epoch seconds, no datetimes
            description="UTC day of the lists (YYYY-MM-DD); default: the current published day",
        ),
    ):
        """A user's top-``k`` list of the current day, or of ``date``. Known user (has history): personalized list
        from the champion of that day. Unknown id: 404, or with ``fallback=true`` the popularity list (``strategy =
        popularity_fallback``). A day without published lists: 404 ``unknown_date``; a malformed one: 422."""
        loaded = snapshots_of(day_text)
        if isinstance(loaded, JSONResponse):
            return loaded
        span = loaded.spans.get(user_id)
        if span is not None:
            start, stop = span[0], min(span[1], span[0] + k)
            items = [
                {"rank": rank, "item_id": item, "title": title, "score": score, **_explained(why, loaded.titles)}
                for rank, item, title, score, why in zip(
                    loaded.ranks[start:stop].tolist(),
                    loaded.item_ids[start:stop].tolist(),
                    loaded.item_titles[start:stop].tolist(),
                    loaded.scores[start:stop].tolist(),
                    loaded.explanations[start:stop].tolist(),
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
                    "user_id": echoed_id(user_id),
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

    # sync: the fold-in is ~ms of numpy / torch work, run in the thread pool so GETs are not held
    @app.post("/recommendations")
    def visitor_recommendations(body: VisitorRequest):
        """A visitor's top-``k`` from the items they just interacted with (oldest first), folded into the day's
        published model without retraining (``strategy = folded_in``). Unknown item ids are left out and listed
        in ``ignored_items``; none known: 422 ``unknown_items``."""
        loaded = snapshots_of(body.date)
        if isinstance(loaded, JSONResponse):
            return loaded
        day = date.fromisoformat(loaded.meta["date"]) if loaded.meta["date"] else None
        model = models.get(day) if day is not None else None
        if model is None:
            return JSONResponse(
                status_code=503,
                content={
                    "error": "model_not_published",
                    "detail": f"the lists of {day or 'this home (published without days)'} were published "
                    "without their model: materialize `recommendations` again to serve visitors",
                },
            )
        catalog = model.features.index
        items = list(dict.fromkeys(body.items))
        known = [i for i in items if i in catalog]
        ignored = [echoed_id(i) for i in items if i not in catalog]
        if not known:
            return JSONResponse(
                status_code=422,
                content={
                    "error": "unknown_items",
                    "detail": f"none of the {len(items)} item ids is in the model's catalogue",
                    "ignored_items": ignored[:MAX_LISTED_IGNORED],
                    "n_ignored_items": len(ignored),
                },
            )
        # in the order given, the last one now (UTC): "now" sets the window of the new-user recency term
        now = pd.Timestamp.now(tz="UTC").tz_localize(None)
        order = pd.to_timedelta(np.arange(len(known)) - (len(known) - 1), unit="us")
        events = pd.DataFrame({"user_id": VISITOR, "item_id": known, "timestamp": now + order})
        with fold_in_slots:
            folded = model.with_history(events)
            ranked = folded.recommend([VISITOR], k=body.k)
            explained = folded.explain([VISITOR], ranked["item_id"].tolist())
        return {
            "strategy": FOLDED_IN,
            "k": len(ranked),
            "requested_k": body.k,
            **loaded.meta,
            "items_used": len(known),
            "ignored_items": ignored[:MAX_LISTED_IGNORED],
            "n_ignored_items": len(ignored),
            "items": [
                {
                    "rank": int(r.rank),
                    "item_id": r.item_id,
                    "title": loaded.titles.get(r.item_id),
                    "score": float(r.score),
                    **_explained(explanation_json(why), loaded.titles),
                }
                for r, why in zip(ranked.itertuples(), explained.itertuples())
            ],
        }

    return app


def serve(paths: HomePaths, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    from recsys_pipeline.settings import get_settings

    uvicorn.run(create_app(paths, get_settings().api_key), host=host, port=port, log_level="info")
