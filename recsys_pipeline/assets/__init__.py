"""Dagster assets, grouped by area: ingestion, content, model."""

from recsys_pipeline.assets.content import audio_embeddings, image_embeddings, item_features, text_embeddings
from recsys_pipeline.assets.ingestion import interactions, item_catalog, raw_events
from recsys_pipeline.assets.model import model_evaluation, recommendations, recommender_model

ALL_ASSETS = [
    raw_events,
    interactions,
    item_catalog,
    text_embeddings,
    image_embeddings,
    audio_embeddings,
    item_features,
    recommender_model,
    model_evaluation,
    recommendations,
]
