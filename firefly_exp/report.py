"""The comparison report: an experiment's or a sweep's MLflow runs as a paper's ablation table.

    python -m firefly_exp.report outputs/multirun/<time>-ablate_sampler   # a sweep folder
    python -m firefly_exp.report ablate_sampler                          # every run of an experiment
    python -m firefly_exp.report                                         # the latest sweep (make report)

Reads the finished parent runs from the MLflow store (``--tracking-uri``, default
``sqlite:///<project>/outputs/mlflow.db``) with their ``config.yaml`` and ``summary.json`` artifacts.
Rows are the swept choices: the config values that differ between the runs, the seed aside (a
config group's choice names it, e.g. ``sampler=uniform``). Columns are each metric's mean ± standard
deviation over the seeds of the row. Writes ``report.md``, ``report.html`` (plots inlined),
``report.json`` and the plots to the sweep folder (``outputs/reports/<experiment>/`` for an
experiment) and logs them to MLflow as the artifacts of a ``report-<name>`` run.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import PROJECT_ROOT
from .simulator import HIT_KINDS

# config leaves that say where or how a run ran, not what it computed
IGNORED = ("seed", "name", "resume", "paths.", "mlflow.", "servers.install_dir")


class ReportError(ValueError):
    """Nothing to report on: printed as one line naming the problem and the fix."""


def default_target(outputs: Path) -> str:
    """The latest sweep folder, else the experiment of the latest run."""
    sweeps = sorted((p for p in (outputs / "multirun").glob("*") if (p / "multirun.yaml").exists()),
                    key=lambda p: p.stat().st_mtime)
    if sweeps:
        return str(sweeps[-1])
    latest = outputs / "latest" / "summary.json"
    if latest.exists():
        return json.loads(latest.read_text())["name"]
    raise ReportError(f"no sweep under {outputs}/multirun and no run at {outputs}/latest: run an experiment "
                      f"first (python -m firefly_exp -m +experiment=ablate_sampler)")


def load_runs(tracking_uri: str, target: str) -> tuple[str, list[dict], Path | None]:
    """The finished parent runs of a sweep folder or an experiment name: (name, runs, sweep folder)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        raise ReportError(f"no MLflow store at {tracking_uri}: run an experiment first, or pass --tracking-uri "
                          f"(or --outputs) to point at the store")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    folder = Path(target).resolve() if Path(target).is_dir() else None
    if folder is not None:
        query = f"tags.sweep_dir = '{folder}'"
    else:
        query = f"tags.experiment = '{target}'"
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, query + " and attributes.status = 'FINISHED'", max_results=5000,
                               order_by=["attributes.start_time ASC"]) if experiments else []
    if not found:
        what = f"sweep folder {folder}" if folder else f"experiment {target!r}"
        raise ReportError(f"no finished runs of the {what} in {tracking_uri}: check the path or name, or pass "
                          f"--tracking-uri")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in found:
            got = {}
            for name in ("summary.json", "config.yaml"):
                try:
                    got[name] = Path(mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path=name,
                                                                         dst_path=f"{tmp}/{r.info.run_id}")).read_text()
                except Exception:  # noqa: BLE001 - a run without its artifacts (killed before the end) is left out
                    got = {}
                    break
            if got:
                from omegaconf import OmegaConf

                runs.append({"run_id": r.info.run_id, "tags": r.data.tags, "summary": json.loads(got["summary.json"]),
                             "config": OmegaConf.to_container(OmegaConf.create(got["config.yaml"]))})
    if not runs:
        raise ReportError(f"the runs of {target} have no summary.json artifact (were they interrupted?): rerun them")
    name = runs[0]["summary"]["name"]
    return name, runs, folder


def _leaves(obj: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(obj, sort_keys=True)}


def row_labels(runs: list[dict]) -> list[str]:
    """Per run, the choices that set it apart: the config leaves that differ between the runs (the
    seed aside), a config group's leaves named by the group's choice when that differs."""
    leaves = [{k: v for k, v in _leaves(r["config"]).items() if not k.startswith(IGNORED)} for r in runs]
    keys = sorted({k for lv in leaves for k in lv})
    varying = [k for k in keys if len({lv.get(k) for lv in leaves}) > 1]
    choices = [r["summary"].get("choices") or {} for r in runs]
    groups = sorted({g for c in choices for g in c if len({cc.get(g) for cc in choices}) > 1})
    labels = []
    for lv, ch in zip(leaves, choices):
        parts = [f"{g}={ch.get(g)}" for g in groups]
        parts += [f"{k}={_plain(lv.get(k))}" for k in varying if k.split(".")[0] not in groups]
        labels.append(" ".join(parts) or "(all runs alike)")
    return labels


def _plain(value: str | None) -> str:
    return "null" if value is None else value.strip('"').replace('"', "")


def run_metrics(summary: dict) -> dict[str, float | None]:
    """The compared metrics of one run (see the README's report section)."""
    hits = (summary.get("simulator") or {}).get("hits") or {}
    total = sum(hits.get(k, 0) for k in HIT_KINDS) or 1
    m: dict[str, float | None] = {
        "verified tasks": summary["counts"]["verified_tasks"],
        "yield": (summary.get("tasks") or {}).get("yield_per_dag", summary["counts"].get("tasks_per_dag")),
        "edge validity": summary["counts"].get("edge_validity"),
        "reward-flip rate": (summary.get("simulator") or {}).get("reward_flip_rate"),
        **{f"pass@1 {p}": v.get("pass@1") for p, v in (summary.get("eval") or {}).items()},
        "wall s": summary.get("wall_s"),
        "cost usd": (summary.get("cost") or {}).get("lm_cost_usd", 0.0),
    }
    m.update({f"hit.{k}": hits.get(k, 0) / total for k in HIT_KINDS})
    return m


def _mean_sd(values: list) -> tuple[float | None, float | None]:
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def build_table(runs: list[dict]) -> tuple[list[str], list[dict]]:
    """(columns, rows): one row per label, each metric as mean and sd over the row's seeds. When a
    label and seed ran more than once, the latest run counts."""
    from .pipeline import STAGE_ORDER   # the stages' order; summary.json keeps them sorted by name

    labels = row_labels(runs)
    latest: dict[tuple[str, int], dict] = {}
    for label, r in zip(labels, runs):   # runs come oldest first
        latest[(label, r["summary"]["seed"])] = {**r, "label": label}
    by_label: dict[str, list[dict]] = {}
    for (label, _), r in sorted(latest.items(), key=lambda kv: (labels.index(kv[0][0]), kv[0][1])):
        by_label.setdefault(label, []).append(r)
    columns: list[str] = []
    for r in latest.values():
        for k in run_metrics(r["summary"]):
            if k not in columns:
                columns.append(k)
    rows = []
    for label, rs in by_label.items():
        metrics = [run_metrics(r["summary"]) for r in rs]
        row = {"label": label, "seeds": sorted(r["summary"]["seed"] for r in rs), "runs": [r["run_id"] for r in rs],
               "mean": {}, "sd": {}}
        for c in columns:
            row["mean"][c], row["sd"][c] = _mean_sd([m.get(c) for m in metrics])
        row["stages"] = []
        for r in rs:
            stages = sorted(((n, st) for n, st in r["summary"]["stages"].items() if "reused" in st),
                            key=lambda kv: (STAGE_ORDER.index(kv[0]) if kv[0] in STAGE_ORDER else len(STAGE_ORDER),
                                            kv[0]))
            row["stages"].append({"seed": r["summary"]["seed"], "run_id": r["run_id"],
                                  "order": [n for n, _ in stages], "reused": [n for n, st in stages if st["reused"]],
                                  "ran": [n for n, st in stages if not st["reused"]]})
        rows.append(row)
    return columns, rows


def _fmt(mean: float | None, sd: float | None, column: str, n: int) -> str:
    if mean is None:
        return "—"
    digits = 0 if column in ("verified tasks", "wall s") else 3
    if column == "cost usd":
        digits = 4
    text = f"{mean:.{digits}f}"
    return text + (f" ± {sd:.{digits}f}" if n > 1 else "")


def _hit_mix(row: dict) -> str:
    """The share of each hit kind, mean ± sd in percentage points over the seeds: ``exact 54±3% · miss 46±3%``."""
    parts = []
    for k in HIT_KINDS:
        mean, sd = row["mean"].get(f"hit.{k}") or 0.0, row["sd"].get(f"hit.{k}") or 0.0
        if mean >= 0.005:
            parts.append(f"{k} {mean * 100:.0f}" + (f"±{sd * 100:.0f}" if len(row["seeds"]) > 1 else "") + "%")
    return " · ".join(parts) or "—"


def render_markdown(name: str, source: str, columns: list[str], rows: list[dict], plots: list[str]) -> str:
    shown = [c for c in columns if not c.startswith("hit.")]
    head = ["choice", "seeds", *shown[:3], "simulator hit mix", *shown[3:]]
    lines = [f"# Report: {name}", "", f"Source: `{source}`: {sum(len(r['runs']) for r in rows)} runs, "
             f"{len(rows)} rows. Each cell is the mean ± standard deviation over the row's seeds.", "",
             "## Ablation table", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        n = len(r["seeds"])
        cells = [f"`{r['label']}`", ",".join(map(str, r["seeds"]))]
        cells += [_fmt(r["mean"][c], r["sd"][c], c, n) for c in shown[:3]]
        cells += [_hit_mix(r)]
        cells += [_fmt(r["mean"][c], r["sd"][c], c, n) for c in shown[3:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Columns: verified tasks (after verification and deduplication); yield = verified tasks per "
              "explored DAG; edge validity = share of sampled edges along which exploration really passed a "
              "value; simulator hit mix = how the evaluation's calls were answered; reward-flip rate = share of "
              "held-out tasks whose reward differs between simulation and live; pass@1 per policy on the "
              "held-out split; wall s = the job's wall time (reused stages cost nothing); cost = LM spend.", ""]
    lines += ["## Reused stages", "",
              "Stages whose inputs and config were unchanged came from the content-addressed store.", "",
              "| stage | reused in | ran in |", "|---|---|---|"]
    jobs = [s for r in rows for s in r["stages"]]
    for stage in dict.fromkeys(st for s in jobs for st in s["order"]):
        reused = sum(stage in s["reused"] for s in jobs)
        ran = sum(stage in s["ran"] for s in jobs)
        lines.append(f"| {stage} | {reused} of {len(jobs)} jobs | {ran} |")
    lines += ["", "| choice | seed | reused | ran |", "|---|---|---|---|"]
    for r in rows:
        for s in r["stages"]:
            lines.append(f"| `{r['label']}` | {s['seed']} | {', '.join(s['reused']) or '—'} | "
                         f"{', '.join(s['ran']) or '—'} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def render_plots(columns: list[str], rows: list[dict], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in rows]
    metrics = [c for c in columns if not c.startswith("hit.") and c != "cost usd"]
    cols = 3
    nrows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 0.5 + 2.4 * nrows + 0.12 * len(labels)),
                             squeeze=False)
    for ax, c in zip(axes.flat, metrics):
        means = [r["mean"][c] or 0.0 for r in rows]
        sds = [r["sd"][c] or 0.0 for r in rows]
        ax.barh(range(len(rows)), means, xerr=sds, color="#4c72b0", capsize=3)
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(c, fontsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    first = out_dir / "report_metrics.png"
    fig.savefig(first, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.35 * len(rows)))
    left = [0.0] * len(rows)
    for kind in HIT_KINDS:
        vals = [r["mean"].get(f"hit.{kind}") or 0.0 for r in rows]
        if any(vals):
            ax.barh(range(len(rows)), vals, left=left, label=kind)
            left = [a + b for a, b in zip(left, vals)]
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("share of the evaluation's simulator calls")
    ax.set_title("simulator hit mix", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    second = out_dir / "report_hits.png"
    fig.savefig(second, dpi=110)
    plt.close(fig)
    return [str(first), str(second)]


def render_html(markdown: str, out_dir: Path) -> str:
    """A standalone HTML page: the markdown's tables as tables, its images inlined."""
    body, table = [], []

    def flush() -> None:
        if table:
            head, *rest = [r for r in table if not set(r.replace("|", "").strip()) <= set("-")]
            cells = lambda row, tag: "".join(f"<{tag}>{html.escape(c.strip().strip('`'))}</{tag}>"  # noqa: E731
                                            for c in row.strip().strip("|").split("|"))
            body.append("<table><tr>" + cells(head, "th") + "</tr>" +
                        "".join("<tr>" + cells(r, "td") + "</tr>" for r in rest) + "</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("!["):
            src = out_dir / line[line.index("(") + 1:-1]
            data = base64.b64encode(src.read_bytes()).decode()
            body.append(f'<p><img src="data:image/png;base64,{data}" style="max-width:100%"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line).replace('`', '')}</p>")
    flush()
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#eee}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>report</title><style>{style}</style></head>" \
           f"<body>{''.join(body)}</body></html>\n"


def write_report(target: str, tracking_uri: str, out_dir: Path | None = None, outputs: Path | None = None,
                 log: bool = True) -> dict:
    """Build the report of ``target`` (a sweep folder or an experiment name); returns what it wrote."""
    name, runs, folder = load_runs(tracking_uri, target)
    columns, rows = build_table(runs)
    outputs = Path(outputs or PROJECT_ROOT / "outputs")
    out_dir = Path(out_dir or folder or outputs / "reports" / name)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = render_plots(columns, rows, out_dir)
    md = render_markdown(name, str(folder or name), columns, rows, plots)
    (out_dir / "report.md").write_text(md)
    (out_dir / "report.html").write_text(render_html(md, out_dir))
    data = {"name": name, "source": str(folder or name), "columns": columns, "rows": rows}
    (out_dir / "report.json").write_text(json.dumps(data, indent=2, default=str))
    files = [str(out_dir / f) for f in ("report.md", "report.html", "report.json")] + plots
    if log:
        import mlflow

        experiment_id = runs[0]["summary"]["mlflow"]["experiment_id"]
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"report-{name}") as run:
            mlflow.set_tags({"report_of": str(folder or name), "report_runs": str(len(runs))})
            for f in files:
                mlflow.log_artifact(f, artifact_path="report")
            data["mlflow_run_id"] = run.info.run_id
    return {**data, "out_dir": str(out_dir), "files": files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firefly_exp.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", help="a sweep folder (outputs/multirun/...) or an experiment name; "
                                                  "default: the latest sweep")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default sqlite:///<outputs>/mlflow.db)")
    parser.add_argument("--outputs", default=str(PROJECT_ROOT / "outputs"), help="the outputs folder")
    parser.add_argument("--out", default=None, help="where to write (default: the sweep folder, or "
                                                    "outputs/reports/<experiment>)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    a = parser.parse_args(argv)
    outputs = Path(a.outputs).resolve()
    uri = a.tracking_uri or f"sqlite:///{outputs}/mlflow.db"
    try:
        target = a.target or default_target(outputs)
        result = write_report(target, uri, Path(a.out) if a.out else None, outputs, log=not a.no_log)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((Path(result["out_dir"]) / "report.md").read_text())
    print(f"report: {result['out_dir']}/report.md and report.html"
          + (f"; MLflow run {result['mlflow_run_id']}" if "mlflow_run_id" in result else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
