# `make demo` and `make test` each create .venv if it is missing, install the project, and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= outputs/demo

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/avatarjax train --config configs/lm/synthface_small.py --workdir $(DEMO_DIR)
	$(BIN)/avatarjax sample --config configs/lm/synthface_small.py --workdir $(DEMO_DIR) -- --prompt "def " --tokens 300
	@echo "demo output: $(abspath $(DEMO_DIR)) (metrics.jsonl, tb/, checkpoints/, samples/)"

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow" tests

bench: $(STAMP)
	$(BIN)/avatarjax bench trainer

clean:
	rm -rf $(VENV) outputs .pytest_cache
