"""``model_tuning``: the two-tower model's hyperparameter search on the data at hand (Optuna; on demand or weekly,
never nightly). ``recommender_model`` and ``model_evaluation`` train with its chosen trial's params (a field set in
the ``training`` resource wins); without a search they use ``ModelConfig``'s defaults.

``text_encoder_adaptation``: the text encoder fine-tuned on the interactions (on demand); ``text_embeddings`` reads
it when the ``text_encoder`` resource's mode is ``adapted``."""

import json
import time
from datetime import UTC, datetime

import dagster as dg
import pandas as pd

from recsys_pipeline.assets.metadata import frame_table, key_value_table, mlflow_tags
from recsys_pipeline.data import warehouse
from recsys_pipeline.data.schema import MODEL_TUNING
from recsys_pipeline.evaluation.protocols import PROTOCOLS, EvaluationSettings
from recsys_pipeline.instance import DUCKDB_POOL
from recsys_pipeline.resources import MLflowResource, TextEncoderResource, TrainingResource, WarehouseResource

MODEL_TUNING_ASSET = "model_tuning"
TEXT_ADAPTATION_ASSET = "text_encoder_adaptation"


class TextAdaptationConfig(dg.Config):
    """``content.text_adaptation.AdaptationConfig``: ``steps`` (batches of ``batch_size`` pairs; ~2.7 s a step of
    32 pairs on one CPU thread), ``lr``, ``max_pairs`` (distinct consecutive pairs drawn), ``seed``."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-5
    max_pairs: int = 50_000
    seed: int = 0


class TuningConfig(dg.Config):
    """``protocol``: whose validation split judges the trials (carved from that protocol's train part of the data
    at hand; with ``user_last_fraction`` no later day's evaluation judges on rows the search trained on, while the
    random and item cold-start splits are redrawn over each day's data); the one the served model should be good
    at. ``n_trials``: trials in
    all, trial 0 being the configured model. ``k_core``: the data view (0 = every interaction). ``seed``: the
    split's and the sampler's."""

    protocol: str = "user_last_fraction"
    n_trials: int = 10
    k_core: int = 0
    seed: int = 0


def tuning_assets() -> list[dg.AssetsDefinition]:
    """``model_tuning`` (not partitioned: it searches on every interaction there is)."""

    @dg.asset(
        name=MODEL_TUNING_ASSET,
        pool=DUCKDB_POOL,
        # its own group: "Materialize all" on the daily model group must not start a search
        group_name="tuning",
        kinds={"optuna", "mlflow", "duckdb"},
        deps=["interactions", "item_features"],
    )
    def model_tuning(
        context: dg.AssetExecutionContext,
        config: TuningConfig,
        warehouse_db: WarehouseResource,
        mlflow: MLflowResource,
        training: TrainingResource,
    ) -> dg.MaterializeResult:
        """An Optuna search (TPE) of the two-tower model's history head, id dropout, epochs and learning rate on
        ``protocol``'s validation split, each trial's fit scored at every item-item head weight (it does not change
        training; the trial keeps its best), every trial an MLflow child run of the
        ``model_tuning`` run; the trials replace the ``model_tuning`` table, its chosen trial is what
        ``recommender_model`` trains from then on (a field set in the ``training`` resource wins). On demand, or
        weekly (``weekly_model_tuning`` schedule, stopped by default): each trial is a full training, so ten
        trials cost about ten nightly trainings."""
        from recsys_pipeline.content.features import load_item_features
        from recsys_pipeline.registry import tracking
        from recsys_pipeline.registry.runs import tune_and_log

        if config.protocol not in PROTOCOLS or config.protocol == "temporal":
            raise dg.Failure(f"protocol {config.protocol!r} cannot be tuned on; choose from {PROTOCOLS[:-1]}")
        started = time.perf_counter()
        with warehouse_db.session(read_only=True) as con:
            data = warehouse.read_interactions(con)
            try:
                features = load_item_features(con)
            except ValueError as exc:
                raise dg.Failure(str(exc)) from exc
        if data.empty:
            raise dg.Failure("no interactions to tune on: materialize the interactions partitions first")
        settings = EvaluationSettings(protocols=(config.protocol,), seed=config.seed, k_core=config.k_core)
        try:
            result, run_id = tune_and_log(
                data,
                features,
                training.build_model_config(),
                training.build_trainer_config(),
                config.protocol,
                settings,
                config.n_trials,
                mlflow.resolved_tracking_uri(),
                mlflow.experiment_id(),
                tags=mlflow_tags(context),
                seed=config.seed,
                fixed=training.fixed_fields(),
            )
        except ValueError as exc:
            raise dg.Failure(f"model_tuning: {exc}") from exc
        tuned_at = datetime.now(UTC).replace(tzinfo=None)
        rows = pd.DataFrame(
            {
                "tuned_at": tuned_at,
                "protocol": config.protocol,
                "metric": result.metric,
                "trial": [t.number for t in result.trials],
                "params": [json.dumps(t.params, sort_keys=True) for t in result.trials],
                "value": [t.value for t in result.trials],
                "seconds": [t.seconds for t in result.trials],
                "chosen": [t.number == result.best_number for t in result.trials],  # Optuna's best_trial
                "mlflow_run_id": run_id,
            }
        )
        with warehouse_db.session() as con:
            warehouse.replace_table(con, MODEL_TUNING, rows)
        trials = rows[["trial", "value", "seconds", "chosen", "params"]].round({"value": 4, "seconds": 1})
        return dg.MaterializeResult(
            metadata={
                "seconds": round(time.perf_counter() - started, 2),
                "protocol": config.protocol,
                "not searched (set in the training resource)": ", ".join(training.fixed_fields()) or "none",
                f"best_val_{result.metric}": round(result.best_value, 4),
                f"default_val_{result.metric}": round(result.default_value, 4),
                "chosen": key_value_table(result.best_params),
                "trials": frame_table(trials),
                "mlflow_run": dg.MetadataValue.url(
                    tracking.run_url(mlflow.resolved_tracking_uri(), run_id, mlflow.experiment_id())
                ),
            }
        )

    @dg.asset(
        name=TEXT_ADAPTATION_ASSET,
        pool=DUCKDB_POOL,  # it opens the warehouse (and holds the slot while it fine-tunes, as model_tuning does)
        group_name="tuning",  # on demand: "Materialize all" of the content group must not start a fine-tuning
        kinds={"pytorch", "mlflow"},
        deps=["interactions", "item_catalog"],
    )
    def text_encoder_adaptation(
        context: dg.AssetExecutionContext,
        config: TextAdaptationConfig,
        warehouse_db: WarehouseResource,
        mlflow: MLflowResource,
        text_encoder: TextEncoderResource,
    ) -> dg.MaterializeResult:
        """The text encoder fine-tuned on every interaction so far: contrastive, a user's consecutive items as
        positive pairs, in-batch negatives (``content.text_adaptation``). One MLflow run (the adapted model as
        its artifacts: a version per run); the new encoder becomes current (``<home>/models/text_adapted``), read by
        ``text_embeddings`` when the ``text_encoder`` resource's ``mode`` is ``adapted`` (the default is frozen,
        see the README's measurement). A failure keeps the previous encoder current."""
        from recsys_pipeline.content.text_adaptation import AdaptationConfig
        from recsys_pipeline.registry import tracking
        from recsys_pipeline.registry.runs import adapt_and_log

        started = time.perf_counter()
        with warehouse_db.session(read_only=True) as con:  # released before the (long) fine-tuning
            data = warehouse.read_interactions(con)
            catalog = con.execute("SELECT item_id, text FROM item_catalog").df()
        if data.empty:
            raise dg.Failure("no interactions to adapt on: materialize the interactions partitions first")
        texts = dict(zip(catalog["item_id"].astype(str), catalog["text"].fillna("").astype(str)))
        adaptation = AdaptationConfig(
            steps=config.steps, batch_size=config.batch_size, lr=config.lr, max_pairs=config.max_pairs, seed=config.seed
        )
        try:
            folder, facts, run_id = adapt_and_log(
                data,
                texts,
                text_encoder.adapted_folder(),
                adaptation,
                mlflow.resolved_tracking_uri(),
                mlflow.experiment_id(),
                tags=mlflow_tags(context),
            )
        except ValueError as exc:
            raise dg.Failure(f"text_encoder_adaptation: {exc}") from exc
        return dg.MaterializeResult(
            metadata={
                "seconds": round(time.perf_counter() - started, 2),
                "pairs": int(facts["pairs"]),
                "steps": int(facts["steps"]),
                "first_loss": round(facts["first_loss"], 4),
                "last_loss": round(facts["last_loss"], 4),
                "path": str(folder),
                "used by text_embeddings": "yes" if text_encoder.resolved_mode() == "adapted" else "no (mode frozen)",
                "mlflow_run": dg.MetadataValue.url(
                    tracking.run_url(mlflow.resolved_tracking_uri(), run_id, mlflow.experiment_id())
                ),
            }
        )

    return [model_tuning, text_encoder_adaptation]
