"""``python -m fslib.pipeline PARAMS``: the four notebooks on one params file (``fslib.stages.pipeline``)."""

import sys

from fslib.stages.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
