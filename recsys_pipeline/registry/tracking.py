"""MLflow helpers (no Dagster import): experiments under the home store, model logging, registry look-ups, links
into the MLflow UI, the figures each protocol is judged by, charts.

The model is logged as an MLflow pyfunc "model from code" (``registry/pyfunc_model.py``): its one artifact is the
folder ``TwoTowerRecommender.save`` writes (safetensors weights, JSON config and id maps, ``.npz`` item features,
Parquet seen items), so ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work without unpickling project
objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import quote

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
MODEL_ARTIFACT = "model"
# PostgreSQL advisory lock held while one process creates MLflow's tables (any 64-bit number no one else uses)
STORE_LOCK_KEY = 7_305_142_093_611_870_001
_ready_stores: set[str] = set()


def ensure_store(tracking_uri: str) -> None:
    """Make sure the schema and the MLflow tables of a PostgreSQL store exist before this process uses it; other
    URIs: nothing.

    MLflow creates its tables on first use, and two processes doing it at once on an empty database fail with a
    unique violation on ``pg_type`` (measured: 2 of 3 processes started together). Here one process at a time
    creates them, under a PostgreSQL advisory lock (:data:`STORE_LOCK_KEY`), after the first schema of the
    connection's ``search_path`` (``mlflow`` on the postgres profile, ``Settings.mlflow_tracking_uri``) when it is
    missing; once per URI and process.

    Raises:
        sqlalchemy.exc.OperationalError: the server cannot be reached.
    """
    if not tracking_uri.startswith("postgresql") or tracking_uri in _ready_stores:
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(tracking_uri, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": STORE_LOCK_KEY})
            try:
                if conn.execute(sqlalchemy.text("SELECT current_schema()")).scalar() is None:  # none of it exists
                    schema = conn.execute(sqlalchemy.text("SHOW search_path")).scalar().split(",")[0].strip(' "')
                    conn.execute(sqlalchemy.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                    conn.commit()
                client = MlflowClient(tracking_uri)
                client.search_experiments(max_results=1)  # the tracking store: creates every table when missing
                client.search_registered_models(max_results=1)  # the registry store, on the same tables
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": STORE_LOCK_KEY})
    finally:
        engine.dispose()
    _ready_stores.add(tracking_uri)


def experiment_id(tracking_uri: str, name: str, artifact_location: str | None = None) -> str:
    """Id of experiment ``name`` in the store at ``tracking_uri``, created (with ``artifact_location``) if missing;
    a PostgreSQL store's tables first (:func:`ensure_store`). Two processes creating it at once get the same id."""
    ensure_store(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = Path(artifact_location).resolve().as_uri() if artifact_location else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id  # another process created it meanwhile


def log_recommender(
    model,
    registered_model_name: str | None,
    pip_requirements: list[str] | None = None,
) -> tuple[str, str | None]:
    """Log ``model`` (a ``TwoTowerRecommender``) in the active run as a pyfunc and register a version.

    The pyfunc carries a signature (input ``user_id`` str, param ``k``; output ``user_id, rank, item_id, score``)
    and an input example (the first user the model knows, ``k=10``; MLflow saves it as
    ``serving_input_example.json`` for ``mlflow.models.validate_serving_input``).

    Args:
        model: a fitted recommender with ``save(dir)`` (its item features and seen items are saved with it).
        registered_model_name: registry name; ``None`` logs without registering.

    Returns:
        ``(model_uri, version)``; version is ``None`` when not registered.
    """
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        model.save(model_dir)
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(PYFUNC_CODE),
            artifacts={"model": str(model_dir)},
            pip_requirements=pip_requirements or ["recsys_pipeline", "torch", "safetensors", "pandas", "pyarrow"],
            registered_model_name=registered_model_name,
            signature=_signature(),
            input_example=_input_example(model.seen.pairs()),
        )
    version = str(info.registered_model_version) if info.registered_model_version is not None else None
    if version is not None:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri))
        digests = json.dumps(artifact_digests(local), sort_keys=True)
        MlflowClient().set_model_version_tag(registered_model_name, version, INTEGRITY_TAG, digests)
    return info.model_uri, version


INTEGRITY_TAG = "integrity.sha256"
# written by MLflow into a downloaded copy (which name and version it came from): not part of the model
_DOWNLOAD_ONLY = {"registered_model_meta"}


class ArtifactIntegrityError(RuntimeError):
    """A registered model's files differ from the sha256 digests recorded when it was registered."""


def artifact_digests(model_dir: str | Path) -> dict[str, str]:
    """``relative path -> sha256 hex`` of every file under a logged model's folder (the weights and item tensors
    under ``artifacts/model``, the config ``MLmodel`` and ``recommender.json``, the code file ``pyfunc_model.py``)."""
    root = Path(model_dir)
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in _DOWNLOAD_ONLY):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        out[path.relative_to(root).as_posix()] = digest.hexdigest()
    return out


def verify_model_artifacts(client: MlflowClient, name: str, version: str, model_dir: str | Path) -> bool:
    """Compare the files under ``model_dir`` (a downloaded copy of version ``version`` of ``name``) with the
    digests in its ``integrity.sha256`` tag. Returns ``False`` when the version has no such tag (registered by an
    older release: nothing to compare), ``True`` when every file matches.

    Raises:
        ArtifactIntegrityError: a file was changed, added or removed since registration (the message names them).
    """
    recorded = client.get_model_version(name, str(version)).tags.get(INTEGRITY_TAG)
    if not recorded:
        return False
    expected, found = json.loads(recorded), artifact_digests(model_dir)
    changed = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    missing, added = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if changed or missing or added:
        raise ArtifactIntegrityError(
            f"model {name!r} version {version}: its files differ from the sha256 digests recorded at registration "
            f"(changed: {changed}, missing: {missing}, added: {added}); refusing to load it. Someone with write "
            "access to the home changed them: re-train, or restore the files"
        )
    return True


def resolve_version(client: MlflowClient, model_uri: str):
    """The ``ModelVersion`` a ``models:/name/N`` or ``models:/name@alias`` URI names; ``None`` for other URIs."""
    if not model_uri.startswith("models:/"):
        return None
    ref = model_uri.removeprefix("models:/").rstrip("/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, number = ref.rpartition("/")
    return client.get_model_version(name, number) if name and number.isdigit() else None


def _signature():
    """Input ``user_id`` (str); output ``user_id, rank, item_id, score``; params ``k`` (int, default 10) and
    ``explain`` (bool, default false: add ``because`` and ``modality_weights``)."""
    from mlflow.models import infer_signature

    example_in = pd.DataFrame({"user_id": ["1"]})
    example_out = pd.DataFrame({"user_id": ["1"], "rank": [1], "item_id": ["1"], "score": [0.5]})
    return infer_signature(example_in, example_out, params={"k": 10, "explain": False})


def _input_example(seen: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """A request for one user the model knows and ``k=10`` (saved as ``serving_input_example.json``)."""
    user = str(seen["user_id"].iloc[0]) if len(seen) else "1"
    return pd.DataFrame({"user_id": [user]}), {"k": 10}


def load_pyfunc(tracking_uri: str, model_uri: str):
    """Load a logged recommender as an MLflow pyfunc (``predict(DataFrame[user_id]) -> ranked items``), after
    checking a registered version's files against its recorded digests (before any of its code runs).

    Raises:
        ArtifactIntegrityError: the files differ from those registered.
    """
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    version = resolve_version(client, model_uri)
    if version is None:
        return mlflow.pyfunc.load_model(model_uri)
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    verify_model_artifacts(client, version.name, version.version, local)
    return mlflow.pyfunc.load_model(local)


def quiet() -> None:
    """Silence MLflow's per-call progress bars and info logs in batch runs."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------------- registry
def version_by_alias(client: MlflowClient, name: str, alias: str):
    """The ``ModelVersion`` of ``name`` holding ``alias``, or ``None`` (no such alias or no such model)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def run_model_config(client: MlflowClient, run_id: str) -> dict[str, str] | None:
    """The ``model.*`` params of a training run (``registry.runs.train_and_log`` logs every ``ModelConfig`` field), as
    ``{field: text}``; ``None`` when the run has none (e.g. a version registered by hand)."""
    params = client.get_run(run_id).data.params
    config = {k.removeprefix("model."): v for k, v in params.items() if k.startswith("model.")}
    return config or None


# ---------------------------------------------------------------------------------------------- links
MLFLOW_UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` serves a file or SQLite store


def ui_base(tracking_uri: str) -> str:
    """The MLflow UI address for ``tracking_uri``: the tracking server itself when it is ``http(s)://``, else the
    default of ``mlflow ui --backend-store-uri <uri>`` (:data:`MLFLOW_UI_DEFAULT`)."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return MLFLOW_UI_DEFAULT


def run_url(tracking_uri: str, run_id: str, experiment_id: str | None = None) -> str:
    """``<ui>/#/experiments/<experiment_id>/runs/<run_id>``: the run's page in the MLflow UI (``experiment_id``
    looked up in the store when not given)."""
    if experiment_id is None:
        experiment_id = MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    return f"{ui_base(tracking_uri)}/#/experiments/{quote(str(experiment_id))}/runs/{quote(run_id)}"


def model_version_url(tracking_uri: str, name: str, version: str | int) -> str:
    """``<ui>/#/models/<name>/versions/<version>``: the registered version's page in the MLflow UI."""
    return f"{ui_base(tracking_uri)}/#/models/{quote(name)}/versions/{quote(str(version))}"


# ---------------------------------------------------------------------------------------------- figures
COLD_START = "item_cold_start"
COLD_MIXED = "item_cold_mixed"


def judged_metrics(protocol: str, k: int = 20) -> tuple[str, ...]:
    """The figures ``protocol`` is judged by (names as ``evaluation.evaluate`` computes them, ``k`` its list length).

    ``item_cold_start`` tests new items: NDCG@10 and Recall@k of the ranking among the held-out new items
    (``cold_candidates_*``). ``item_cold_mixed``, the same split ranked over the whole catalogue: NDCG@10 and
    Recall@k of the new items there and their share of the top-k (``cold_share_at_{k}``). The other protocols rank
    every unseen item: ``ndcg_at_10``, ``recall_at_{k}`` and ``coverage``.
    """
    if protocol == COLD_START:
        return ("cold_candidates_ndcg_at_10", f"cold_candidates_recall_at_{k}")
    if protocol == COLD_MIXED:
        return ("ndcg_at_10", f"recall_at_{k}", f"cold_share_at_{k}")
    return ("ndcg_at_10", f"recall_at_{k}", "coverage")


def evaluated_k(metrics: pd.DataFrame) -> int:
    """The list length ``k`` of an evaluation's figures (``recall_at_{k}`` besides ``recall_at_10``; 10 if none)."""
    ks = {int(m.removeprefix("recall_at_")) for m in metrics["metric"] if re.fullmatch(r"recall_at_\d+", str(m))}
    return max(ks - {10}, default=10)


def judged_figures(metrics: pd.DataFrame, k: int | None = None, by: str = "model") -> pd.DataFrame:
    """One row per protocol and judged figure (:func:`judged_metrics`), one column per model (or ablation variant).

    Args:
        metrics: ``protocol, <by>, metric, value`` (``evaluate_protocols``' long table, or the ablation's with
            ``by="variant"``).
        k: the evaluation's list length; ``None`` reads it from the metric names (:func:`evaluated_k`).
        by: the column whose values become columns.

    Returns:
        ``protocol, metric``, one column per value of ``by`` (in order of appearance; empty for one with no
        figure, e.g. a skipped ablation variant) and ``random``: a random order's expected recall, for the
        cold-start recall only (NaN elsewhere). Protocols in evaluation order; a figure nobody has is left out.

    Example::

        protocol            metric                        ours    popularity  random
        user_last_fraction  ndcg_at_10                    0.1335  0.0868      NaN
        item_cold_start     cold_candidates_recall_at_20  0.2470  0.0105      0.0102
    """
    k = evaluated_k(metrics) if k is None else k
    columns = [str(c) for c in dict.fromkeys(metrics[by])]
    wide = metrics.pivot_table(index=["protocol", "metric"], columns=by, values="value", aggfunc="first")
    wide = wide.rename(columns=str).reindex(columns=columns)
    random_name = f"cold_candidates_random_recall_at_{k}"
    rows = []
    for protocol in dict.fromkeys(metrics["protocol"]):
        for name in judged_metrics(protocol, k):
            if (protocol, name) not in wide.index:
                continue
            row = {"protocol": protocol, "metric": name, **wide.loc[(protocol, name)].to_dict()}
            chance = wide.loc[(protocol, random_name)].dropna() if (protocol, random_name) in wide.index else ()
            if name == f"cold_candidates_recall_at_{k}" and len(chance):
                row["random"] = chance.iloc[0]  # the same for every model: it depends on the split only
            rows.append(row)
    out = pd.DataFrame(rows, columns=["protocol", "metric", *columns, "random"])
    return out.astype(dict.fromkeys([*columns, "random"], float))


# ---------------------------------------------------------------------------------------------- charts
# per-epoch series: the fit (with validation), then the refit on every interaction (TwoTowerRecommender logs its
# loss with the prefix models.two_tower.recommender.REFIT_PREFIX)
TRAINING_CURVES = ("train_loss", "refit_train_loss", "val_ndcg_at_10", "val_recall_at_20")
TRAINING_CHART = "charts/training_curves.png"
EVALUATION_CHART = "charts/evaluation.png"
_CURVE_LABELS = {"train_loss": "fit", "refit_train_loss": "refit on all interactions"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: render to files only
    import matplotlib.pyplot as plt

    return plt


def log_training_curves(client: MlflowClient, run_id: str) -> list[str]:
    """Plot the fit's and the refit's ``train_loss`` (two series) and the validation metrics per epoch from the
    run's metric history (what Lightning's ``MLFlowLogger`` logged) and log the PNG as ``charts/training_curves.png``.

    Returns the metrics plotted (empty: nothing logged, no chart written).
    """
    histories = {name: client.get_metric_history(run_id, name) for name in TRAINING_CURVES}
    histories = {name: sorted(h, key=lambda m: (m.step, m.timestamp)) for name, h in histories.items() if h}
    if not histories:
        return []
    plt = _pyplot()
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for name, history in histories.items():
        ax = ax_loss if name.endswith("train_loss") else ax_val
        label = f"{name} ({_CURVE_LABELS[name]})" if name in _CURVE_LABELS else name
        ax.plot(range(1, len(history) + 1), [m.value for m in history], marker="o", label=label)  # one per epoch
    ax_loss.set(title="training loss per epoch", xlabel="epoch", ylabel="loss")
    ax_val.set(title="validation (held-out latest interactions)", xlabel="epoch", ylabel="metric")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    client.log_figure(run_id, fig, TRAINING_CHART)
    plt.close(fig)
    return list(histories)


def log_evaluation_chart(
    client: MlflowClient, run_id: str, metrics: pd.DataFrame, k: int | None = None
) -> pd.DataFrame:
    """Bar chart, one panel per protocol, of the NDCG@10 and Recall@k that protocol is judged by
    (:func:`judged_metrics`: among the held-out new items for ``item_cold_start``), ours next to popularity, with
    a random order's expected recall as a dashed line where there is one; logged as ``charts/evaluation.png``.

    Returns:
        what was plotted: ``protocol, metric, ours, popularity, random`` (:func:`judged_figures` without
        ``coverage``); empty when there was nothing to plot (then no chart is logged).
    """
    shown = judged_figures(metrics, k)
    shown = shown[shown["metric"] != "coverage"].dropna(subset=["ours", "popularity"], how="all")
    if shown.empty:
        return shown
    plt = _pyplot()
    protocols = list(dict.fromkeys(shown["protocol"]))
    fig, axes = plt.subplots(1, len(protocols), figsize=(5 * len(protocols), 4), squeeze=False, constrained_layout=True)
    for ax, protocol in zip(axes[0], protocols):
        panel = shown[shown["protocol"] == protocol].set_index("metric")
        panel[["ours", "popularity"]].plot.bar(ax=ax, rot=0)
        for i, chance in enumerate(panel["random"]):
            if pd.notna(chance):
                ax.hlines(chance, i - 0.4, i + 0.4, colors="grey", linestyles="dashed", label="random order")
        ranked = "ranking the held-out new items" if protocol == COLD_START else "ranking every unseen item"
        ax.set(title=f"{protocol}\n({ranked})", xlabel="", ylabel="value")
        ax.grid(axis="y", alpha=0.3)
        for container in ax.containers:
            ax.bar_label(container, fmt="%.3f", fontsize=8)
        ax.legend()
    client.log_figure(run_id, fig, EVALUATION_CHART)
    plt.close(fig)
    return shown.reset_index(drop=True)


def kill_orphaned_runs(tracking_uri: str, is_dead) -> list[str]:
    """Mark ``KILLED`` every MLflow run still ``RUNNING`` whose Dagster run is dead: its tag ``dagster.run_id``
    names a run for which ``is_dead(dagster_run_id) -> bool`` is true (e.g. a training killed by ``kill -9``,
    which never ended its MLflow run). Runs without that tag are left alone.

    Returns:
        the MLflow run ids marked ``KILLED``, sorted.
    """
    ensure_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    killed = []
    for run in client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=1000):
        dagster_run_id = run.data.tags.get("dagster.run_id")
        if dagster_run_id and is_dead(dagster_run_id):
            client.set_terminated(run.info.run_id, status="KILLED")
            client.set_tag(run.info.run_id, "recsys.killed_reason", f"its Dagster run {dagster_run_id} is dead")
            killed.append(run.info.run_id)
    return sorted(killed)
