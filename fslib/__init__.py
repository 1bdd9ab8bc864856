"""FirstSight: distilling Qwen2-VL for egocentric question answering."""


def _figures_as_png() -> None:
    """In a Jupyter kernel, show a matplotlib Figure that a cell returns as one PNG.

    fslib draws off-screen with Agg (figures are returned, never popped up). Under Agg, IPython prints a returned
    Figure as "<Figure size ...>" text, so the report would lose it. This registers IPython's own PNG formatter,
    as ``%matplotlib inline`` does, but without inline's end-of-cell flush, which would show it a second time.
    """
    import sys

    if "ipykernel" not in sys.modules:  # plain Python: nothing to display, and no IPython import cost
        return
    from IPython import get_ipython
    from IPython.core.pylabtools import select_figure_formats

    shell = get_ipython()
    if shell is not None:
        select_figure_formats(shell, {"png"}, bbox_inches="tight")


_figures_as_png()
