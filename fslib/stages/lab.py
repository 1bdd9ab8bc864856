"""JupyterLab for this project: every kernel starts in the repository root, as under papermill and `make report`.

The notebooks' default ``reports_dir: "reports"`` is relative to the working directory. JupyterLab would start a
kernel in ``notebooks/`` and a notebook run there would write a second ``notebooks/reports/`` tree that the other
stages never read. ``make lab`` passes ``--ServerApp.kernel_manager_class=fslib.stages.lab.RepoRootKernelManager``.
"""

from __future__ import annotations

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager


class RepoRootKernelManager(AsyncMappingKernelManager):
    """Start each kernel in the server's root directory (the repository), whichever folder the notebook is in."""

    def cwd_for_path(self, path, **kwargs):
        return self.root_dir
