"""Run the four notebooks with papermill on one params file, then render the run's HTML report.

    python -m fslib.stages.pipeline params/tiny.yaml
    python -m fslib.stages.pipeline params/qwen2vl-7b-to-2b.yaml --stages 03_evaluate 04_publish

The params file is checked against the notebooks' parameter cells before any work starts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from fslib.core import config
from fslib.reporting import figures, site


def kernel_manager_class():
    """Kernels that talk to papermill over Unix sockets (IPC) where the OS has them, else jupyter_client's default.

    Over TCP, ipykernel warns at every start that the connection is unencrypted, and each kernel opens five local
    ports; Unix sockets in the Jupyter runtime folder do neither, and jupyter_client removes them at shutdown. Each
    kernel gets sockets of its own name: jupyter_client's default (``kernel-ipc-<n>`` in the working directory) is the
    same for every kernel, so pipelines run side by side (``benchmarks/kd_vs_sft.py --jobs``) talked to each other's
    kernels ("Invalid Signature").
    """
    import uuid

    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir

    if os.name != "posix":
        return AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            runtime = Path(jupyter_runtime_dir())
            runtime.mkdir(parents=True, exist_ok=True)
            ip = str(runtime / f"firstsight-{uuid.uuid4().hex[:12]}")
            super().__init__(**{"transport": "ipc", "ip": ip, **kwargs})

    return IPCKernelManager


def run(params_file: str | Path, *, notebooks_dir: str | Path | None = None, stages=config.NOTEBOOKS,
        kernel: str = "python3") -> Path:
    import papermill as pm

    params = config.load_params(params_file, notebooks_dir)
    declared = config.declared_params(notebooks_dir)
    run_name = params.get("run_name", "tiny")
    reports_dir = params.get("reports_dir", "reports")
    out = config.run_dir(reports_dir, run_name)
    (out / "notebooks").mkdir(exist_ok=True)
    executed = []
    for stage in stages:
        own = {k: v for k, v in params.items() if stage in declared[k]["notebooks"]}
        target = out / "notebooks" / f"{stage}.ipynb"
        t0 = time.time()
        print(f"[{stage}] running → {target}", flush=True)
        pm.execute_notebook(str(config.notebook_path(stage, notebooks_dir)), str(target), parameters=own,
                            kernel_name=kernel, cwd=str(Path.cwd()),
                            # one console line per cell: which cell of how many, and the cell's own description
                            # (a ``# papermill_description=...`` comment in the long cells), never minutes of silence
                            progress_bar={"desc": f"[{stage}]", "unit": "cell", "mininterval": 1.0},
                            kernel_manager_class=kernel_manager_class())
        print(f"[{stage}] done in {time.time() - t0:.0f} s", flush=True)
        executed.append(target)
    # The report joins every stage executed so far (e.g. 01-02 from a SLURM job, 03-04 from this call), in order;
    # its last section gives each notebook's start time, so a stale stage is visible.
    executed = [p for s in config.NOTEBOOKS if (p := out / "notebooks" / f"{s}.ipynb").exists()]
    errors = figures.errors_in(executed)
    if errors:
        raise RuntimeError(f"error outputs in executed notebooks: {errors}")
    html = figures.render_html(executed, out / "index.html", title=f"FirstSight report — {run_name}")
    index = site.render_index(reports_dir)
    print(f"report: {html}\nmetrics: {out / 'metrics.json'}\nall runs: {index}")
    return html


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params", help="params YAML, e.g. params/tiny.yaml")
    ap.add_argument("--stages", nargs="+", choices=config.NOTEBOOKS, default=list(config.NOTEBOOKS),
                    help="run only these notebooks (in pipeline order), e.g. 03_evaluate 04_publish after a SLURM "
                         "job ran 01-02; the report joins every stage executed so far")
    args = ap.parse_args(argv)
    try:
        run(args.params, stages=[s for s in config.NOTEBOOKS if s in args.stages])
    except config.ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
