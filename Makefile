# Two commands on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test bench setup clean

setup: $(STAMP)

# torch==2.13.0 is the CPU wheel on disk; installing it first keeps pip from
# resolving the package's torch range to a newer build with CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pinnzo solve problems/hjb20.yaml

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/pinnzo bench all --out results/bench/report.json
	$(VENV)/bin/pinnzo bench accuracy --budget 20 --quiet --out results/bench/accuracy-short

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
