"""Lexical matching in pure Python: word tokens and a small deterministic BM25.

Used by the ``lookup`` evaluation policy to rank a task's offered tools by their name and
description against the question, the way a retriever without any learned model would. Pure
Python and dependency-free so its scores are the same on every machine; a tie keeps the
documents' order, so a ranking never depends on hashing.

    >>> words("Convert volumeUnits: 250 cups to file_name.txt")
    ['convert', 'volume', 'units', '250', 'cups', 'to', 'file', 'name', 'txt']
    >>> bm = BM25([words("list the branches of a git repository"), words("convert volume between units")])
    >>> bm.rank(words("how many branches does the repository have"))
    [0, 1]
    >>> bm.score(words("convert 250 cups"), 1) > 0, bm.score(words("convert 250 cups"), 0)
    (True, 0)
"""

from __future__ import annotations

import math
import re
from collections import Counter

_WORD = re.compile(r"[A-Za-z]+|\d+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def words(text: str) -> list[str]:
    """Lower-case word tokens, camelCase and snake_case split, so a tool name reads as its words."""
    return [w.lower() for w in _WORD.findall(_CAMEL.sub(" ", text or ""))]


def stem(word: str) -> str:
    """A crude plural strip (``cups`` -> ``cup``, ``branches`` -> ``branch``), enough to meet a name's
    singular in a question's plural.

    >>> [stem(w) for w in ("cups", "branches", "status", "is", "files")]
    ['cup', 'branch', 'status', 'is', 'file']
    """
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


class BM25:
    """Okapi BM25 over tokenised documents (``k1`` 1.2, ``b`` 0.75; idf ``log(1 + (N - df + .5)/(df + .5))``,
    never negative). Tokens are stemmed with :func:`stem` on both sides."""

    k1, b = 1.2, 0.75

    def __init__(self, documents: list[list[str]]):
        self.docs = [Counter(stem(w) for w in doc) for doc in documents]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg = (sum(self.lengths) / len(self.docs)) if self.docs else 1.0
        df = Counter(w for d in self.docs for w in d)
        n = len(self.docs)
        self.idf = {w: math.log(1.0 + (n - c + 0.5) / (c + 0.5)) for w, c in df.items()}
        self.norms = [self.k1 * (1 - self.b + self.b * length / max(self.avg, 1e-9)) for length in self.lengths]
        self.postings: dict[str, list[int]] = {}   # term -> the documents holding it, in order
        for i, doc in enumerate(self.docs):
            for w in doc:
                self.postings.setdefault(w, []).append(i)

    def _term(self, w: str, i: int) -> float:
        tf = self.docs[i][w]
        return self.idf[w] * tf * (self.k1 + 1) / (tf + self.norms[i])

    def score(self, query: list[str], index: int) -> float:
        doc = self.docs[index]
        return sum(self._term(w, index) for w in dict.fromkeys(stem(q) for q in query) if w in doc)

    def scores(self, query: list[str]) -> list[float]:
        """Every document's :meth:`score`, the query stemmed once and only the documents holding one of
        its terms visited (the same sums, term by term in query order)."""
        out = [0.0] * len(self.docs)
        for w in dict.fromkeys(stem(q) for q in query):
            for i in self.postings.get(w, ()):
                out[i] += self._term(w, i)
        return out

    def rank(self, query: list[str]) -> list[int]:
        """Document indices, best first; equal scores keep the documents' order."""
        scores = self.scores(query)
        return sorted(range(len(self.docs)), key=lambda i: -scores[i])
