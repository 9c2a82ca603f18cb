"""The content layer: text / image / audio encoders (``text``, ``image``, ``audio``), media resolution and sync
(``media``), and the typed per-item model input ``ItemFeatures`` with the ``item_features`` table (``features``).

Imports ``data`` and ``settings`` only. The encoder modules import torch / transformers / timm / librosa: import
them where they are used, so that loading the code location stays cheap.
"""
