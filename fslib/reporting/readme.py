"""Keep README.md's generated blocks current; nothing in them is typed by hand.

    python -m fslib.reporting.readme            # make readme: rewrite the generated blocks
    python -m fslib.reporting.readme --check    # exit 1 when the params reference is stale (tests/test_readme.py)

- ``params``: the params reference, generated from the four notebooks' ``parameters`` cells (name, type, default,
  comment, and which notebooks read it).
- ``headline``: the headline result, read from the latest tiny run's ``reports/tiny/metrics.json``. Left as it is
  when that file does not exist (a fresh clone), since only a run can produce those numbers.
- ``embedded``: the committed tiny pair's build report, read from ``embedded/build_report.json`` (``make embedded``).
- ``kd_vs_sft``: distillation against plain fine-tuning over seeds, read from ``benchmarks/results/kd_vs_sft.json``
  (``benchmarks/kd_vs_sft.py`` writes it).
- ``vision_probe``: what the embedded towers' visual tokens carry (linear probes), read from
  ``benchmarks/results/vision_probe.json`` (``benchmarks/vision_probe.py`` writes it).
- ``plan``: the planner's real-job plans per GPU and its CPU rehearsal against measured peaks, read from
  ``benchmarks/results/plan_vs_measured.json`` (``benchmarks/plan_vs_measured.py``; ``fslib.reporting.planblock``).
- ``lm_probe``: the language stage's levers on the committed towers, read from ``benchmarks/results/lm_probe.json``
  (``benchmarks/lm_probe.py`` writes it).
- ``user_data``, ``user_data_teacher16``, ``user_data_profile``: a user's dataset through the four stages
  (``benchmarks/user_data.py``; ``fslib.reporting.userblock``), with the default params, with 16 teacher epochs, and
  at the size of a user's run (400 labelled + 2,000 unlabelled) for 02's time.
- ``families``: "Other Qwen-VL pairs": the planner on each new family's params file per GPU, read from
  ``benchmarks/results/family_plans.json`` (``benchmarks/family_plans.py``), and the family variants of
  ``plan_vs_measured.json`` (``fslib.reporting.familyblock``).
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
from fslib.reporting import familyblock, planblock
from fslib.reporting.userblock import user_data_block

README = fsio.REPO_ROOT / "README.md"
TINY_METRICS = fsio.REPO_ROOT / "reports" / "tiny" / "metrics.json"
KD_VS_SFT = fsio.REPO_ROOT / "benchmarks" / "results" / "kd_vs_sft.json"
EMBEDDED_REPORT = fsio.REPO_ROOT / "embedded" / "build_report.json"
LM_PROBE = fsio.REPO_ROOT / "benchmarks" / "results" / "lm_probe.json"
VISION_PROBE = fsio.REPO_ROOT / "benchmarks" / "results" / "vision_probe.json"
CACHE_TAIL = fsio.REPO_ROOT / "benchmarks" / "results" / "cache_tail.json"
USER_DATA = fsio.REPO_ROOT / "benchmarks" / "results" / "user_data.json"
USER_DATA_TEACHER16 = fsio.REPO_ROOT / "benchmarks" / "results" / "user_data_teacher16.json"
USER_DATA_PROFILE = fsio.REPO_ROOT / "benchmarks" / "results" / "user_data_profile.json"
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
    n = res["runs"][0]["n_eval"] if res["runs"] else "?"
    lines = [formatting.markdown_table(["", *(label for _, label in cols)], rows), "",
             f"Each seed's test split has {n} questions. The targets, each read from the same file:", "",
             targets_table(res["targets"]), "",
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


TARGET_LABELS = {
    "teacher_exact_match": "teacher's test EM", "teacher_worst_type": "teacher's worst question type",
    "teacher_blind_minus_prior": "teacher blind − prior baseline", "kd_minus_sft": "KD − SFT (mean of seeds)",
    "seeds_with_separated_cis": "seeds whose 95% CIs (KD above SFT) do not overlap",
    "kd_over_teacher": "KD / teacher", "base_exact_match": "student's starting weights",
    "kd_labelled_minus_sft": "KD on labelled questions only − SFT"}


def targets_table(targets: dict) -> str:
    """One row per target of ``benchmarks/kd_vs_sft.py``: the measured value, the target and whether it is met."""
    def value(v):
        return "—" if v is None else (f"{v}" if isinstance(v, int) else f"{v:+.3f}" if v < 0.0 or "minus" in k
                                      else f"{v:.3f}")
    rows = []
    for k, t in targets.items():
        label = TARGET_LABELS.get(k) or (f"KD − SFT, another build (build seed {k[5:].split('_')[0]})"
                                         if k.startswith("build") else k)
        goal = "" if t["target"] is None else ("≤ " if k in ("teacher_blind_minus_prior", "base_exact_match")
                                               else "≥ ") + (f"{t['target']}" if isinstance(t["target"], int)
                                                             else f"{t['target']:.2f}")
        met = "—" if t["met"] is None else ("met" if t["met"] else "**not met**")
        rows.append([label, value(t["value"]), goal or "reported", met])
    return formatting.markdown_table(["", "measured", "target", "verdict"], rows)


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


def embedded_block(path: str | Path = EMBEDDED_REPORT) -> str:
    """The committed pair's build report: sizes, vision probes and per-type exact match of the teacher and of the
    student's starting weights on the build's probe stream, the teacher's blind control and the prior baseline."""
    res = fsio.read_json(path)
    models = res["measured"]["models"]
    names = list(models)
    f = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    q = {n: models[n]["questions"] for n in names}
    rows = [["language-model parameters"] + [f"{models[n]['parameters']['params_language']:,}" for n in names],
            ["vision-tower parameters"] + [f"{models[n]['parameters']['params_vision']:,}" for n in names],
            ["weights (safetensors)"] + [f"{res['sizes'][n]['safetensors_bytes'] / 2**20:.1f} MiB" for n in names]]
    for task, label in (("object_category", "probe: object category"), ("object_colour", "probe: object colour"),
                        ("held_object", "probe: held object")):
        rows.append([label] + [f(models[n]["vision_probe"].get(task, {}).get("accuracy")) for n in names])
    rows.append(["**exact match, probe questions**"] + [f"**{f(q[n]['exact_match'])}**" for n in names])
    for qtype in q[names[0]]["per_type"]:
        rows.append([f"`{qtype}`"] + [f(q[n]["per_type"].get(qtype, {}).get("exact_match")) for n in names])
    rows.append(["blind control (blank images and clips)"] + [f(q[n].get("blind_exact_match")) for n in names])
    rows.append(["prior baseline (most frequent answer per type)"] + [f(q[n]["prior_baseline"]) for n in names])
    s = res["measured"]["settings"]
    took = ", ".join(f"`{n}` {res['pretraining'][n]['seconds'] / 60:.0f} min" for n in names
                     if res.get("pretraining", {}).get(n, {}).get("seconds") is not None)
    curves = [curve_table(n, res["pretraining"][n]["pretraining"]) for n in names
              if res.get("pretraining", {}).get(n, {}).get("pretraining", {}).get("language")]
    return "\n".join([formatting.markdown_table(["", *(f"`{n}`" for n in names)], rows), "", *curves,
                      f"*{s['questions']} probe questions and {s['scenes']} probe scenes from seed streams of their own "
                      f"({s['image_size']} px). Build time per model ({took or 'not recorded'}; run in parallel, "
                      "one core each, beside other jobs), then measured in "
                      f"{res['wall_seconds'] / 60:.0f} min, at commit "
                      f"`{str(res['commit'])[:12]}`, budget `{res['recipe_budget']}`, build seed {res['build_seed']}; "
                      f"read from `{_display(Path(path))}` by `make readme`.*"])


def curve_table(name: str, pretraining: dict, max_rows: int = 7) -> str:
    """A model's language-stage curve: exact match on the stage's probe stream, overall and per type, at evenly spaced
    recorded points (the first and the last always), with how its tower was obtained."""
    lang, vision = pretraining["language"], pretraining.get("vision", {})
    curve = lang["curve"]
    keep = sorted({round(i * (len(curve) - 1) / max(1, max_rows - 1)) for i in range(max_rows)})
    types = list(curve[-1]["per_type"])
    rows = [[f"{curve[i]['examples']:,}", f"{curve[i]['train_seconds'] / 60:.0f}", f"**{curve[i]['exact_match']:.3f}**",
             *(f"{curve[i]['per_type'].get(t, 0.0):.2f}" for t in types)] for i in keep]
    src = vision.get("reused_from") or {}
    tower = ("tower trained" if not src else "vision stage reused from an earlier build with the same vision key"
             + (f" (built at `{src['commit'][:12]}`)" if src.get("commit") else ""))
    stop = (f", stopped at the first probe reaching EM {lang.get('stop_at_em', '')}" if lang.get("stopped_early")
            else "")
    head = (f"**`{name}`, language stage** ({lang['records']:,} records, batches of {lang['batch']}, "
            f"{lang['steps']:,} steps{stop}; {tower}):")
    return "\n".join([head, "", formatting.markdown_table(["examples seen", "train min", "EM", *(f"`{t}`" for t in types)],
                                                          rows), ""])


def lm_probe_block(path: str | Path = LM_PROBE) -> str:
    """The levers of the language stage, measured on the committed towers (``benchmarks/lm_probe.py``)."""
    res = fsio.read_json(path)
    rows = []
    for name, v in res["variants"].items():
        last = v["curve"][-1]
        mid = v["curve"][len(v["curve"]) // 2]
        rows.append([f"`{name}`", v["model"], f"{v['batch_size']}", f"{v['lr']:g}",
                     f"{v['language_model_parameters']:,}", f"{mid['examples']:,}: {mid['exact_match']:.3f}",
                     f"**{last['exact_match']:.3f}**", *(f"{last['per_type'].get(t, 0.0):.2f}"
                                                         for t in sorted(last["per_type"]))])
    types = sorted(next(iter(res["variants"].values()))["curve"][-1]["per_type"])
    table = formatting.markdown_table(["variant", "tower of", "batch", "lr", "LM parameters", "midway EM",
                                       f"EM at {res['settings']['examples']:,}", *(f"`{t}`" for t in types)], rows)
    return "\n".join([table, "", f"*Each variant a fresh language model on the tower, {res['settings']['records']:,} "
                       f"distinct records, the same {res['settings']['examples']:,} examples; "
                       f"{res['wall_seconds'] / 60:.0f} min in all with `{res['command']}`; read from "
                       f"`{_display(Path(path))}` by `make readme`.*"])


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
    for name, path, block in (("embedded", EMBEDDED_REPORT, embedded_block),
                              ("kd_vs_sft", KD_VS_SFT, kd_vs_sft_block), ("vision_probe", VISION_PROBE,
                              vision_probe_block), ("cache_tail", CACHE_TAIL, cache_tail_block),
                              ("user_data", USER_DATA, user_data_block),
                              ("user_data_teacher16", USER_DATA_TEACHER16, user_data_block),
                              ("user_data_profile", USER_DATA_PROFILE, user_data_block), ("lm_probe", LM_PROBE, lm_probe_block),
                              ("plan", planblock.PLAN_VS_MEASURED, planblock.plan_block),
                              ("families", familyblock.FAMILY_PLANS, familyblock.family_block)):
        if path.exists() and _block(name).search(new):
            new = replace_block(new, name, block(path))
    blocks = ("params", "headline", "embedded", "kd_vs_sft", "vision_probe", "cache_tail", "user_data",
              "user_data_teacher16", "user_data_profile", "lm_probe", "plan", "families")
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
