"""MLflow helpers (no Dagster import): experiments under the home store, model logging, registry look-ups, charts.

The model is logged as an MLflow pyfunc "model from code" (``registry/pyfunc_model.py``): its one artifact is the
folder ``TwoTowerRecommender.save`` writes (safetensors weights, JSON config and id maps, ``.npz`` item features,
Parquet seen items), so ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work without unpickling project
objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
MODEL_ARTIFACT = "model"


def experiment_id(tracking_uri: str, name: str, artifact_location: str | None = None) -> str:
    """Id of experiment ``name`` in the store at ``tracking_uri``, created (with ``artifact_location``) if missing."""
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = Path(artifact_location).resolve().as_uri() if artifact_location else None
    return client.create_experiment(name, artifact_location=location)


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
    """Input ``user_id`` (str); output ``user_id, rank, item_id, score``; param ``k`` (int, default 10)."""
    from mlflow.models import infer_signature

    example_in = pd.DataFrame({"user_id": ["1"]})
    example_out = pd.DataFrame({"user_id": ["1"], "rank": [1], "item_id": ["1"], "score": [0.5]})
    return infer_signature(example_in, example_out, params={"k": 10})


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


# ---------------------------------------------------------------------------------------------- charts
TRAINING_CURVES = ("train_loss", "val_ndcg_at_10", "val_recall_at_20")
TRAINING_CHART = "charts/training_curves.png"
EVALUATION_CHART = "charts/evaluation.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: render to files only
    import matplotlib.pyplot as plt

    return plt


def log_training_curves(client: MlflowClient, run_id: str) -> list[str]:
    """Plot ``train_loss`` and the validation metrics per epoch from the run's metric history (what Lightning's
    ``MLFlowLogger`` logged) and log the PNG as ``charts/training_curves.png``.

    Returns the metrics plotted (empty: nothing logged, no chart written).
    """
    histories = {name: client.get_metric_history(run_id, name) for name in TRAINING_CURVES}
    histories = {name: sorted(h, key=lambda m: m.timestamp) for name, h in histories.items() if h}
    if not histories:
        return []
    plt = _pyplot()
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for name, history in histories.items():
        ax = ax_loss if name == "train_loss" else ax_val
        # one point per epoch; the refit on all interactions (after early stopping) starts again at step 0
        segments, current = [], []
        for metric in history:
            if current and metric.step < current[-1].step:
                segments.append(current)
                current = []
            current.append(metric)
        segments.append(current)
        for i, segment in enumerate(segments):
            label = name if len(segments) == 1 else f"{name} ({'fit' if i == 0 else 'refit on all'})"
            ax.plot(range(1, len(segment) + 1), [m.value for m in segment], marker="o", label=label)
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
    client: MlflowClient, run_id: str, metrics: pd.DataFrame, names: tuple[str, ...] = ("ndcg_at_10", "recall_at_20")
) -> bool:
    """Bar chart of ``names`` per model, one panel per protocol, from ``metrics`` (``protocol, model, metric,
    value``), logged as ``charts/evaluation.png``. Returns False (nothing logged) when none of ``names`` is there."""
    shown = metrics[metrics["metric"].isin(names)].dropna(subset=["value"])
    if shown.empty:
        return False
    plt = _pyplot()
    protocols = list(dict.fromkeys(shown["protocol"]))
    fig, axes = plt.subplots(1, len(protocols), figsize=(5 * len(protocols), 4), squeeze=False, constrained_layout=True)
    for ax, protocol in zip(axes[0], protocols):
        wide = shown[shown["protocol"] == protocol].pivot_table(index="model", columns="metric", values="value")
        wide = wide[[n for n in names if n in wide.columns]]
        wide.plot.bar(ax=ax, rot=0)
        ax.set(title=protocol, xlabel="", ylabel="value")
        ax.grid(axis="y", alpha=0.3)
        for container in ax.containers:
            ax.bar_label(container, fmt="%.3f", fontsize=8)
    client.log_figure(run_id, fig, EVALUATION_CHART)
    plt.close(fig)
    return True


def kill_orphaned_runs(tracking_uri: str, is_dead) -> list[str]:
    """Mark ``KILLED`` every MLflow run still ``RUNNING`` whose Dagster run is dead: its tag ``dagster.run_id``
    names a run for which ``is_dead(dagster_run_id) -> bool`` is true (e.g. a training killed by ``kill -9``,
    which never ended its MLflow run). Runs without that tag are left alone.

    Returns:
        the MLflow run ids marked ``KILLED``, sorted.
    """
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
