"""Stage 2, graph: a directed tool graph, edge A->B when A's output can plausibly feed B's input.

Evidence per ordered pair, each a config choice with a weight (``conf/graph``):
- ``flow``: data-flow compatibility: an output field of A (declared output schema, else the schema
  inferred from observed results, else the whole text result ``*``) whose name, type or value
  pattern (path, url, email, date, id) matches an input parameter of B;
- ``similarity``: cosine similarity of the two tools' descriptions, embedded offline with
  all-MiniLM-L6-v2 (``embeddings.py``: short sequences, length-sorted batches, optional int8, a
  cache by content hash);
- ``lm_judge`` (only when an LM is configured): the DSPy program ``programs.edge_judge`` re-judges
  the ``max_pairs`` highest-ranked candidates (batched, cached by content hash) and sets their
  confidence and field mapping;
- ``observed``: pairs along which an earlier exploration (``graph.observed_from``) really passed a
  value are confirmed (confidence high, the mapping it used).

With ``coherence_threshold`` set, a flow mapping (field F of A -> parameter P of B) is kept only when F
and P mean the same kind of thing: the MiniLM cosine of "F's key: A's description" and "P's name: P's
description. B's description" (:func:`coherence`) reaches the threshold; name and type alone would pass
a table's column name into a git branch name.

Scoring is vectorised: every distinct output field and input parameter becomes a key, the key-pair
score matrix is built from sparse token matrices, and the tool-pair flow score is a max-reduction of
it, computed in row blocks together with the similarity and a top-k per source (``argpartition``).
``flow_score`` is the same score for one pair (the reference the tests compare against).

Writes ``edges.parquet`` (source, target, score, flow, similarity, confidence, evidence, mapping,
cross_server, observed), ``nodes.parquet`` (tool, server, domain; ``probe_ok``: its probe call succeeded;
``answers``: the probe found a value a task could ask for; both null without a probe), ``graph.png``, ``report.json`` and,
when observations were given, ``inferred_schemas.parquet``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import polars as pl

from . import servers
from .answers import answer_fields
from .schemas import declared_schema, name_pattern
from .settings import ConfigError, GraphSettings, GraphThresholds
from .stage import RunContext, Stage, StageResult, with_lm_usage
from .store import write_json_atomic

FREE_TEXT_PARAMS = {"query", "text", "content", "contents", "expression", "observations", "input",
                    "sql", "value", "message", "body", "data", "description", "note", "search"}
GENERIC_TOKENS = {"name", "id", "type", "value"}
PATTERN_SCORE = 0.6      # an output whose values look like what a parameter wants (path -> path)
MIN_FLOW = 0.3           # a pair needs one parameter at least this well fed to map anything
_TYPES = ["string", "integer", "number", "boolean", "array", "object", "null"]
LEVELS = ("high", "medium", "low")


def _tokens(name: str) -> set[str]:
    name = re.sub(r"([a-z])([A-Z])", r"\1_\2", name)
    return {t for t in re.split(r"[^a-zA-Z0-9]+", name.lower()) if t}


def _first_type(typ) -> str:
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "string")
    return typ if isinstance(typ, str) else "string"


def output_fields(output_schema: dict | None, patterns: bool = False) -> list[tuple]:
    """(path, type) of every field an output schema declares; [('*', 'string')] when none.
    With ``patterns``, (path, type, value pattern) triples."""
    out: list[tuple] = []
    root_pat = (output_schema or {}).get("x-pattern") if isinstance(output_schema, dict) else None

    def add(path, typ, sub):
        out.append((path, typ, name_pattern(path.split(".")[-1], sub)) if patterns else (path, typ))

    def walk(schema: dict, prefix: str) -> None:
        props = schema.get("properties") or {}
        for key, sub in props.items():
            path = f"{prefix}.{key}" if prefix else key
            typ = _first_type(sub.get("type", "string")) if isinstance(sub, dict) else "string"
            add(path, typ, sub)
            if isinstance(sub, dict):
                if typ == "object":
                    walk(sub, path)
                elif typ == "array" and isinstance(sub.get("items"), dict):
                    walk(sub["items"], path + ".0")

    if output_schema:
        walk(output_schema, "")
        if not out and output_schema.get("type") == "array" and isinstance(output_schema.get("items"), dict):
            walk(output_schema["items"], "0")
    if not out:
        return [("*", "string", root_pat)] if patterns else [("*", "string")]
    return out


def input_params(input_schema: dict, patterns: bool = False) -> list[tuple]:
    """(name, type, required) per parameter; with ``patterns`` (name, type, required, pattern)."""
    required = set(input_schema.get("required") or [])
    out = []
    for name, sub in (input_schema.get("properties") or {}).items():
        typ = _first_type(sub.get("type", "string")) if isinstance(sub, dict) else "string"
        out.append((name, typ, name in required, name_pattern(name, sub)) if patterns else
                   (name, typ, name in required))
    return out


def _types_fit(out_type: str, in_type: str) -> bool:
    numeric = {"integer", "number"}
    return out_type == in_type or (out_type in numeric and in_type in numeric) or \
        (in_type == "string" and out_type in numeric)


def key_score(field: tuple, param: tuple) -> float:
    """How well one output field ``(name, type, value pattern)`` feeds one input parameter ``(name, type,
    required, value pattern)`` (a field named '*' = the whole text result).

    >>> key_score(("path", "string", None), ("path", "string", True, None))
    1.0
    >>> key_score(("*", "string", "path"), ("file", "string", False, "path"))   # a path-valued text result
    0.48
    """
    fname, ftype, fpat = field
    pname, ptype, required, ppat = param
    ptoks = _tokens(pname)
    if fname == "*":
        s = 0.35 if (ptoks & FREE_TEXT_PARAMS and ptype == "string") else 0.1 if ptype == "string" else 0.0
    else:
        ftoks = _tokens(fname)
        if fname.lower() == pname.lower():
            s = 1.0
        elif ftoks and ptoks and len(ftoks & ptoks) / len(ftoks | ptoks) >= 0.5:
            s = 0.75
        elif ftoks & (ptoks - GENERIC_TOKENS):
            s = 0.5
        else:
            s = 0.0
        if s and not _types_fit(ftype, ptype):
            s *= 0.5
    if fpat and fpat == ppat and fpat != "number":
        s = max(s, PATTERN_SCORE)
    return round(s * (1.0 if required else 0.8), 6)


def flow_score(outputs: list[tuple], params: list[tuple]) -> tuple[float, dict]:
    """Best match of A's output fields against B's parameters, and the field mapping
    ``{input parameter: output path}`` ('*' for the whole text result); patterns optional."""
    mapping: dict[str, str] = {}
    best = 0.0
    for p in params:
        pname, ptype, required = p[0], p[1], p[2]
        ppat = p[3] if len(p) > 3 else None
        p_best, p_field = 0.0, None
        for f in outputs:
            fpath, ftype = f[0], f[1]
            fpat = f[2] if len(f) > 2 else None
            s = key_score((fpath.split(".")[-1] if fpath != "*" else "*", ftype, fpat), (pname, ptype, required, ppat))
            if s > p_best:
                p_best, p_field = s, fpath
        if p_field is not None and p_best >= MIN_FLOW:
            mapping[pname] = p_field
        best = max(best, p_best)
    return best, mapping


def confidence_level(score: float, thresholds: GraphThresholds) -> str | None:
    for level in LEVELS:
        if score >= getattr(thresholds, level):
            return level
    return None


def tool_text(row: dict) -> str:
    """What is embedded per tool (one text per tool, so 10,000 tools are 10,000 texts)."""
    return f"{row['name'].replace('_', ' ')}: {row['description']}"


def _words(key: str) -> str:
    """A field or parameter key as words: ``tableName`` / ``table_name`` -> ``table name``."""
    return " ".join(sorted(_tokens(key), key=lambda t: key.lower().find(t))) or key


def field_text(path: str, row: dict) -> str:
    """What is embedded for output field ``path`` of tool ``row``: its key and the tool's description.

    >>> field_text("rows.0.tableName", {"description": "List all tables"})
    'table name: List all tables'
    """
    key = "result" if path in ("*", "") else path.split(".")[-1]
    return f"{_words(key)}: {row['description']}"


def param_text(name: str, row: dict) -> str:
    """What is embedded for parameter ``name`` of tool ``row``: its name, its description (or title)
    and the tool's description.

    >>> row = {"description": "Creates a branch",
    ...        "input_schema": '{"properties": {"branch_name": {"title": "Branch Name"}}}'}
    >>> param_text("branch_name", row), param_text("repo", row)
    ('branch name: Branch Name. Creates a branch', 'repo: Creates a branch')
    """
    prop = (json.loads(row["input_schema"]).get("properties") or {}).get(name)
    about = (prop if isinstance(prop, dict) else {}).get("description") or (prop or {}).get("title")
    return f"{_words(name)}: {about}. {row['description']}" if about else f"{_words(name)}: {row['description']}"


def coherence(candidates: list[dict], rows: list[dict], settings: GraphSettings,
              cache_dir: Path | None = None) -> dict[tuple[str, str, str], float]:
    """(source, target, parameter) -> cosine of :func:`field_text` of the mapped field and
    :func:`param_text` of the parameter, for every mapping of ``candidates``; each distinct text is
    embedded once, in one batch (the offline MiniLM model of ``embeddings.py``)."""
    from .embeddings import embed

    by_tool = {r["tool"]: r for r in rows}
    pairs = [(e["source"], e["target"], p, field_text(path, by_tool[e["source"]]), param_text(p, by_tool[e["target"]]))
             for e in candidates for p, path in sorted(e["mapping"].items())]
    texts = sorted({t for *_, a, b in pairs for t in (a, b)})
    emb = settings.embedding
    vecs = embed(texts, batch_size=emb.batch_size, max_seq_length=emb.max_seq_length, quantize=emb.quantize,
                 cache_dir=cache_dir)
    index = {t: i for i, t in enumerate(texts)}
    return {(src, tgt, p): round(float(vecs[index[a]] @ vecs[index[b]]), 4) for src, tgt, p, a, b in pairs}


def _drop_incoherent(candidates: list[dict], rows: list[dict], settings: GraphSettings,
                     cache_dir: Path | None) -> tuple[list[dict], int, int]:
    """With ``coherence_threshold`` set, the flow mappings whose :func:`coherence` is below it go, and
    an edge whose mapping they emptied goes too. Returns (kept, mappings dropped, edges dropped)."""
    threshold = settings.coherence_threshold
    if threshold is None:
        return candidates, 0, 0
    cosine = coherence(candidates, rows, settings, cache_dir)
    kept, n_maps, n_edges = [], 0, 0
    for e in candidates:
        mapping = {p: path for p, path in e["mapping"].items() if cosine[(e["source"], e["target"], p)] >= threshold}
        n_maps += len(e["mapping"]) - len(mapping)
        if e["mapping"] and not mapping:
            n_edges += 1
            continue
        e["mapping"] = mapping
        kept.append(e)
    return kept, n_maps, n_edges


def _output_schema(row: dict, inferred: dict) -> dict | None:
    """The declared output schema, else (none, or an open one: :func:`schemas.open_schema`) the inferred one."""
    return declared_schema(row.get("output_schema")) or inferred.get(row["tool"])


class _Keys:
    """Distinct output fields and input parameters of a catalog, and which tools have which."""

    def __init__(self, outs: list[list[tuple]], ins: list[list[tuple]]):
        self.out_index: dict[tuple, int] = {}
        self.in_index: dict[tuple, int] = {}
        self.tool_out = [sorted({self.out_index.setdefault((f[0].split(".")[-1] if f[0] != "*" else "*", f[1], f[2]),
                                                           len(self.out_index)) for f in fs}) for fs in outs]
        self.tool_in = [sorted({self.in_index.setdefault((p[0], p[1], bool(p[2]), p[3]), len(self.in_index))
                                for p in ps}) for ps in ins]

    def score_matrix(self) -> np.ndarray:
        """``S[f, p]`` = key_score of output key f and parameter key p, vectorised; one extra zero column."""
        from scipy import sparse

        fkeys, pkeys = list(self.out_index), list(self.in_index)
        vocab: dict[str, int] = {}

        def incidence(names: list[str], drop: set[str] = frozenset()):
            rows, cols = [], []
            for r, name in enumerate(names):
                for t in _tokens(name) - drop if name != "*" else ():
                    rows.append(r)
                    cols.append(vocab.setdefault(t, len(vocab)))
            return rows, cols

        fr, fc = incidence([k[0] for k in fkeys])
        pr, pc = incidence([k[0] for k in pkeys])
        gr, gc = incidence([k[0] for k in pkeys], GENERIC_TOKENS)
        V = len(vocab) or 1

        def mat(r, c, n):
            return sparse.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n, V))

        F, P, G = mat(fr, fc, len(fkeys)), mat(pr, pc, len(pkeys)), mat(gr, gc, len(pkeys))
        inter = (F @ P.T).toarray()
        inter_ng = (F @ G.T).toarray() > 0
        nf, npar = np.asarray(F.sum(1)).ravel(), np.asarray(P.sum(1)).ravel()
        union = nf[:, None] + npar[None, :] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            jacc = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        names_lower = {}
        fid = np.array([names_lower.setdefault(k[0].lower(), len(names_lower)) for k in fkeys])
        pid = np.array([names_lower.setdefault(k[0].lower(), len(names_lower)) for k in pkeys])
        exact = fid[:, None] == pid[None, :]
        base = np.select([exact, jacc >= 0.5, inter_ng], [1.0, 0.75, 0.5], 0.0)
        t_index = {t: i for i, t in enumerate(_TYPES)}
        ft = np.array([t_index.get(k[1], 0) for k in fkeys])
        pt = np.array([t_index.get(k[1], 0) for k in pkeys])
        fit_table = np.array([[_types_fit(a, b) for b in _TYPES] for a in _TYPES])
        base = np.where(fit_table[ft[:, None], pt[None, :]], base, base * 0.5)
        star = np.array([k[0] == "*" for k in fkeys])
        if star.any():
            p_string = pt == t_index["string"]
            p_free = np.array([bool(_tokens(k[0]) & FREE_TEXT_PARAMS) for k in pkeys])
            base[star] = np.where(p_string, np.where(p_free, 0.35, 0.1), 0.0)[None, :]
        pats = {p: i + 1 for i, p in enumerate(["path", "url", "email", "date", "id"])}
        fp = np.array([pats.get(k[2], 0) for k in fkeys])
        pp = np.array([pats.get(k[3], -1) for k in pkeys])
        base = np.where(fp[:, None] == pp[None, :], np.maximum(base, PATTERN_SCORE), base)
        req = np.array([1.0 if k[2] else 0.8 for k in pkeys])
        S = np.zeros((len(fkeys), len(pkeys) + 1), dtype=np.float32)
        S[:, :-1] = np.round(base * req[None, :], 6)
        return S


def flow_matrix_rows(keys: _Keys, S: np.ndarray, rows: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """Flow scores of the source tools ``rows`` against every tool (max over parameter keys)."""
    dummy = S.shape[1] - 1
    p_lists = [k if k else [dummy] for k in keys.tool_in]
    p_flat = np.fromiter((p for k in p_lists for p in k), dtype=np.int64)
    p_off = np.cumsum([0] + [len(k) for k in p_lists[:-1]])
    return np.maximum.reduceat(t1[rows][:, p_flat], p_off, axis=1)


def _t1(keys: _Keys, S: np.ndarray, block: int = 2048) -> np.ndarray:
    """``T1[i, p]``: the best any output field of tool i scores against parameter key p."""
    n = len(keys.tool_out)
    out = np.zeros((n, S.shape[1]), dtype=np.float32)
    for start in range(0, n, block):
        lists = keys.tool_out[start:start + block]
        flat = np.fromiter((f for k in lists for f in k), dtype=np.int64)
        off = np.cumsum([0] + [len(k) for k in lists[:-1]])
        out[start:start + len(lists)] = np.maximum.reduceat(S[flat], off, axis=0)
    return out


class _PairScorer:
    """Everything the block loop of :func:`score_pairs` shares: the tools' fields and parameters, the
    key-pair score matrix, the embeddings, and a memo of field mappings by schema signature."""

    def __init__(self, rows: list[dict], settings: GraphSettings, inferred: dict, cache_dir: Path | None):
        self.rows, self.n, self.settings = rows, len(rows), settings
        self.outs = [output_fields(_output_schema(r, inferred), patterns=True) for r in rows]
        self.ins = [input_params(json.loads(r["input_schema"]), patterns=True) for r in rows]
        self.wf, self.ws = settings.weights.flow, settings.weights.similarity
        self.vecs = None
        if self.ws > 0:
            from .embeddings import embed

            e = settings.embedding
            self.vecs = embed([tool_text(r) for r in rows], batch_size=e.batch_size, max_seq_length=e.max_seq_length,
                              quantize=e.quantize, cache_dir=cache_dir)
        self.keys = _Keys(self.outs, self.ins)
        self.S = self.keys.score_matrix()
        self.t1 = _t1(self.keys, self.S)
        self.has_params = np.array([bool(p) for p in self.ins])
        self.mapping_memo: dict[tuple, tuple[float, dict]] = {}
        self.sig_out = [json.dumps(o) for o in self.outs]
        self.sig_in = [json.dumps(i) for i in self.ins]

    def block(self, idx: np.ndarray) -> list[dict]:
        """The candidate edges of the source tools ``idx``: per source its best ``max_out_degree`` targets."""
        n, max_out_degree = self.n, self.settings.max_out_degree
        flow = flow_matrix_rows(self.keys, self.S, idx, self.t1)
        sim = np.clip(self.vecs[idx] @ self.vecs.T, 0.0, 1.0) if self.vecs is not None else np.zeros_like(flow)
        score = (self.wf * flow + self.ws * sim) / max(self.wf + self.ws, 1e-9)
        valid = (flow >= MIN_FLOW) & self.has_params[None, :] & (score >= float(self.settings.thresholds.low))
        valid[np.arange(len(idx)), idx] = False
        masked = np.where(valid, score, -1.0)
        k = min(max_out_degree, n)
        top = np.argpartition(-masked, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(idx), 1))
        out = []
        for r, i in enumerate(idx):
            js = [j for j in top[r] if masked[r, j] >= 0]
            js.sort(key=lambda j: (-masked[r, j], self.rows[j]["tool"]))
            out.extend(self._edge(i, j, score[r, j], flow[r, j], sim[r, j]) for j in js[:max_out_degree])
        return out

    def _edge(self, i: int, j: int, score: float, flow: float, sim: float) -> dict:
        memo = (self.sig_out[i], self.sig_in[j])
        if memo not in self.mapping_memo:
            self.mapping_memo[memo] = flow_score(self.outs[i], self.ins[j])
        _, mapping = self.mapping_memo[memo]
        return {"source": self.rows[i]["tool"], "target": self.rows[j]["tool"],
                "score": round(float(score), 4), "flow": round(float(flow), 4),
                "similarity": round(float(sim), 4), "mapping": mapping,
                "evidence": [e for e, on in (("flow", self.wf > 0), ("similarity", self.ws > 0)) if on]}


def score_pairs(rows: list[dict], settings: GraphSettings, inferred: dict | None = None,
                cache_dir: Path | None = None, block: int = 512) -> list[dict]:
    """Candidate edges: per source, the best ``max_out_degree`` targets at or above ``thresholds.low``
    (embeddings cached under ``cache_dir`` when given)."""
    if not rows:
        return []
    scorer = _PairScorer(rows, settings, inferred or {}, cache_dir)
    candidates = [e for start in range(0, len(rows), block)
                  for e in scorer.block(np.arange(start, min(start + block, len(rows))))]
    for e in candidates:
        e["confidence"] = confidence_level(e["score"], settings.thresholds)
    return candidates


@dataclass(frozen=True)
class GraphInputs:
    """What the graph may learn from besides the catalog, each optional.

    ``probe_calls``: each tool called once on a seeded sandbox (the probe stage): inferred output
    schemas and, with ``hints`` (catalog values known valid per tool and parameter) and
    ``weights.value`` > 0, value evidence: A -> B when a probed result of A holds a value valid for
    a parameter of B (mapping: that parameter <- the path where A returned it); with
    ``drop_echoes``, the echoes that drop mappings (:func:`echo_paths`). ``observed_calls``: the calls
    of an earlier exploration: inferred output schemas (``infer_schemas``) and, with
    ``weights.observed`` > 0, confirmed edges. ``lm``: the LM judge's model (``lm_judge.enabled``).
    ``cache_dir``: where embeddings and LM verdicts are cached by content hash.
    """

    probe_calls: list[dict] | None = None
    hints: dict[str, dict[str, list]] | None = None
    observed_calls: list[dict] | None = None
    lm: Any = None
    cache_dir: Path | None = None


def build_graph(tools: pl.DataFrame, settings: GraphSettings, out_dir: Path, inputs: GraphInputs | None = None) -> dict:
    """Score every ordered pair of tools, keep the edges, save them; returns the stage metrics.

    The cheap evidence (flow, similarity) proposes candidates (:func:`score_pairs`); the LM judge,
    observed flow and probed values (``inputs``, :class:`GraphInputs`) confirm, re-rate or add
    them; a mapping from a result field where A's probe only echoed one of its own arguments passes
    on nothing the caller did not already give A: such entries are dropped (``drop_echoes``), and
    an edge left without a mapping with them."""
    inputs = inputs or GraphInputs()
    out_dir = Path(out_dir)
    rows = tools.sort("tool").to_dicts()
    known = {r["tool"] for r in rows}
    inferred = _inferred_schemas(rows, settings, inputs, out_dir)
    candidates = score_pairs(rows, settings, inferred, inputs.cache_dir)
    candidates, n_incoherent, n_incoherent_edges = _drop_incoherent(candidates, rows, settings, inputs.cache_dir)
    for e in candidates:
        e["cheap_confidence"] = e["confidence"]
    candidates, judged, agreement = _judge(candidates, rows, settings, inputs)
    edges = _Edges(candidates, settings.thresholds)
    n_observed = _add_observed(edges, inputs.observed_calls, known, settings, agreement)
    n_value = _add_values(edges, inputs, known, settings)
    candidates, n_echo = edges.candidates, 0
    if inputs.probe_calls and settings.drop_echoes:
        candidates, n_echo = _drop_echoes(candidates, inputs.probe_calls)
    graph, frame = _save_edges(rows, candidates, out_dir)
    answering, answered = _save_nodes(rows, inputs.probe_calls, out_dir)
    plot_graph(graph, out_dir / "graph.png")
    metrics = graph_report(frame, len(rows), graph)
    metrics.update({"lm_judged": judged, "observed_pairs": n_observed, "value_pairs": n_value,
                    "echo_edges_dropped": n_echo,
                    "answering_tools": None if answering is None else len(answering),
                    "probe_failed_tools": None if answered is None else len(rows) - len(answered & known),
                    "inferred_schemas": len(inferred),
                    **{f"agreement.{k}": v for k, v in agreement.items()}})
    if settings.coherence_threshold is not None:
        metrics.update(incoherent_mappings_dropped=n_incoherent, incoherent_edges_dropped=n_incoherent_edges)
    write_json_atomic(out_dir / "report.json", metrics)
    return metrics


def _inferred_schemas(rows: list[dict], settings: GraphSettings, inputs: GraphInputs, out_dir: Path) -> dict:
    """Output schemas inferred from the probed and observed results of tools that declare none
    (``inferred_schemas.parquet``)."""
    from .schemas import infer_output_schemas

    seen_calls = list(inputs.probe_calls or []) + list(inputs.observed_calls or [])
    if not (seen_calls and settings.infer_schemas):
        return {}
    inferred = infer_output_schemas(seen_calls, {r["tool"] for r in rows if declared_schema(r.get("output_schema")) is None})
    pl.DataFrame([{"tool": t, "inferred_output_schema": json.dumps(s, sort_keys=True),
                   "observed": s.get("x-observed", 0)} for t, s in inferred.items()],
                 schema={"tool": pl.Utf8, "inferred_output_schema": pl.Utf8, "observed": pl.Int64}
                 ).write_parquet(out_dir / "inferred_schemas.parquet")
    return inferred


def _judge(candidates: list[dict], rows: list[dict], settings: GraphSettings,
           inputs: GraphInputs) -> tuple[list[dict], int, dict]:
    """With an LM (``lm_judge.enabled``): the ``max_pairs`` best candidates re-judged, their confidence
    and mapping the LM's; candidates it rated ``none`` go. Returns (candidates, judged, agreement)."""
    judge = settings.lm_judge
    if inputs.lm is None or not judge.enabled:
        return candidates, 0, {}
    from programs.edge_judge import judge_edges

    by_tool = {r["tool"]: r for r in rows}
    top = sorted(candidates, key=lambda e: (-e["score"], e["source"], e["target"]))[: int(judge.max_pairs)]
    verdicts = judge_edges(top, by_tool, inputs.lm, cache_dir=inputs.cache_dir, num_threads=int(judge.num_threads))
    judged = 0
    for edge, verdict in zip(top, verdicts):
        if verdict is None:
            continue
        judged += 1
        edge["lm_confidence"] = verdict["confidence"]
        edge["confidence"] = verdict["confidence"] if verdict["confidence"] != "none" else None
        edge["mapping"] = verdict["mapping"] or edge["mapping"]
        edge["evidence"] = edge["evidence"] + ["lm_judge"]
    agreement = _agreement([e for e in top if "lm_confidence" in e], "lm", settings.thresholds)
    return [e for e in candidates if e["confidence"]], judged, agreement


class _Edges:
    """The candidate edges by pair, which stronger evidence confirms or adds to."""

    def __init__(self, candidates: list[dict], thresholds: GraphThresholds):
        self.candidates, self.thresholds = candidates, thresholds
        self.by_pair = {(e["source"], e["target"]): e for e in candidates}

    def confirm(self, src: str, tgt: str, level: str, mapping: dict, evidence: str) -> dict:
        """Raise (or add) the edge src -> tgt to ``level`` with ``mapping`` on top of the cheap one."""
        e = self.by_pair.get((src, tgt))
        if e is None:
            e = {"source": src, "target": tgt, "score": 0.0, "flow": 0.0, "similarity": 0.0,
                 "mapping": {}, "evidence": [], "cheap_confidence": None}
            self.candidates.append(e)
            self.by_pair[(src, tgt)] = e
        if e.get("confidence") != "high":
            e["confidence"] = level
        e["score"] = max(e["score"], float(getattr(self.thresholds, level)))
        e["mapping"] = {**e["mapping"], **mapping}
        e["evidence"] = e["evidence"] + [evidence]
        return e


def _add_observed(edges: _Edges, calls: list[dict] | None, known: set[str], settings: GraphSettings,
                  agreement: dict) -> int:
    """Pairs an earlier exploration passed a value along: confirmed, high (``weights.observed`` > 0)."""
    from .observed import observed_flow

    if not calls or not settings.weights.observed > 0:
        return 0
    n = 0
    flows = observed_flow(calls)
    for (src, tgt), ob in sorted(flows.items()):
        if src in known and tgt in known and src != tgt:
            n += 1
            edges.confirm(src, tgt, "high", ob["mapping"], "observed")["observed"] = ob["n"]
    agreement.update(_observed_agreement(flows, edges.candidates, known))
    return n


def _add_values(edges: _Edges, inputs: GraphInputs, known: set[str], settings: GraphSettings) -> int:
    """Pairs whose probed source returned a value hinted valid for the target (``weights.value`` > 0:
    high at 1 or more, else medium)."""
    if not (inputs.probe_calls and inputs.hints and settings.weights.value > 0):
        return 0
    level = "high" if settings.weights.value >= 1 else "medium"
    n = 0
    for (src, tgt), mapping in sorted(value_matches(inputs.probe_calls, inputs.hints).items()):
        if src in known and tgt in known:
            n += 1
            edges.confirm(src, tgt, level, mapping, "value")
    return n


def _drop_echoes(candidates: list[dict], probe_calls: list[dict]) -> tuple[list[dict], int]:
    """Mapping entries from a result path where the source's probe echoed its own argument go; an edge
    whose mapping they emptied goes too. Returns (kept, edges dropped)."""
    echoes = echo_paths(probe_calls)
    kept, dropped = [], 0
    for e in candidates:
        echoed = echoes.get(e["source"], set())
        mapping = {p: path for p, path in e["mapping"].items() if generic_path(path) not in echoed}
        if e["mapping"] and not mapping:
            dropped += 1
            continue
        e["mapping"] = mapping
        kept.append(e)
    return kept, dropped


def _save_edges(rows: list[dict], candidates: list[dict], out_dir: Path) -> tuple[nx.DiGraph, pl.DataFrame]:
    """The graph (mappings as JSON) and ``edges.parquet``."""
    graph = nx.DiGraph()
    for r in rows:
        graph.add_node(r["tool"], server=r["server"], domain=r["domain"])
    for e in candidates:
        graph.add_edge(e["source"], e["target"], score=e["score"], confidence=e["confidence"],
                       mapping=json.dumps(e["mapping"]))
    frame = pl.DataFrame(
        [{"source": e["source"], "target": e["target"], "score": e["score"], "flow": e["flow"],
          "similarity": e["similarity"], "confidence": e["confidence"], "evidence": ",".join(e["evidence"]),
          "mapping": json.dumps(e["mapping"], sort_keys=True), "observed": int(e.get("observed", 0)),
          "cross_server": e["source"].split("/")[0] != e["target"].split("/")[0]} for e in candidates],
        schema={"source": pl.Utf8, "target": pl.Utf8, "score": pl.Float64, "flow": pl.Float64,
                "similarity": pl.Float64, "confidence": pl.Utf8, "evidence": pl.Utf8, "mapping": pl.Utf8,
                "observed": pl.Int64, "cross_server": pl.Boolean})
    frame.write_parquet(out_dir / "edges.parquet")
    return graph, frame


def _save_nodes(rows: list[dict], probe_calls: list[dict] | None,
                out_dir: Path) -> tuple[set[str] | None, set[str] | None]:
    """``nodes.parquet``; returns the tools whose probe held answer material and those it answered
    (both None without a probe)."""
    answering = answering_tools(probe_calls, rows) if probe_calls else None
    # a tool whose probe call failed (seeded state, hinted arguments) works only when a DAG feeds it
    answered = ({f"{c['server']}/{c['tool']}" for c in probe_calls if not c["is_error"]}
                if probe_calls else None)
    pl.DataFrame([{"tool": r["tool"], "server": r["server"], "domain": r["domain"],
                   "answers": None if answering is None else r["tool"] in answering,
                   "probe_ok": None if answered is None else r["tool"] in answered} for r in rows],
                 schema={"tool": pl.Utf8, "server": pl.Utf8, "domain": pl.Utf8, "answers": pl.Boolean,
                         "probe_ok": pl.Boolean}
                 ).write_parquet(out_dir / "nodes.parquet")
    return answering, answered


def generic_path(path: str) -> str:
    """A result path with every array index as 0 (``rows.3.name`` -> ``rows.0.name``), as mappings name
    it; the whole result (``""`` or ``*``) as ``*``.

    >>> generic_path("rows.3.name"), generic_path(""), generic_path("v2.x")
    ('rows.0.name', '*', 'v2.x')
    """
    return "*" if path in ("", "*") else re.sub(r"(?<![^.])\d+(?![^.])", "0", path)


def echo_paths(probe_calls: list[dict]) -> dict[str, set[str]]:
    """Per tool, the result paths (:func:`generic_path`; ``*`` for the whole result) where its probe
    returned one of its own arguments: under the argument's own name, or a string of 3+ characters
    (``{"n": 97}`` -> ``{"n": 97, ...}``; a commit message echoed back). Passing such a value on is
    no data flow: the caller had it already.

    >>> calls = [{"server": "m", "tool": "farey", "is_error": False, "arguments": {"n": 97, "k": 1},
    ...           "content": [{"type": "text", "text": '{"n": 97, "count": 1, "terms": [{"k": 1}]}'}]},
    ...          {"server": "g", "tool": "commit", "is_error": False, "arguments": {"message": "Add notes"},
    ...           "content": [{"type": "text", "text": "Add notes"}]}]
    >>> sorted((t, sorted(p)) for t, p in echo_paths(calls).items())
    [('g/commit', ['*']), ('m/farey', ['n', 'terms.0.k'])]
    """
    from .results import leaves, value_of

    def norm(v):
        return json.dumps(v.strip() if isinstance(v, str) else v, default=str)

    out: dict[str, set[str]] = {}
    for c in probe_calls:
        if c["is_error"]:
            continue
        given = [(p.split(".")[-1], v) for p, v in leaves(c["arguments"] or {}) if not isinstance(v, (dict, list))]
        named = {(k, norm(v)) for k, v in given}
        texts = {norm(v) for _, v in given if isinstance(v, str) and len(v.strip()) >= 3}
        value = value_of(c)
        paths = out.setdefault(f"{c['server']}/{c['tool']}", set())
        if not isinstance(value, (dict, list)):
            if value is not None and norm(value) in texts | {v for _, v in named}:
                paths.add("*")
            continue
        for p, v in leaves(value):
            if isinstance(v, (dict, list)) or v is None or isinstance(v, bool):
                continue
            if (p.split(".")[-1], norm(v)) in named or norm(v) in texts:
                paths.add(generic_path(p))
    return out


def answering_tools(probe_calls: list[dict], rows: list[dict]) -> set[str]:
    """Tools whose probe result held a value a task could ask for (``answers.answer_fields``: not an
    error, not volatile, a short scalar that is not an echo of the arguments). A sub-DAG that ends only
    in other tools can give no task (``sampler.answer_sink``)."""
    volatile = {r["tool"]: bool(r.get("volatile")) for r in rows}
    return {f"{c['server']}/{c['tool']}" for c in probe_calls
            if answer_fields(c, volatile.get(f"{c['server']}/{c['tool']}", False))}


def value_matches(calls: list[dict], hints: dict[str, dict[str, list]]) -> dict[tuple[str, str], dict]:
    """(source tool, target tool) -> {target parameter: path in the source's result} wherever a
    successful result of the source holds a string hinted as valid for the target's parameter.

    >>> calls = [{"server": "db", "tool": "list_tables", "is_error": False,
    ...           "content": [{"type": "text", "text": '[["customers"], ["orders"]]'}]}]
    >>> value_matches(calls, {"db/describe": {"table": ["orders", "x"]}, "db/list_tables": {"q": ["orders"]}})
    {('db/list_tables', 'db/describe'): {'table': '1.0'}}
    """
    from .results import leaves, value_of

    found: dict[str, dict[str, str]] = {}   # value -> {tool: first path where it returned it}
    for c in calls:
        if c.get("is_error"):
            continue
        tool = f"{c['server']}/{c['tool']}"
        for path, v in leaves(value_of(c)):
            if isinstance(v, str) and len(v.strip()) >= 3:
                found.setdefault(v.strip(), {}).setdefault(tool, path)
    out: dict[tuple[str, str], dict] = {}
    for target, params in sorted(hints.items()):
        for param, values in sorted(params.items()):
            for h in values:
                for source, path in sorted((found.get(h.strip()) or {}).items() if isinstance(h, str) else []):
                    if source != target:
                        out.setdefault((source, target), {}).setdefault(param, path)
    return out


def graph_report(frame: pl.DataFrame, n: int, graph: nx.DiGraph) -> dict:
    """Edge count, per confidence level, fraction of ordered pairs, intra- vs cross-server, start tools."""
    levels = {lvl: int((frame["confidence"] == lvl).sum()) if frame.height else 0 for lvl in LEVELS}
    cross = int(frame["cross_server"].sum()) if frame.height else 0
    confident_out = {u: sum(1 for _, _, d in graph.out_edges(u, data=True) if d["confidence"] in ("high", "medium"))
                     for u in graph.nodes}
    return {"tools": n, "edges": frame.height, **{f"edges_{k}": v for k, v in levels.items()},
            "pair_fraction": round(frame.height / max(n * (n - 1), 1), 4),
            "pair_fraction_medium_plus": round((levels["high"] + levels["medium"]) / max(n * (n - 1), 1), 4),
            "cross_server_edges": cross, "intra_server_edges": frame.height - cross,
            "start_tools": sum(1 for v in confident_out.values() if v >= 2)}


def _agreement(judged: list[dict], ref: str, thresholds: GraphThresholds) -> dict:
    """How often each cheap method's verdict (confident = medium or better) matches the LM judge's."""
    if not judged:
        return {}
    truth = np.array([e["lm_confidence"] in ("high", "medium") for e in judged])
    med = float(thresholds.medium)
    out = {}
    for name, pred in (("combined", [e["cheap_confidence"] in ("high", "medium") for e in judged]),
                       ("flow", [e["flow"] >= med for e in judged]),
                       ("similarity", [e["similarity"] >= med for e in judged])):
        out[f"{name}_vs_{ref}"] = round(float(np.mean(np.array(pred) == truth)), 4)
    return out


def _observed_agreement(flows: dict, candidates: list[dict], known: set) -> dict:
    """Of the pairs exploration confirmed, the fraction each cheap method had kept / rated confident."""
    pairs = [p for p in flows if p[0] in known and p[1] in known and p[0] != p[1]]
    if not pairs:
        return {}
    by_pair = {(e["source"], e["target"]): e for e in candidates}
    kept = [by_pair[p].get("cheap_confidence") is not None for p in pairs]
    confident = [by_pair[p].get("cheap_confidence") in ("high", "medium") for p in pairs]
    return {"observed_kept_by_cheap": round(float(np.mean(kept)), 4),
            "observed_confident_by_cheap": round(float(np.mean(confident)), 4)}


def load_graph(folder: Path) -> nx.DiGraph:
    """The graph saved by :func:`build_graph` (``nodes.parquet`` + ``edges.parquet``), mappings as dicts."""
    graph = nx.DiGraph()
    for r in pl.read_parquet(Path(folder) / "nodes.parquet").iter_rows(named=True):
        graph.add_node(r["tool"], server=r["server"], domain=r["domain"], answers=r.get("answers"),
                       probe_ok=r.get("probe_ok"))
    edges = pl.read_parquet(Path(folder) / "edges.parquet", columns=["source", "target", "score", "confidence", "mapping"])
    graph.add_edges_from((r["source"], r["target"], {"score": r["score"], "confidence": r["confidence"],
                                                     "mapping": json.loads(r["mapping"])})
                         for r in edges.iter_rows(named=True))
    return graph


def server_graph(graph: nx.DiGraph) -> nx.DiGraph:
    """Servers as nodes, an edge weighted by how many tool edges join them (for large catalogs)."""
    g = nx.DiGraph()
    for _, d in graph.nodes(data=True):
        if d["server"] not in g:
            g.add_node(d["server"], server=d["server"], tools=0)
        g.nodes[d["server"]]["tools"] += 1
    for u, v, d in graph.edges(data=True):
        su, sv = graph.nodes[u]["server"], graph.nodes[v]["server"]
        if su != sv and d["confidence"] in ("high", "medium"):
            w = g.get_edge_data(su, sv, {"n": 0})["n"]
            g.add_edge(su, sv, n=w + 1, confidence="high")
    return g


def plot_graph(graph: nx.DiGraph, path: Path, max_tools: int = 600) -> None:
    """Tools coloured by server; above ``max_tools`` tools, the server-level graph (a tool layout
    of thousands of nodes takes long and shows nothing)."""
    if graph.number_of_nodes() > max_tools:
        n_tools, n_edges = graph.number_of_nodes(), graph.number_of_edges()
        graph = server_graph(graph)
        title = f"server graph of {n_tools} tools, {n_edges} edges: {graph.number_of_nodes()} servers"
    else:
        title = None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = sorted({d["server"] for _, d in graph.nodes(data=True)})
    cmap = plt.get_cmap("tab20")
    colour = {s: cmap(i % 20) for i, s in enumerate(servers)}
    fig, ax = plt.subplots(figsize=(11, 9))
    pos = nx.spring_layout(graph, seed=0, k=0.6)
    strong = [(u, v) for u, v, d in graph.edges(data=True) if d["confidence"] in ("high", "medium")]
    nx.draw_networkx_edges(graph, pos, edgelist=strong, alpha=0.15, arrows=False, ax=ax)
    nx.draw_networkx_nodes(graph, pos, node_size=60 if title is None else 20, ax=ax,
                           node_color=[colour[graph.nodes[n]["server"]] for n in graph.nodes])
    for s in servers[:40]:
        ax.scatter([], [], color=colour[s], label=s)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_title(title or f"tool graph: {graph.number_of_nodes()} tools, {graph.number_of_edges()} edges "
                 f"({len(strong)} medium/high shown)")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- stage ---------------------------------------------------------------------------------------------------


def _observed_folder(source: str | None) -> Path | None:
    """The explorer folder ``graph.observed_from`` names (a store folder, or a run folder whose summary
    names one); None when unset; a one-line error when it is neither."""
    if not source:
        return None
    folder = Path(source)
    if (folder / "summary.json").exists():  # a run folder: its summary names its explorer folder
        folder = Path(json.loads((folder / "summary.json").read_text())["stages"]["explorer"]["folder"])
    if not (folder / "calls.jsonl").exists() or not (folder / "manifest.json").exists():
        raise ConfigError(f"graph.observed_from={source}: not a finished explorer folder (outputs/store/explorer/<key>) "
                          f"or run folder; use graph.observed_from=null")
    return folder


def observed_key(source: str | None) -> str | None:
    """The store key of the exploration ``graph.observed_from`` names (part of the graph's address)."""
    folder = _observed_folder(source)
    return None if folder is None else json.loads((folder / "manifest.json").read_text())["key"]


def observed_calls(source: str | None) -> list[dict] | None:
    """The calls of the earlier exploration ``graph.observed_from`` names, or None."""
    from .explorer import load_trajectories

    folder = _observed_folder(source)
    return None if folder is None else load_trajectories(folder)[1]


def run(settings: GraphSettings, inputs: dict[str, StageResult], ctx: RunContext) -> dict:
    """The graph of the discovered tools, with the probe's calls (and the catalog hints for its
    tools) when the probe ran, an earlier exploration's calls, the LM judge and the caches."""
    from .probe import tool_hints

    tools = servers.catalog(inputs)   # volatile as the probe found it
    probe_calls = inputs["probe"].value if "probe" in inputs else None
    extras = GraphInputs(probe_calls=probe_calls,
                         hints=tool_hints(ctx.specs, tools) if probe_calls is not None else None,
                         observed_calls=observed_calls(settings.observed_from), lm=ctx.lm,
                         cache_dir=ctx.outputs / "cache" if settings.embedding.cache else None)
    return with_lm_usage(build_graph, ctx.lm)(tools, settings, ctx.out, extras)


def load(folder: Path, ctx: RunContext) -> nx.DiGraph:
    return load_graph(folder)


def _params(settings: GraphSettings, ctx: RunContext) -> dict:
    """Beyond the graph settings: the LM (its verdicts are edges), whether its judge ran, and which
    earlier exploration the observed evidence came from."""
    return {"lm": ctx.lm_identity, "lm_judged": settings.lm_judge.enabled and ctx.lm is not None,
            "observed_key": observed_key(settings.observed_from)}


STAGE = Stage("graph", run, load, inputs=("servers", "probe"),
              artifacts=("edges.parquet", "nodes.parquet", "graph.png", "report.json", "inferred_schemas.parquet"),
              params=_params, code=(run, answer_fields))
