"""Params: the notebooks' parameter cells are the single source of truth.

A params YAML may only set keys that some notebook declares in its ``parameters`` cell, with the declared type.
``load_params`` checks a YAML file before any work starts; ``check_namespace`` does the same inside a running
notebook, so ``papermill -f params/x.yaml`` and ``-p key value`` get the same checks as ``make report``.
"""

from __future__ import annotations

import difflib
import functools
import re
import types
from pathlib import Path

import yaml

from fslib.core.fsio import REPO_ROOT

NOTEBOOKS = ("01_data", "02_distill", "03_evaluate", "04_publish")
_TYPES = {"str": (str,), "int": (int,), "float": (float, int), "bool": (bool,), "list": (list,), "dict": (dict,)}
# Names IPython puts in a kernel's namespace; they are never parameters.
_KERNEL_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


class ParamsError(ValueError):
    """A params file or injected parameter that the notebooks do not accept."""


def notebook_path(name: str, notebooks_dir: str | Path | None = None) -> Path:
    return Path(notebooks_dir or REPO_ROOT / "notebooks") / f"{name}.ipynb"


@functools.lru_cache(maxsize=None)
def _declared(nb_file: str) -> dict[str, dict]:
    import nbformat
    import papermill

    found = papermill.inspect_notebook(nb_file)
    # papermill silently drops a parameter line it cannot parse (an "=" inside its comment does it), which would
    # make a valid key look unknown; refuse such a cell instead.
    cells = [c for c in nbformat.read(nb_file, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
    names = {m.group(1) for c in cells for m in re.finditer(r"^(\w+)\s*(?::[^=]*)?=", c.source, re.M)}
    if names - set(found):
        raise ParamsError(f"{nb_file}: papermill cannot parse the parameter line(s) for {sorted(names - set(found))}; "
                          "write them as `name: type = value  # comment` with no '=' in the comment")
    return found


def declared_params(notebooks_dir: str | Path | None = None) -> dict[str, dict]:
    """``{key: {"type", "default", "help", "notebooks"}}`` over all four notebooks' parameter cells."""
    out: dict[str, dict] = {}
    for nb in NOTEBOOKS:
        for key, info in _declared(str(notebook_path(nb, notebooks_dir))).items():
            entry = out.setdefault(key, {"type": info["inferred_type_name"], "default": info["default"],
                                         "help": info["help"], "notebooks": []})
            if entry["type"] != info["inferred_type_name"]:
                raise ParamsError(f"{key!r} is declared as {entry['type']} and as {info['inferred_type_name']} "
                                  f"in different notebooks; declare it once with one type")
            entry["notebooks"].append(nb)
    return out


def default_params(notebooks_dir: str | Path | None = None) -> dict:
    """``{key: value}``: every parameter's default as the notebooks declare it (papermill reports source text)."""
    import ast

    return {k: ast.literal_eval(v["default"]) for k, v in declared_params(notebooks_dir).items()}


def _check(key, value, declared, where: str) -> None:
    if key not in declared:
        close = difflib.get_close_matches(key, declared, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ParamsError(f"{where}: unknown parameter {key!r}.{hint} Valid parameters: {', '.join(sorted(declared))}")
    tname = declared[key]["type"].split("[")[0]
    ok = _TYPES.get(tname)
    if ok is None:  # an unannotated or exotic type: nothing to check against
        return
    if isinstance(value, bool) and tname != "bool" or not isinstance(value, ok):
        raise ParamsError(f"{where}: parameter {key!r} must be {declared[key]['type']}, "
                          f"got {type(value).__name__} {value!r}")


def load_params(path: str | Path, notebooks_dir: str | Path | None = None) -> dict:
    """Read and check a params YAML; errors name the file, the line and the key."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found")
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of parameter names to values")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value} if node is not None else {}
    declared = declared_params(notebooks_dir)
    for key, value in data.items():
        _check(key, value, declared, f"{path}:{lines.get(key, '?')}")
    return data


def check_namespace(namespace: dict, notebook: str) -> dict:
    """Inside a notebook: check every parameter-like global and return this notebook's resolved params.

    Catches a mistyped ``-p lerning_rate 1e-3`` or an unknown key in a ``-f`` file, which papermill only warns about.
    """
    declared = declared_params()
    for key, value in namespace.items():
        if key.startswith("_") or key in _KERNEL_NAMES or isinstance(
                value, (types.ModuleType, types.FunctionType, type, types.BuiltinFunctionType)):
            continue
        _check(key, value, declared, f"notebook {notebook}")
    own = _declared(str(notebook_path(notebook)))
    return {k: namespace[k] for k in own if k in namespace}


def run_dir(reports_dir: str | Path, run_name: str) -> Path:
    if not run_name or "/" in run_name or run_name.startswith("."):
        raise ParamsError(f"run_name {run_name!r} must be a plain folder name")
    out = Path(reports_dir) / run_name
    out.mkdir(parents=True, exist_ok=True)
    return out
