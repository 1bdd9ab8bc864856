# FirstSight: the two commands are `make report` and `make test`. Both create or update .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PARAMS ?= params/tiny.yaml
RUN ?= tiny
LAB_PORT ?= 8888

.PHONY: report test test-fast embedded lab readme compare check-report nbdime clean-reports

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# constraints.txt pins torch/torchvision: an unpinned torch pulls a different multi-GB build. --no-compile: byte-code
	# is written on first import instead, for the modules in use only (saves about 35 s of a cold install).
	$(PY) -m pip install --quiet --no-compile -c constraints.txt -e '.[notebooks,dev]'
	# The notebooks' kernelspec is "python3": installed into .venv, it runs this interpreter (papermill and JupyterLab).
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (FirstSight)" >/dev/null
	touch $(STAMP)

report: $(STAMP)  ## run the four notebooks on $(PARAMS); writes reports/<run>/index.html and reports/index.html
	$(PY) -m fslib.pipeline $(PARAMS)

test: $(STAMP)  ## the import layers, then the test suite (GPU tests are skipped without a GPU; the Chromium test needs `chromium`)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

test-fast: $(STAMP)  ## the import layers, then the tests not marked slow (no papermill run, no subprocess, no tiny_run)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow"

# The committed tiny pair under embedded/, rebuilt from the recipe in fslib/world/embedded.py (about an hour on 2 cores;
# run it in the background). EMBEDDED_ARGS passes options, e.g. EMBEDDED_ARGS="--out /tmp/pair-s1 --build-seed 1".
embedded: $(STAMP)  ## rebuild the embedded pair (embedded/: weights, processor, recipe.json, build_report.json)
	$(PY) -m fslib.world.build $(EMBEDDED_ARGS)

# Kernels start in the repository root (fslib.stages.lab), as under papermill, so the notebooks' defaults find reports/.
lab: $(STAMP)  ## JupyterLab on http://127.0.0.1:$(LAB_PORT) with the project's kernel
	$(VENV)/bin/jupyter lab --no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) \
		--ServerApp.root_dir=$(CURDIR) --ServerApp.kernel_manager_class=fslib.stages.lab.RepoRootKernelManager \
		$(if $(LAB_TOKEN),--IdentityProvider.token=$(LAB_TOKEN),) $(if $(filter 0,$(shell id -u)),--allow-root,)

readme: $(STAMP)  ## regenerate README.md's params reference and headline (from reports/tiny/metrics.json)
	$(PY) -m fslib.reporting.readme

compare: $(STAMP)  ## make compare A=<run> B=<run>: params and metric differences, nbdime diff of the notebooks
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make compare A=<run> B=<run>  (names under reports/)"; exit 2; }
	$(PY) -m fslib.reporting.compare $(A) $(B) --out reports/compare-$(A)-vs-$(B).md

check-report: $(STAMP)  ## open reports/$(RUN)/index.html in headless Chromium: figures, headline, no errors, no requests
	$(PY) -m fslib.reporting.browser reports/$(RUN)/index.html --screenshot reports/$(RUN)/screenshot.png

nbdime: $(STAMP)  ## use nbdime as git's diff/merge driver for notebooks in this clone
	$(VENV)/bin/nbdime config-git --enable

clean-reports:
	rm -rf reports/*/ reports/index.html
