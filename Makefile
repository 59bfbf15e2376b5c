# make demo: create .venv, install, train the demo multi-task model on bundled data.
# make test: create .venv, install, lint, type-check and run the test suite (the benchmark-scale tests excluded).
# make test-bench: the benchmark-scale tests (bench/quality.py --quick, multi-process runs, fault injection).
# make docs: build the documentation site (mkdocs.yml, docs/) into site/; strict: a broken link fails.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# On the project's CPU machines torch 2.13.0 is a CPU build on local disk; elsewhere pip picks your platform's torch.
TORCH_SPEC ?= torch==2.13.0
# The versions CI tested (CPython 3.11). On another Python, `make CONSTRAINTS= test` installs from pyproject's ranges.
CONSTRAINTS ?= constraints.txt
CONSTRAIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
STAMP := $(VENV)/.installed

.PHONY: demo test test-bench docs install constraints clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" || $(PIP) install -q torch
	$(PIP) install -q $(CONSTRAIN) -e ".[dev,demo]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/thawing train configs/demo.yaml

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m bench

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# Rewrite constraints.txt from the installed environment (after changing pyproject's ranges; torch stays TORCH_SPEC's).
constraints: $(STAMP)
	{ echo "# The versions CI installs and tests (CPython 3.11, CPU). Regenerate: make constraints"; \
	  $(PIP) freeze --exclude-editable | grep -iv '^torch=='; } > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)

clean:
	rm -rf $(VENV) runs .pytest_cache
