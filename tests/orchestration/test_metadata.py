"""What the Dagster metadata and the MLflow runs show after one night on toy data (issue 19): the tables' real row
counts and declared columns, few rounded headline figures plus one table, links into the MLflow UI, and MLflow
runs that say which Dagster run and partitions made them, with their inputs, nested ablation runs and a described
model version.

One module-scoped night (``image_embeddings`` and ``audio_embeddings``, which find no media, ``item_features``,
``recommender_model``, ``model_evaluation`` with both protocols and the ablation, ``recommendations``) on the planted
toy data of ``tests/reliability/support.py``.
"""

from types import SimpleNamespace

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from recsys_pipeline.assets.metadata import FIGURE_DIGITS, MAX_HEADLINE, ORIGIN_TAG, mlflow_tags
from recsys_pipeline.data import warehouse
from recsys_pipeline.data.schema import EVALUATION_METRICS, RECOMMENDATIONS, embedding_table, item_features_table
from recsys_pipeline.registry import tracking
from recsys_pipeline.settings import HomePaths, ensure_home
from tests.reliability.support import TOY_DAY, definitions_training, toy_warehouse

NAME = "recsys_ranker"
MEDIA = ["image_embeddings", "audio_embeddings"]
NIGHT = [*MEDIA, "item_features", "recommender_model", "model_evaluation", "recommendations"]
EVALUATION = {
    "ops": {
        "model_evaluation": {
            "config": {
                "protocols": ["user_last_fraction", "item_cold_start"],
                "ablation_variants": ["text", "text_image", "all"],
            }
        }
    }
}
RUN_TAGS = {ORIGIN_TAG: "backfill"}  # as `recsys backfill` tags its runs: where it came from
TABLES = {"model_evaluation": EVALUATION_METRICS, "recommendations": RECOMMENDATIONS}
NOT_HEADLINE = (dg.TableMetadataValue, dg.TableSchemaMetadataValue, dg.MarkdownMetadataValue, dg.JsonMetadataValue)


@pytest.fixture(scope="module")
def night(tmp_path_factory, toy):
    home = tmp_path_factory.mktemp("metadata") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECSYS_HOME", str(home))
        paths = ensure_home(HomePaths.at(home))
        toy_warehouse(paths, toy)
        defs = definitions_training(home, **{**toy.FAST, "max_epochs": 6})
        result = dg.materialize(
            [defs.get_assets_def(k) for k in defs.resolve_all_asset_keys()] + list(defs.asset_checks),
            resources=defs.resources,
            selection=dg.AssetSelection.assets(*NIGHT) | dg.AssetSelection.checks_for_assets("model_evaluation"),
            run_config=EVALUATION,
            tags=RUN_TAGS,
            partition_key=TOY_DAY,  # the day of the model group's run (one day per run)
        )
    assert result.success
    metadata = {name: result.asset_materializations_for_node(name)[0].metadata for name in NIGHT}
    client = MlflowClient(paths.mlflow_tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    return SimpleNamespace(paths=paths, result=result, metadata=metadata, client=client, runs=runs)


def by_name(night, run_name: str):
    return [r for r in night.runs if r.info.run_name == run_name]


def test_tables_report_their_real_row_count_and_declared_columns(night):
    with warehouse.session(night.paths.warehouse, read_only=True) as con:
        for asset, table in TABLES.items():
            meta = night.metadata[asset]
            assert isinstance(meta["dagster/row_count"], dg.IntMetadataValue)
            assert meta["dagster/row_count"].value == warehouse.row_count(con, table.name) > 0
            columns = meta["dagster/column_schema"].schema.columns
            assert [c.name for c in columns] == table.column_names
            assert [c.type for c in columns] == [c.sql_type for c in table.columns]
        features = night.metadata["item_features"]
        assert features["dagster/row_count"].value == warehouse.row_count(con, "item_features") == 120
    # the toy warehouse has 16-d text vectors and no image or audio table: their columns are untyped arrays
    declared = item_features_table({"text": 16, "image": None, "audio": None})
    assert [(c.name, c.type) for c in features["dagster/column_schema"].schema.columns] == [
        (c.name, c.sql_type) for c in declared.columns
    ]
    assert features["text_present"].value == 120 and features["image_present"].value == 0
    for modality in ("image", "audio"):  # no file anywhere: no vector, so no table and no width yet
        meta = night.metadata[f"{modality}_embeddings"]
        assert meta["dagster/row_count"].value == 0 and meta["missing"].value == 120
        columns = {c.name: c.type for c in meta["dagster/column_schema"].schema.columns}
        assert list(columns) == embedding_table(f"{modality}_embeddings", None).column_names
        assert columns["embedding"] == "FLOAT[]"
        details = {r.data["what"]: r.data["value"] for r in meta["details"].records}
        reasons = {k: int(v) for k, v in details.items() if k.startswith("missing: ")}
        assert details["catalog items"] == "120" and sum(reasons.values()) == 120


def test_every_materialization_has_few_rounded_headline_figures(night):
    for asset, meta in night.metadata.items():
        headline = {k: v for k, v in meta.items() if not isinstance(v, NOT_HEADLINE)}
        assert len(headline) <= MAX_HEADLINE, (asset, sorted(headline))
        for key, value in headline.items():
            if isinstance(value, dg.FloatMetadataValue):
                assert round(value.value, FIGURE_DIGITS) == value.value, (asset, key)


def test_model_evaluation_shows_the_figures_each_protocol_is_judged_by(night):
    meta = night.metadata["model_evaluation"]
    assert not any(k.startswith(("user_last_fraction.", "item_cold_start.")) for k in meta)  # no flat figure keys
    with warehouse.session(night.paths.warehouse, read_only=True) as con:
        stored = con.execute("SELECT protocol, model, metric, value FROM evaluation_metrics").df()
    figures = meta["figures"]
    assert isinstance(figures, dg.TableMetadataValue)
    assert [c.name for c in figures.schema.columns] == ["protocol", "metric", "ours", "popularity", "random"]
    rows = {(r.data["protocol"], r.data["metric"]): r.data for r in figures.records}
    assert set(rows) == {
        ("user_last_fraction", "ndcg_at_10"),
        ("user_last_fraction", "recall_at_20"),
        ("user_last_fraction", "coverage"),
        ("item_cold_start", "cold_candidates_ndcg_at_10"),  # among the held-out new items, not the catalogue
        ("item_cold_start", "cold_candidates_recall_at_20"),
    }
    for row in rows.values():
        for model in ("ours", "popularity"):
            match = (stored["protocol"] == row["protocol"]) & (stored["metric"] == row["metric"])
            value = stored.loc[match & (stored["model"] == model), "value"]
            assert row[model] == pytest.approx(float(value.iloc[0]), abs=0.5 * 10**-FIGURE_DIGITS)
    cold = rows[("item_cold_start", "cold_candidates_recall_at_20")]
    chance = stored.query("protocol == 'item_cold_start' and metric == 'cold_candidates_random_recall_at_20'")
    assert cold["random"] == pytest.approx(float(chance["value"].iloc[0]), abs=1e-4)
    assert cold["ours"] > cold["random"]  # the planted genres make new items findable from their content
    ours = stored.query("protocol == 'user_last_fraction' and model == 'ours' and metric == 'ndcg_at_10'")
    assert meta["gate.decision"].value == "champion" and meta["model_version"].value == "1"
    assert meta["gate.value"].value == pytest.approx(float(ours["value"].iloc[0]), abs=1e-4)
    ablation = {(r.data["protocol"], r.data["metric"]): r.data for r in meta["ablation"].records}
    assert [c.name for c in meta["ablation"].schema.columns] == ["protocol", "metric", "text", "text_image", "all"]
    assert set(ablation) == set(rows)
    # text only is every modality of the toy features: the evaluated model itself; no image vectors: skipped
    for key, row in ablation.items():
        assert row["text"] == rows[key]["ours"] and row["all"] == row["text"] and row["text_image"] is None


def test_links_open_the_runs_and_the_version_in_the_mlflow_ui(night):
    [evaluation] = by_name(night, "evaluation")
    [training] = by_name(night, "recommender_model")
    experiment = evaluation.info.experiment_id
    base = tracking.MLFLOW_UI_DEFAULT  # the store is SQLite: `mlflow ui`'s address
    version = f"{base}/#/models/{NAME}/versions/1"
    expected = {
        "recommender_model": f"{base}/#/experiments/{experiment}/runs/{training.info.run_id}",
        "model_evaluation": f"{base}/#/experiments/{experiment}/runs/{evaluation.info.run_id}",
        "recommendations": f"{base}/#/experiments/{experiment}/runs/{training.info.run_id}",  # the champion's
    }
    for asset, url in expected.items():
        meta = night.metadata[asset]
        assert isinstance(meta["mlflow_run"], dg.UrlMetadataValue) and meta["mlflow_run"].value == url
        assert isinstance(meta["mlflow_model_version"], dg.UrlMetadataValue)
        assert meta["mlflow_model_version"].value == version
    server = "https://mlflow.example.org/"  # a tracking server: its own UI
    assert tracking.run_url(server, "abc", "7") == "https://mlflow.example.org/#/experiments/7/runs/abc"
    assert tracking.model_version_url("http://h:5000", "my model", 3) == "http://h:5000/#/models/my%20model/versions/3"


def test_every_mlflow_run_names_its_dagster_run_partitions_and_origin(night):
    names = sorted(r.info.run_name for r in night.runs)
    assert names == ["ablation: all", "ablation: text", "ablation: text_image", "evaluation", "recommender_model"]
    for run in night.runs:
        tags = run.data.tags
        assert tags["dagster.run_id"] == night.result.run_id, run.info.run_name
        assert tags["dagster.partition"] == TOY_DAY and tags["recsys.origin"] == "backfill"
    [training] = by_name(night, "recommender_model")
    assert training.data.tags["partition_date"] == TOY_DAY
    assert night.client.get_model_version(NAME, "1").tags["partition_date"] == TOY_DAY  # the version's day
    context = SimpleNamespace(run=SimpleNamespace(run_id="r1", tags={"dagster/partition": "2024-05-02"}))
    assert mlflow_tags(context) == {"dagster.run_id": "r1", "dagster.partition": "2024-05-02"}
    one_day = {"dagster/asset_partition_range_start": "2024-05-02", "dagster/asset_partition_range_end": "2024-05-02"}
    context = SimpleNamespace(run=SimpleNamespace(run_id="r1", tags=one_day))
    assert mlflow_tags(context) == {"dagster.run_id": "r1", "dagster.partition": "2024-05-02"}
    ranged = {"dagster/asset_partition_range_start": "2024-05-01", "dagster/asset_partition_range_end": "2024-05-02"}
    context = SimpleNamespace(run=SimpleNamespace(run_id="r2", tags=ranged))
    assert mlflow_tags(context) == {"dagster.run_id": "r2", "dagster.partition_range": "2024-05-01...2024-05-02"}


def test_ablation_runs_are_children_of_the_evaluation_run(night):
    [evaluation] = by_name(night, "evaluation")
    children = [r for r in night.runs if r.info.run_name.startswith("ablation: ")]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {evaluation.info.run_id}
    with warehouse.session(night.paths.warehouse, read_only=True) as con:
        stored = con.execute("SELECT DISTINCT variant, mlflow_run_id FROM evaluation_ablation").fetchall()
    assert dict(stored) == {r.data.params["variant"]: r.info.run_id for r in children}
    [text] = by_name(night, "ablation: text")
    assert text.data.params["status"] == "evaluation model"
    assert text.data.metrics["item_cold_start.cold_candidates_recall_at_20"] == pytest.approx(
        evaluation.data.metrics["item_cold_start.ours.cold_candidates_recall_at_20"]
    )
    assert "ablation.md" in {a.path for a in night.client.list_artifacts(evaluation.info.run_id)}


def test_runs_log_their_inputs_with_digests(night):
    with warehouse.session(night.paths.warehouse, read_only=True) as con:
        interactions = warehouse.row_count(con, "interactions")
    digests = {}
    for run_name, context in (("recommender_model", "training"), ("evaluation", "evaluation")):
        [run] = by_name(night, run_name)
        inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
        assert set(inputs) == {"interactions", "item_features"}
        for name, given in inputs.items():
            assert {t.key: t.value for t in given.tags}["mlflow.data.context"] == context
            assert given.dataset.source_type == "local" and str(night.paths.warehouse) in given.dataset.source
            assert len(given.dataset.digest) == 16
            digests.setdefault(name, set()).add(given.dataset.digest)
        assert f'"num_rows": {interactions}' in inputs["interactions"].dataset.profile
    assert all(len(d) == 1 for d in digests.values())  # training and evaluation read the same inputs


def test_training_figures_are_metrics_and_summaries_are_tags(night):
    [training] = by_name(night, "recommender_model")
    metrics, tags = training.data.metrics, training.data.tags
    assert {"best_val_ndcg_at_10", "train_seconds", "samples_per_second"} <= set(metrics)
    assert not {"best_epoch", "epochs_trained", "n_train_interactions", "n_val_users", "refit"} & set(metrics)
    assert tags["train.refit"] == "True" and int(tags["train.n_train_interactions"]) > 0
    epochs, best = int(tags["train.epochs_trained"]), int(tags["train.best_epoch"])
    fit = night.client.get_metric_history(training.info.run_id, "train_loss")
    refit = night.client.get_metric_history(training.info.run_id, "refit_train_loss")
    assert len(fit) == epochs and len(refit) == best + 1  # two series: the refit does not continue the fit's
    [evaluation] = by_name(night, "evaluation")
    assert not [k for k in evaluation.data.metrics if k.endswith("n_users")]
    assert int(evaluation.data.params["item_cold_start.test_users"]) > 0


def test_the_model_version_is_described_with_its_figures_and_the_gate_decision(night):
    version = night.client.get_model_version(NAME, "1")
    description = version.description
    assert description.startswith("**champion**: user_last_fraction.ours.ndcg_at_10 = ")
    assert version.tags["gate.reason"] in description and "Popularity floor passed: " in description
    assert "cold_candidates_recall_at_20" in description and "popularity" in description
    assert "Training: " in description and "interactions of 60 users" in description  # kept from registration
    assert "Not gated yet" not in description and "nan" not in description


def test_the_evaluation_chart_plots_the_cold_start_figures(night):
    with warehouse.session(night.paths.warehouse, read_only=True) as con:
        stored = con.execute("SELECT protocol, model, metric, value FROM evaluation_metrics").df()
    [evaluation] = by_name(night, "evaluation")
    plotted = tracking.log_evaluation_chart(night.client, evaluation.info.run_id, stored, 20)
    cold = plotted[plotted["protocol"] == "item_cold_start"]
    assert cold["metric"].tolist() == ["cold_candidates_ndcg_at_10", "cold_candidates_recall_at_20"]
    whole = stored.query("protocol == 'item_cold_start' and model == 'ours' and metric == 'recall_at_20'")
    assert cold["ours"].iloc[1] != pytest.approx(float(whole["value"].iloc[0]))  # not the whole-catalogue figure
    assert tracking.EVALUATION_CHART in {a.path for a in night.client.list_artifacts(evaluation.info.run_id, "charts")}
