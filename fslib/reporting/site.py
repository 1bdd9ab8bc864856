"""The HTML pages: one self-contained report per run (``reports/<run>/index.html``) and the index of all runs.

The report joins the four executed notebooks with their code hidden, and adds what a reader needs to decide:
a table of contents, the headline metrics (teacher vs students) up front, and the params and environment at the
end. Every number is read from the run's JSON files. The page holds no script and references nothing remote, so it
renders the same offline; ``remote_refs`` is the check the pipeline runs before it writes a page.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from pathlib import Path

from fslib.evaluation import formatting, teachercheck

TEMPLATE = Path(__file__).parent / "templates" / "report.html.j2"
STAGE_TITLES = {"01_data": "1. Data", "02_distill": "2. Distillation", "03_evaluate": "3. Evaluation",
                "04_publish": "4. Publishing"}
_HEADING = re.compile(r"^(#{1,2})\s+(.+?)\s*#*\s*$")
# Anything the browser would fetch by itself: src/href attributes, CSS url(), @import and JS import().
_REMOTE = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?|@import\s+["']|import\(\s*["'])"""
                     r"""((?:https?:)?//[^"')\s>]+)""", re.I)


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def html_table(header: list[str] | None, rows: list[list], *, cls: str = "fs-table", id: str | None = None) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header or [])
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    ident = f' id="{esc(id)}"' if id else ""
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f'<table class="{cls}"{ident}>{head}<tbody>{body}</tbody></table>'


def scroll_box(table: str) -> str:
    """A table in a box that scrolls sideways when the table is wider than the page (CSS ``.fs-scroll``)."""
    return f'<div class="fs-scroll">{table}</div>'


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _inline(text: str) -> str:
    """Heading text as HTML: escaped, with `code` spans kept (the only markup the notebooks' headings use)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))


def _anchor_headings(source: str, prefix: str, toc: list) -> str:
    """Turn ``#``/``##`` lines into HTML headings with ids unique across the joined notebooks, and record them.

    Every notebook has a "Check the parameters" step, so the ids nbconvert would derive from the text collide.
    """
    out = []
    for line in source.splitlines():
        m = _HEADING.match(line)
        if m:
            level, anchor = len(m.group(1)), f"{prefix}-{len(toc)}"
            toc.append((level, m.group(2), anchor))
            line = f'<h{level} id="{anchor}">{_inline(m.group(2))}</h{level}>\n'
        out.append(line)
    return "\n".join(out)


def teacher_warning_html(check: dict | None) -> str:
    """02's teacher check in words when it failed (``fslib.evaluation.teachercheck``); empty when it passed."""
    if not check or check.get("ahead", True):
        return ""
    return f'<div class="fs-warn fs-teacher-warning"><b>Teacher check failed.</b> {esc(check["message"])}</div>'


def choice_html(metrics: dict) -> str:
    """03's student to trust in words, a warning box when it is not a KD student that beat fine-tuning."""
    c = metrics.get("choice")
    if not c:
        return ""
    helped = c["distilled"] and (c.get("verdict") or {}).get("kd_helped")
    return (f'<div class="fs-{"note" if helped else "warn"} fs-choice"><b>The student to trust: '
            f'<code>{esc(c["model"])}</code></b> ({esc(c["name"])}, chosen on the {esc(c["split"])} split; 04 '
            f'publishes it by default). {esc(c["reason"])}</div>')


def _stage_cells(path: Path, toc: list, banner: str = "") -> tuple[list, int]:
    """The cells of one executed notebook, ready to join: headings anchored, stderr dropped (and counted), and
    ``banner`` right under the stage's heading."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cells, n_stderr = [], 0
    title = STAGE_TITLES.get(path.stem, path.stem)
    toc.append((1, title, f"stage-{path.stem}"))
    cells.append(nbformat.v4.new_markdown_cell(f'<h1 id="stage-{path.stem}">{esc(title)}</h1>{banner}'))
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "raw" or "injected-parameters" in tags or "parameters" in tags:
            continue
        if cell.cell_type == "markdown":
            # The notebook's own "# FirstSight 0x" title gives way to the stage heading above.
            cell.source = _anchor_headings(re.sub(r"\A# .*\n*", "", cell.source), path.stem, toc)
        elif cell.cell_type == "code":
            kept = [o for o in cell.outputs if not (o.output_type == "stream" and o.get("name") == "stderr")]
            n_stderr += len(cell.outputs) - len(kept)
            cell.outputs = kept
        cells.append(cell)
    return cells, n_stderr


def toc_html(toc: list) -> str:
    items, open_sub = [], False
    for level, text, anchor in toc:
        if level == 1:
            items.append(("</ol>" if open_sub else "") + ("</li>" if items else ""))
            items.append(f'<li><a href="#{anchor}">{_inline(text)}</a>')
            open_sub = False
        else:
            items.append(("" if open_sub else "<ol>") + f'<li><a href="#{anchor}">{_inline(text)}</a></li>')
            open_sub = True
    items.append(("</ol>" if open_sub else "") + "</li>")
    return '<nav class="fs-toc" id="contents"><strong>Contents</strong><ol>' + "".join(items) + "</ol></nav>"


def headline_html(metrics: dict, run: str) -> str:
    """The small teacher-vs-students table, with the protocol it was measured under."""
    if not metrics.get("models"):
        return '<p class="fs-warn">No <code>metrics.json</code> in this run yet: run 03_evaluate.</p>'
    header, rows = formatting.table_rows(metrics)
    protocol = metrics.get("protocol", {}).get("summary", "")
    parts = ['<h2 id="headline-metrics">Headline metrics</h2>', teacher_warning_html(metrics.get("teacher_check")),
             choice_html(metrics), f"<p>{_inline(formatting.summary_line({**metrics, 'choice': None}, run))}</p>",
             scroll_box(html_table(header, rows, id="headline")),
             '<p class="fs-note">Accuracy: greedy answers scored against the reference and its aliases; the full '
             "table with F1, ROUGE-L, BLEU and the blind control is in section 3. Memory in MiB.</p>",
             f'<p class="fs-note fs-protocol">{esc(protocol)}</p>' if protocol else ""]
    return "\n".join(p for p in parts if p)


def _kv_rows(data: dict, prefix: str = "") -> list[list[str]]:
    rows = []
    for key, value in data.items():
        if isinstance(value, dict):
            rows += _kv_rows(value, f"{prefix}{key}.")
        else:
            rows.append([f"{prefix}{key}", json.dumps(value) if not isinstance(value, str) else value])
    return rows


def provenance_html(run_dir: Path, metrics: dict, executed: list[Path], n_stderr: int) -> str:
    """Params, environment (library versions, git SHA, hardware) and how each stage ran: the end of the report."""
    import nbformat

    stages = []
    for path in executed:
        pm = nbformat.read(path, as_version=4).metadata.get("papermill", {})
        stages.append([path.stem, pm.get("start_time", "?"), formatting.fmt("", pm.get("duration"))])
    env = metrics.get("environment") or _read(run_dir / "data_stats.json").get("environment", {})
    params = metrics.get("params") or _read(run_dir / "training.json").get("params", {})
    return "\n".join([
        '<h1 id="provenance">5. Params and environment</h1>', '<h2 id="provenance-stages">Stages</h2>',
        html_table(["notebook", "started", "duration (s)"], stages),
        f'<p class="fs-note">{n_stderr} stderr outputs (progress bars, library warnings) are left out of this page; '
        "the executed notebooks under <code>notebooks/</code> keep them.</p>",
        '<h2 id="provenance-environment">Environment</h2>', html_table(None, _kv_rows(env), cls="fs-table fs-kv"),
        '<h2 id="provenance-params">Params</h2>', html_table(None, _kv_rows(params), cls="fs-table fs-kv")])


def report_notebook(executed: list[Path], *, title: str, run_dir: Path):
    """One notebook: title, contents, headline, the four stages, then params and environment."""
    import nbformat

    first = nbformat.read(executed[0], as_version=4)
    joined = nbformat.v4.new_notebook(metadata={**first.metadata, "title": title})
    toc = [(1, "Headline metrics", "headline-metrics")]
    body, n_stderr = [], 0
    banner = teacher_warning_html(teachercheck.read(run_dir))
    for path in executed:
        cells, n = _stage_cells(path, toc, banner if path.stem == "02_distill" else "")
        body += cells
        n_stderr += n
    toc.append((1, "5. Params and environment", "provenance"))
    metrics = _read(run_dir / "metrics.json")
    md = nbformat.v4.new_markdown_cell
    joined.cells = [md(f"<h1 id=\"top\">{esc(title)}</h1>"), md(toc_html(toc)),
                    md(headline_html(metrics, run_dir.name)), *body,
                    md(provenance_html(run_dir, metrics, executed, n_stderr))]
    return joined


def render_run(executed: list[Path], out_file: Path, *, title: str) -> Path:
    from nbconvert import HTMLExporter

    run_dir = Path(executed[0]).parent.parent
    exporter = HTMLExporter(template_name="lab", template_file=str(TEMPLATE), exclude_input=True,
                            exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(report_notebook([Path(p) for p in executed], title=title,
                                                          run_dir=run_dir))
    return _write_offline(body, out_file)


def remote_refs(page: str) -> list[str]:
    """URLs the browser would fetch on its own (scripts, styles, images, fonts); links the reader clicks are fine."""
    return sorted({m.group(1) for m in _REMOTE.finditer(page)
                   if not re.search(r"<a\s[^>]*$", page[max(0, m.start() - 300):m.start()])})


def _write_offline(page: str, out_file: Path) -> Path:
    remote = remote_refs(page)
    if remote:
        raise RuntimeError(f"{out_file}: the page would fetch {remote}; it must render offline")
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(page)
    return out_file


def render_index(reports_dir: str | Path) -> Path:
    """``reports/index.html``: every run with its headline metrics, newest first, linking to its report."""
    reports_dir = Path(reports_dir)
    runs = sorted((p.parent for p in reports_dir.glob("*/metrics.json")), key=lambda p: -p.stat().st_mtime)
    keys = formatting.HEADLINE
    rows, header = [], ["run", "model", "role"] + [formatting.LABELS[k] for k in keys] + ["measured"]
    for run in runs:
        metrics = _read(run / "metrics.json")
        when = dt.datetime.fromtimestamp((run / "metrics.json").stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        for name, m in metrics.get("models", {}).items():
            rows.append([run.name, name, m.get("role", "")] + [formatting.fmt(k, m.get(k)) for k in keys] + [when])
    table = scroll_box(html_table(header, rows, id="runs"))
    for run in runs:  # link each run's first cell to its report
        table = table.replace(f"<tr><td>{esc(run.name)}</td>",
                              f'<tr><td><a href="{esc(run.name)}/index.html">{esc(run.name)}</a></td>')
    css = TEMPLATE.read_text().split("<style type=\"text/css\">")[1].split("</style>")[0]
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>FirstSight runs</title>"
            f"<style>body{{font-family:system-ui,sans-serif;margin:2em}}{css}"
            "table#runs td:nth-child(3), table#runs th:nth-child(3) {text-align: left}</style></head><body>"
            f"<h1>FirstSight runs</h1><p class=\"fs-note\">Runs with a metrics.json under "
            f"<code>{esc(reports_dir)}</code>: {len(runs)}. Each links to its report. Memory in MiB.</p>{table}"
            "</body></html>")
    return _write_offline(page, reports_dir / "index.html")
