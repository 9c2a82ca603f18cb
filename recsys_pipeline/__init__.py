"""recsys_pipeline: a multimodal recommender pipeline, in layers (lowest first, each importing only those below):
``settings``, ``data``, ``content``, ``models``, ``evaluation``, ``registry``, ``serving``; then the Dagster layer
(``instance``, ``resources``, ``assets``, ``automation``, ``definitions``) and ``cli`` on top. See README "Layout".
"""

__version__ = "0.1.0"
