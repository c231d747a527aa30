# Two commands matter: `make quickstart` and `make test`. Each creates .venv on first use.
# torch is pinned to 2.13.0: on our machines pip takes a local CPU wheel; an unpinned torch pulls CUDA builds.
# Elsewhere, choose your build, e.g. make TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: quickstart smoke test bench lint format clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[test]'
	touch $@

quickstart: $(VENV)/.installed
	$(VENV)/bin/bertforge quickstart

smoke: $(VENV)/.installed
	$(VENV)/bin/bertforge quickstart --smoke

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) -m bench.pretrain_step
	$(PY) -m bench.finetune_sentiment
	$(PY) -m bench.squad --precision bf16
	$(PY) -m bench.suite

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
