"""Keep README.md's generated blocks current; nothing in them is typed by hand.

    python -m fslib.readme            # make readme: rewrite both blocks
    python -m fslib.readme --check    # exit 1 when the params reference is stale (tests/test_readme.py)

- ``params``: the params reference, generated from the four notebooks' ``parameters`` cells (name, type, default,
  comment, and which notebooks read it).
- ``headline``: the headline result, read from the latest tiny run's ``reports/tiny/metrics.json``. Left as it is
  when that file does not exist (a fresh clone), since only a run can produce those numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path

from fslib import config, headline

README = config.REPO_ROOT / "README.md"
TINY_METRICS = config.REPO_ROOT / "reports" / "tiny" / "metrics.json"
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
    return headline.markdown_table(["param", "type", "default", "notebooks", "meaning"], rows)


def headline_block(metrics_path: str | Path = TINY_METRICS) -> str:
    """The headline sentence and table of a run, with where and when they were read."""
    metrics_path = Path(metrics_path)
    metrics = config.read_json(metrics_path)
    header, rows = headline.table_rows(metrics, ("exact_match", "f1", "params", "decode_s_per_token",
                                                 "weights_bytes"))
    when = dt.datetime.fromtimestamp(metrics_path.stat().st_mtime).strftime("%Y-%m-%d")
    sha = metrics.get("environment", {}).get("git_sha", "unknown")
    return "\n".join([headline.summary_line(metrics, metrics_path.parent.name), "",
                      headline.markdown_table(header, rows), "",
                      f"*Read from `{_display(metrics_path)}` (run of {when}, commit `{sha[:12]}`) by "
                      "`make readme`; weights in MiB.*"])


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(config.REPO_ROOT))
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
    changed = [n for n in ("params", "headline") if current_block(text, n) != current_block(new, n)]
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
