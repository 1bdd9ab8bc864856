"""Keep README.md's generated blocks current; nothing in them is typed by hand.

    python -m fslib.reporting.readme            # make readme: rewrite the generated blocks
    python -m fslib.reporting.readme --check    # exit 1 when the params reference is stale (tests/test_readme.py)

- ``params``: the params reference, generated from the four notebooks' ``parameters`` cells (name, type, default,
  comment, and which notebooks read it).
- ``headline``: the headline result, read from the latest tiny run's ``reports/tiny/metrics.json``. Left as it is
  when that file does not exist (a fresh clone), since only a run can produce those numbers.
- ``kd_vs_sft``: distillation against plain fine-tuning over seeds, read from ``benchmarks/results/kd_vs_sft.json``
  (``benchmarks/kd_vs_sft.py`` writes it).
- ``vision_probe``: what the embedded towers' visual tokens carry (linear probes), read from
  ``benchmarks/results/vision_probe.json`` (``benchmarks/vision_probe.py`` writes it).
- ``cache_tail``: the KD student against the live teacher and the two tail handlings of the top-k cache, read from
  ``benchmarks/results/cache_tail.json`` (``benchmarks/cache_tail.py`` writes it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path

from fslib.core import config, fsio
from fslib.evaluation import formatting

README = fsio.REPO_ROOT / "README.md"
TINY_METRICS = fsio.REPO_ROOT / "reports" / "tiny" / "metrics.json"
KD_VS_SFT = fsio.REPO_ROOT / "benchmarks" / "results" / "kd_vs_sft.json"
VISION_PROBE = fsio.REPO_ROOT / "benchmarks" / "results" / "vision_probe.json"
CACHE_TAIL = fsio.REPO_ROOT / "benchmarks" / "results" / "cache_tail.json"
USER_DATA = fsio.REPO_ROOT / "benchmarks" / "results" / "user_data.json"
_ROLES = {"teacher": "teacher, prepared on the labels", "student": "KD student",
          "kd_labelled_student": "KD on the labelled questions only", "sft_student": "SFT-only student",
          "base_student": "student's starting weights"}
_SHORT = {"01_data": "01", "02_distill": "02", "03_evaluate": "03", "04_publish": "04"}


def _block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- BEGIN generated:{name} .*?-->\n)(.*?)(<!-- END generated:{name} -->)", re.S)


def params_reference(notebooks_dir: str | Path | None = None) -> str:
    """A Markdown table of every parameter, in the order the notebooks declare them."""
    rows = []
    for key, info in config.declared_params(notebooks_dir).items():
        nbs = ", ".join(_SHORT.get(n, n) for n in info["notebooks"])
        meaning = (info["help"] or "").replace("<", "&lt;").replace(">", "&gt;")  # "<preset>" is no HTML tag
        rows.append([f"`{key}`", info["type"], f"`{info['default']}`", nbs, meaning])
    return formatting.markdown_table(["param", "type", "default", "notebooks", "meaning"], rows)


def headline_block(metrics_path: str | Path = TINY_METRICS) -> str:
    """The headline sentence and table of a run, with where and when they were read."""
    metrics_path = Path(metrics_path)
    metrics = fsio.read_json(metrics_path)
    header, rows = formatting.table_rows(metrics, ("exact_match", "f1", "params", "decode_s_per_token",
                                                 "weights_bytes"))
    when = dt.datetime.fromtimestamp(metrics_path.stat().st_mtime).strftime("%Y-%m-%d")
    sha = metrics.get("environment", {}).get("git_sha", "unknown")
    return "\n".join([formatting.summary_line(metrics, metrics_path.parent.name), "",
                      formatting.markdown_table(header, rows), "",
                      f"*Read from `{_display(metrics_path)}` (run of {when}, commit `{sha[:12]}`) by "
                      "`make readme`; weights in MiB.*"])


def kd_vs_sft_block(path: str | Path = KD_VS_SFT) -> str:
    """Mean and per-seed test exact match of teacher, KD students and SFT-only student, and the two targets."""
    res = fsio.read_json(path)
    cols = [("teacher", "teacher"), ("kd", "KD student"), ("kd_labelled", "KD, labelled only"),
            ("sft", "SFT-only student"), ("teacher_blind", "teacher, blind")]
    f = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    rows = [[f"seed {r['seed']}"] + [f(r["exact_match"].get(k)) for k, _ in cols] for r in res["runs"]]
    rows.append(["**mean**"] + [f"**{f(res['mean_exact_match'].get(k))}**" for k, _ in cols])
    t = res["targets"]
    met = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    n = res["runs"][0]["n_eval"] if res["runs"] else "?"
    lines = [formatting.markdown_table(["", *(label for _, label in cols)], rows), "",
             f"KD − SFT: {t['kd_minus_sft']:+.3f} exact match (target ≥ +{t['kd_minus_sft_target']:.2f}: "
             f"{met(t['kd_minus_sft'] >= t['kd_minus_sft_target'])}); KD / teacher: {t['kd_over_teacher']:.2f} "
             f"(target ≥ {t['kd_over_teacher_target']:.2f}: {met(t['kd_over_teacher'] >= t['kd_over_teacher_target'])})."
             f" Each seed's test split has {n} questions.", "",
             f"*Read from `{_display(Path(path))}` (`{res['environment']['command'].strip()}`, params "
             f"`{res['params']}`) by `make readme`.*"]
    if res.get("mean_per_type"):
        type_cols = [("teacher", "teacher"), ("kd", "KD student"), ("kd_labelled", "KD, labelled only"),
                     ("sft", "SFT-only student"), ("base", "starting weights")]
        type_rows = [[f"`{qtype}`"] + [f(v.get(k)) for k, _ in type_cols]
                     for qtype, v in res["mean_per_type"].items()]
        lines[-1:-1] = ["Per question type, mean of the seeds:", "",
                        formatting.markdown_table(["question type", *(label for _, label in type_cols)], type_rows), ""]
    return "\n".join(lines)


def vision_probe_block(path: str | Path = VISION_PROBE) -> str:
    """Held-out accuracy of each linear probe on each model's visual tokens, beside the majority class's."""
    res = fsio.read_json(path)
    tasks = [("object_category", "object category (its cell)"), ("object_colour", "object colour (its cell)"),
             ("held_object", "held object (the hand's cell)")]
    cell = lambda r, t: f"{r[t]['accuracy']:.3f} ({r[t]['majority']:.3f})" if t in r else "—"  # noqa: E731
    rows = [[f"`{name}`"] + [cell(r, t) for t, _ in tasks] for name, r in res["models"].items()]
    return "\n".join([formatting.markdown_table(["tower", *(label for _, label in tasks)], rows), "",
                      f"*Linear-probe accuracy on held-out visual tokens (majority class in brackets), "
                      f"{res['scenes']} scenes; read from `{_display(Path(path))}` "
                      f"(`{res['command'].strip()}`) by `make readme`.*"])


def cache_tail_block(path: str | Path = CACHE_TAIL) -> str:
    """Exact match per seed of the KD student taught by the live teacher and by each cache, and the tail mass."""
    res = fsio.read_json(path)
    names = {"live": "live teacher", "renormalise": "cache, `renormalise`", "exact": "cache, `exact` tail"}
    rows = [[names.get(v, v), *(f"{x:.3f}" for x in r["exact_match"]), f"**{r['mean']:.3f}**",
             f"{r['train_s_mean']:.0f}"] for v, r in res["variants"].items()]
    header = ["KD student taught by", *(f"seed {s}" for s in res["seeds"]), "mean", "training s"]
    tm = res["tail_mass"]
    mass = "; ".join(f"at T = {m['temperature']:g} mean {m['mean']:.2f} (max {m['max']:.2f})"
                     for m in tm["by_temperature"])
    return "\n".join([formatting.markdown_table(header, rows), "",
                      f"*The `kd_labelled_student` job of `{res['run']}` per seed, exact match on "
                      f"{res['probe']['questions']} probe questions. The teacher's softened mass outside its top "
                      f"{tm['k']} of {tm['vocab']} ids, on the training answer tokens: {mass}. Read from "
                      f"`{_display(Path(path))}` (`{res['command'].strip()}`) by `make readme`.*"])


def user_data_block(path: str | Path = USER_DATA) -> str:
    """A user's dataset run on params/tiny.yaml's settings: each model's test exact match, and the teacher check."""
    res = fsio.read_json(path)
    rows = [[_ROLES.get(n, n), f"{m['exact_match']:.3f} [{m['exact_match_ci'][0]:.3f}, {m['exact_match_ci'][1]:.3f}]",
             formatting.fmt("exact_match", m.get("blind_exact_match"))] for n, m in res["models"].items()]
    tc, sizes = res["teacher_check"], ", ".join(f"{k} {v}" for k, v in res["sizes"].items())
    verdict = "passed" if tc["ahead"] else f"failed, and the report said: \u201c{tc['message']}\u201d"
    return "\n".join([formatting.markdown_table(["model", "test exact match [95% CI]", "blind"], rows), "",
                      f"*`{res['dataset']['name']}` ({sizes} rows). Teacher check on {tc['n']} validation questions: "
                      f"teacher {tc['teacher_em']:.3f} (blind {tc['teacher_blind_em']:.3f}), student's starting "
                      f"weights {tc['student_start_em']:.3f}: {verdict} Read from `{_display(Path(path))}` "
                      f"(`{res['command'].strip()}`, commit `{res['git_sha'][:12]}`) by `make readme`.*"])


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(fsio.REPO_ROOT))
    except ValueError:
        return str(path)


def replace_block(text: str, name: str, content: str) -> str:
    pattern = _block(name)
    if not pattern.search(text):
        raise ValueError(f"README has no <!-- BEGIN generated:{name} --> ... <!-- END generated:{name} --> block")
    return pattern.sub(lambda m: m.group(1) + content.rstrip() + "\n" + m.group(3), text, count=1)


def current_block(text: str, name: str) -> str:
    m = _block(name).search(text)
    return m.group(2).rstrip() if m else ""


def update(readme: str | Path = README, metrics_path: str | Path = TINY_METRICS) -> list[str]:
    """Rewrite the blocks in place; returns the names of the blocks that changed."""
    readme = Path(readme)
    text = new = readme.read_text()
    new = replace_block(new, "params", params_reference())
    if Path(metrics_path).exists():
        new = replace_block(new, "headline", headline_block(metrics_path))
    for name, path, block in (("kd_vs_sft", KD_VS_SFT, kd_vs_sft_block), ("vision_probe", VISION_PROBE,
                              vision_probe_block), ("cache_tail", CACHE_TAIL, cache_tail_block),
                              ("user_data", USER_DATA, user_data_block)):
        if path.exists() and _block(name).search(new):
            new = replace_block(new, name, block(path))
    blocks = ("params", "headline", "kd_vs_sft", "vision_probe", "cache_tail", "user_data")
    changed = [n for n in blocks if current_block(text, n) != current_block(new, n)]
    if new != text:
        readme.write_text(new)
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that the params reference is current")
    ap.add_argument("--metrics", default=str(TINY_METRICS), help="metrics.json for the headline block")
    args = ap.parse_args(argv)
    if args.check:
        stale = current_block(README.read_text(), "params") != params_reference().rstrip()
        if stale:
            print("README.md's params reference is stale: run `make readme`", file=sys.stderr)
        return int(stale)
    changed = update(README, args.metrics)
    print(f"README.md: updated {changed or 'nothing (already current)'}"
          + ("" if Path(args.metrics).exists() else f"; no {args.metrics}, headline left as is"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
