"""The run report and the runs index: offline, complete, and rendered in a real browser (headless Chromium)."""

import json
import re

import pytest

from fslib.evaluation import formatting
from fslib.reporting import browser, compare, site


def test_fmt_and_missing_values():
    assert formatting.fmt("exact_match", 0.5) == "0.500"
    assert formatting.fmt("params", 430208) == "430,208"
    assert formatting.fmt("peak_bytes", 3 * 2**20) == "3.0"
    assert formatting.fmt("exact_match", None) == "—" and formatting.fmt("exact_match", {"1": 2.0}) == "—"
    assert formatting.fmt("exact_match", float("nan")) == "—" and formatting.fmt("exact_match", True) == "—"
    assert formatting.fmt("exact_match_ci", [0.25, 0.75]) == "[0.250, 0.750]"
    assert formatting.fmt("exact_match_ci", {"low": 0.25, "high": 0.75}) == "[0.250, 0.750]"


def test_headline_rows_skip_what_no_model_measured():
    metrics = {"models": {"teacher": {"role": "teacher", "exact_match": 0.75},
                          "student": {"role": "KD student", "exact_match": 0.5, "exact_match_ci": [0.4, 0.6],
                                      "params": 10}}}
    header, rows = formatting.table_rows(metrics)
    assert header == ["model", "role", "exact match [95% CI]", "parameters"]
    assert rows == [["teacher", "teacher", "0.750", "—"], ["student", "KD student", "0.500 [0.400, 0.600]", "10"]]
    assert "0.500" in formatting.summary_line(metrics, "r") and "5.0×" not in formatting.summary_line(metrics, "r")
    assert "no accuracy" in formatting.summary_line({"models": {}}, "r")


def test_remote_refs_finds_fetches_but_not_links():
    page = ('<script src="https://cdn.x/a.js"></script><link href="//fonts.x/css" rel="stylesheet">'
            '<style>@font-face{src:url("https://f.x/f.woff")} @import "http://i.x/s.css";</style>'
            '<script>import("https://m.x/m.mjs")</script><a href="https://huggingface.co">hub</a>'
            '<img src="data:image/png;base64,AAA">')
    assert site.remote_refs(page) == sorted(["https://cdn.x/a.js", "//fonts.x/css", "https://f.x/f.woff",
                                             "http://i.x/s.css", "https://m.x/m.mjs"])


def test_headline_table_scrolls_in_its_own_box(tmp_path):
    """A wide headline table scrolls inside a box of the page's width instead of widening the page."""
    import nbformat

    run = tmp_path / "r"
    (run / "notebooks").mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# FirstSight 01\n\n## Check")])
    nbformat.write(nb, run / "notebooks" / "01_data.ipynb")
    models = {name: {"role": name, **{k: 0.5 for k in formatting.HEADLINE}} for name in ("teacher", "student")}
    (run / "metrics.json").write_text(json.dumps({"models": models}))
    page = site.render_run([run / "notebooks" / "01_data.ipynb"], run / "index.html", title="t").read_text()
    assert re.search(r'<div class="fs-scroll">\s*<table class="fs-table" id="headline">', page)
    assert re.search(r"\.fs-scroll\s*\{[^}]*max-width:\s*100%[^}]*overflow-x:\s*auto", page)
    index = site.render_index(tmp_path).read_text()
    assert '<div class="fs-scroll"><table class="fs-table" id="runs">' in index and ".fs-scroll" in index


@pytest.mark.slow
def test_report_page_is_self_contained(tiny_run):
    page = (tiny_run / "index.html").read_text()
    assert site.remote_refs(page) == []
    assert "<script" not in page and "@font-face" not in page
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    # Headline up front, the environment (git SHA, versions, hardware) and the params at the end.
    assert page.index('id="headline"') < page.index('id="stage-01_data"') < page.index('id="provenance"')
    env = metrics["environment"]
    assert env["git_sha"] in page and env["versions"]["torch"] in page
    assert page.index(env["git_sha"]) > page.index('id="provenance"')
    assert "papermill" not in page.split('id="provenance"')[0][-50:]  # the page does not end mid-stage
    for name in metrics["models"]:
        assert f"<td>{name}</td>" in page


@pytest.mark.slow
def test_runs_index_lists_every_run_with_its_headline(tiny_run):
    index = (tiny_run.parent / "index.html").read_text()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert '<a href="e2e/index.html">e2e</a>' in index and site.remote_refs(index) == []
    student = metrics["models"]["student"]
    assert formatting.fmt("exact_match", student["exact_match"]) in index
    assert formatting.fmt("params", student["params"]) in index


@pytest.mark.slow
@pytest.mark.skipif(browser.find_chromium() is None,
                    reason="chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)")
def test_report_renders_in_headless_chromium_without_network(tiny_run, tmp_path):
    shot = tmp_path / "report.png"
    result = browser.inspect_page(tiny_run / "index.html", screenshot=shot)
    print(f"screenshot: {shot}")
    assert browser.problems(result) == []
    assert result["requests"] and all(u.startswith(("file://", "data:")) for u in result["requests"])
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert result["headline_rows"] == len(metrics["models"])
    assert result["headline_header"][:3] == ["model", "role", "exact match [95% CI]"]
    assert result["figures"] >= 5 and result["broken_images"] == 0  # 01 and 02 alone draw five
    assert result["toc_links"] > 10 and result["has_params"]
    assert shot.stat().st_size > 50_000


@pytest.mark.slow
@pytest.mark.skipif(browser.find_chromium() is None, reason="chromium is not installed")
def test_browser_check_catches_a_page_that_fetches(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<html><body><img src="https://example.invalid/x.png"><p>Traceback (most recent call last)</p>'
                    "</body></html>")
    result = browser.inspect_page(page)
    assert result["remote_requests"] == ["https://example.invalid/x.png"]
    bad = " ".join(browser.problems(result))
    assert "network requests" in bad and "traceback" in bad and "no headline" in bad


@pytest.mark.slow
def test_compare_lists_metric_and_param_differences(tiny_run, tmp_path):
    other = tmp_path / "other"
    (other / "notebooks").mkdir(parents=True)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    before = metrics["models"]["student"]["exact_match"]
    metrics["models"]["student"]["exact_match"] = before + 0.25
    metrics["params"]["epochs"] = 99
    (other / "metrics.json").write_text(json.dumps(metrics))
    nb = (tiny_run / "notebooks" / "01_data.ipynb").read_text()
    (other / "notebooks" / "01_data.ipynb").write_text(nb.replace("Builds the egocentric", "Builds THE egocentric"))
    text = compare.compare(tiny_run, other)
    assert re.search(r"\| epochs \| 1 \| 99 \|", text)
    assert re.search(rf"\| student \| exact match \| {before:.3f} \| {before + 0.25:.3f} \| \+0\.250", text)
    assert "Builds THE egocentric" in text and "nbdiff" in text  # nbdime's diff of the changed notebook
    assert "(not in both runs" in text  # 02-04 exist only in A
