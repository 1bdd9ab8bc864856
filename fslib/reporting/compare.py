"""Compare two runs: what changed in the params, the metric differences (B − A), and an nbdime diff of the
executed notebooks (sources and outputs; images are shown by hash, not as base64).

    python -m fslib.reporting.compare tiny other               # run names under reports/, or two run folders
    make compare A=tiny B=other                      # the same
    .venv/bin/nbdiff-web reports/tiny/notebooks/03_evaluate.ipynb reports/other/notebooks/03_evaluate.ipynb

Both runs must have a metrics.json (03 writes it); notebooks missing from either run are named, not diffed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from fslib.core import config, fsio
from fslib.evaluation import formatting


def resolve(run: str | Path, reports_dir: str | Path = "reports") -> Path:
    """A run folder, given as a path or as a run name under ``reports_dir``."""
    path = Path(run)
    if not (path / "metrics.json").exists():
        path = Path(reports_dir) / str(run)
    if not (path / "metrics.json").exists():
        raise FileNotFoundError(f"{run}: no metrics.json (neither {run}/ nor {path}/); run `make report` for it first")
    return path


def _delta(key: str, a, b) -> str:
    va, vb = formatting.number(a), formatting.number(b)
    if va is None or vb is None:
        return "—"
    d = vb - va
    text = formatting.fmt(key, d)
    rel = f" ({d / va:+.0%})" if va else ""
    return ("+" if d > 0 else "") + text + rel


def metric_rows(a: dict, b: dict, *, changed_only: bool = True) -> tuple[list[list[str]], int]:
    """``[model, metric, A, B, B − A]`` for every model and metric either run measured that differs between them,
    and how many were identical."""
    rows, same = [], 0
    names = list(dict.fromkeys([*a.get("models", {}), *b.get("models", {})]))
    keys = [k for k, _, _ in formatting.METRICS if k in formatting.present(a) or k in formatting.present(b)]
    for name in names:
        ma, mb = a.get("models", {}).get(name, {}), b.get("models", {}).get(name, {})
        for k in keys:
            if formatting.number(ma.get(k)) is None and formatting.number(mb.get(k)) is None:
                continue
            if changed_only and ma.get(k) == mb.get(k):
                same += 1
                continue
            rows.append([name, formatting.LABELS[k], formatting.fmt(k, ma.get(k)), formatting.fmt(k, mb.get(k)),
                         _delta(k, ma.get(k), mb.get(k))])
    return rows, same


def param_rows(a: dict, b: dict) -> list[list[str]]:
    """``[param, A, B]`` for each param whose value differs (run_name included)."""
    pa, pb = a.get("params", {}), b.get("params", {})
    return [[k, json.dumps(pa.get(k, "—")), json.dumps(pb.get(k, "—"))]
            for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]


def notebook_diff(a: Path, b: Path) -> str:
    """nbdime's text diff of two executed notebooks: sources and outputs, metadata left out."""
    res = subprocess.run([sys.executable, "-m", "nbdime", "diff", "--no-color", "-s", "-o", str(a), str(b)],
                         capture_output=True, text=True, timeout=300)
    if res.returncode not in (0, 1):
        raise RuntimeError(f"nbdime diff {a} {b} failed: {res.stderr[-2000:]}")
    return res.stdout.strip() or "(no differences in sources or outputs)"


def compare(run_a: str | Path, run_b: str | Path, reports_dir: str | Path = "reports") -> str:
    """The whole comparison as Markdown text."""
    da, db = resolve(run_a, reports_dir), resolve(run_b, reports_dir)
    a, b = fsio.read_json(da / "metrics.json"), fsio.read_json(db / "metrics.json")
    parts = [f"# {da.name} (A) vs {db.name} (B)", "", "## Params that differ", ""]
    prow, (mrows, same) = param_rows(a, b), metric_rows(a, b)
    parts += [formatting.markdown_table(["param", "A", "B"], prow) if prow else "(none)", "", "## Metrics", "",
              f"A: split `{a.get('split')}`, {a.get('n_eval')} questions. B: split `{b.get('split')}`, "
              f"{b.get('n_eval')} questions. Memory in MiB. {same} model-metric pairs are identical and not listed.",
              "", formatting.markdown_table(["model", "metric", "A", "B", "B − A"], mrows) if mrows else "(no change)",
              "",
              "## Executed notebooks (nbdime)", ""]
    for stage in config.NOTEBOOKS:
        na, nb = da / "notebooks" / f"{stage}.ipynb", db / "notebooks" / f"{stage}.ipynb"
        if not (na.exists() and nb.exists()):
            parts += [f"### {stage}", "", f"(not in both runs: A {na.exists()}, B {nb.exists()})", ""]
            continue
        parts += [f"### {stage}", "", "```diff", notebook_diff(na, nb), "```", ""]
    return "\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="run A: a name under --reports-dir or a run folder")
    ap.add_argument("b", help="run B")
    ap.add_argument("--reports-dir", default="reports")
    ap.add_argument("--out", help="also write the comparison to this Markdown file")
    args = ap.parse_args(argv)
    try:
        text = compare(args.a, args.b, args.reports_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
