# FirstSight: the two commands are `make report` and `make test`. Both create or update .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PARAMS ?= params/tiny.yaml

.PHONY: report test lab nbdime compare clean-reports

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# constraints.txt pins torch/torchvision: an unpinned torch pulls a different multi-GB build.
	$(PY) -m pip install --quiet -c constraints.txt -e '.[notebooks,dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (FirstSight)" >/dev/null
	touch $(STAMP)

report: $(STAMP)  ## run the four notebooks on $(PARAMS) and render reports/<run>/index.html
	$(PY) -m fslib.pipeline $(PARAMS)

test: $(STAMP)  ## the test suite (GPU tests are skipped without a GPU)
	$(PY) -m pytest -q

lab: $(STAMP)  ## JupyterLab with the project's kernel
	$(VENV)/bin/jupyter lab --no-browser --ServerApp.ip=127.0.0.1 --notebook-dir=. $(if $(filter 0,$(shell id -u)),--allow-root,)

nbdime: $(STAMP)  ## use nbdime as git's diff/merge driver for notebooks in this clone
	$(VENV)/bin/nbdime config-git --enable

clean-reports:
	rm -rf reports/*/
