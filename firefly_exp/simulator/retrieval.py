"""Nearest cached calls of one tool: BM25 over argument tokens, re-ranked by structured similarity.

BM25 runs over a sparse matrix (one row per cached call, one column per token), so a query touches
only the columns of its own tokens: at 100k cached calls a lookup stays around a millisecond. The
top BM25 candidates are re-ranked by :func:`structured_similarity`, which compares the arguments
key by key (equal values, token overlap for text, relative distance for numbers).

    >>> idx = RetrievalIndex([{"city": "Paris", "n": 3}, {"city": "Oslo", "n": 3}], ["r0", "r1"])
    >>> idx.nearest({"city": "paris", "n": 4})[:2]
    ('r0', 0.875)
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import numpy as np
from scipy import sparse

_TOKEN = re.compile(r"[A-Za-z0-9_]+|[^\sA-Za-z0-9_]")


def tokens(args: Any) -> list[str]:
    """Key-qualified tokens of a call's arguments (``city=paris``, ``city:paris``...)."""
    out: list[str] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        else:
            text = str(value).lower()
            words = [w for w in _TOKEN.findall(text) if w.strip() and (w[0].isalnum() or w == "_")]
            out.extend(words)
            out.extend(f"{key}={w}" for w in words)
            out.append(f"{key}=={text[:64]}")

    walk(args, "")
    return out


def _value_similarity(a: Any, b: Any) -> float:
    if a == b:
        return 1.0
    if isinstance(a, bool) or isinstance(b, bool):
        return 0.0
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        scale = max(abs(a), abs(b), 1e-9)
        return max(0.0, 1.0 - abs(a - b) / scale)
    if isinstance(a, str) and isinstance(b, str):
        if a.strip().casefold() == b.strip().casefold():
            return 1.0
        ta, tb = set(_TOKEN.findall(a.lower())), set(_TOKEN.findall(b.lower()))
        return len(ta & tb) / len(ta | tb) if ta | tb else 0.0
    if isinstance(a, dict) and isinstance(b, dict):
        return structured_similarity(a, b)
    if isinstance(a, list) and isinstance(b, list):
        if not a and not b:
            return 1.0
        return structured_similarity({str(i): v for i, v in enumerate(a)}, {str(i): v for i, v in enumerate(b)})
    return 0.0


def structured_similarity(a: dict, b: dict) -> float:
    """Mean per-key similarity over the union of keys (a missing key scores 0)."""
    keys = set(a) | set(b)
    if not keys:
        return 1.0
    return sum(_value_similarity(a[k], b[k]) if k in a and k in b else 0.0 for k in keys) / len(keys)


class RetrievalIndex:
    """Cached calls of one tool; ``nearest`` returns (payload, similarity) of the best match."""

    k1, b = 1.2, 0.75

    def __init__(self, arguments: list[dict], payloads: list[Any], candidates: int = 8):
        self.arguments = arguments
        self.payloads = payloads
        self.candidates = candidates
        vocab: dict[str, int] = {}
        rows, cols, vals = [], [], []
        lengths = []
        for i, args in enumerate(arguments):
            counts = Counter(tokens(args))
            lengths.append(sum(counts.values()))
            for tok, c in counts.items():
                rows.append(i)
                cols.append(vocab.setdefault(tok, len(vocab)))
                vals.append(c)
        self.vocab = vocab
        n = len(arguments)
        tf = sparse.csr_matrix((np.asarray(vals, dtype=np.float32), (rows, cols)), shape=(n, max(len(vocab), 1)))
        df = np.bincount(np.asarray(cols, dtype=np.int64), minlength=max(len(vocab), 1)).astype(np.float32)
        idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        lengths = np.asarray(lengths, dtype=np.float32)
        avg = float(lengths.mean()) if n else 1.0
        # BM25 weight of every (call, token) cell, precomputed: a query only sums columns
        tf = tf.tocoo()
        norm = self.k1 * (1 - self.b + self.b * lengths[tf.row] / max(avg, 1e-9))
        weights = idf[tf.col] * tf.data * (self.k1 + 1) / (tf.data + norm)
        self.matrix = sparse.csc_matrix((weights, (tf.row, tf.col)), shape=tf.shape)

    def __len__(self) -> int:
        return len(self.arguments)

    def nearest(self, args: dict) -> tuple[Any, float] | None:
        if not self.arguments:
            return None
        cols = sorted({self.vocab[t] for t in tokens(args) if t in self.vocab})
        if cols:
            scores = np.asarray(self.matrix[:, cols].sum(axis=1)).ravel()
            k = min(self.candidates, len(scores))
            top = np.argpartition(-scores, k - 1)[:k]
            top = [int(i) for i in top if scores[i] > 0] or [int(top[0])]
        else:
            top = list(range(min(self.candidates, len(self.arguments))))
        best = max(top, key=lambda i: (structured_similarity(args, self.arguments[i]), -i))
        return self.payloads[best], round(structured_similarity(args, self.arguments[best]), 3)


def args_of(canonical: str) -> dict:
    try:
        value = json.loads(canonical)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
