# One entry point for users and CI.  `make run` = set up + the main job; `make test` = the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HPO    := $(BIN)/hpo
FASHION_DIR := /usr/share/datasets/fashion-mnist
CAMLIDL_PDF := /usr/share/doc/camlidl/camlidl-1.04.doc.pdf

.PHONY: run setup dev data data-fashion-mnist data-pdf browser pooler test test-fast lint typecheck clean

run: setup data
	$(HPO) run --resume

# Runtime environment from the lock file (uv installs the pinned set in seconds).
# --compile-bytecode: every hpo process (CLI, worker, trial process) imports TensorFlow, MLflow
# and Optuna; without .pyc files, and where PYTHONDONTWRITEBYTECODE is set (as on CI machines
# and in containers), each of them would compile those sources again: about a third of the
# CPU of a short study (bench/startup.py).
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  $(PYTHON) -m pip install --quiet --user --break-system-packages virtualenv && \
	  $(PYTHON) -m virtualenv --quiet $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade "uv==0.13.9"
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m compileall -q hpo
	touch $@

# optuna-gp needs PyTorch; pip picks the CPU build where one is offered locally.
dev: setup $(VENV)/.torch

$(VENV)/.torch:
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist package, and a real PDF manual for the PDF
# corpus tests (tests/test_pdf_corpus.py) from camlidl-doc, where we may install packages.
data: data-fashion-mnist data-pdf

data-fashion-mnist:
	@if [ -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST found in $(FASHION_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) || \
	  echo "warning: could not install dataset-fashion-mnist; hpo will say where it looked"; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST not installed: run 'sudo apt-get install dataset-fashion-mnist' or let Keras download it."; \
	fi

data-pdf:
	@if [ -f $(CAMLIDL_PDF) ]; then \
	  echo "PDF manual found: $(CAMLIDL_PDF)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -qq camlidl-doc >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq camlidl-doc)) || \
	  echo "warning: could not install camlidl-doc; the real-PDF corpus test skips (under CI it fails)"; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo apt-get install -y -qq camlidl-doc; \
	else \
	  echo "camlidl-doc not installed: run 'sudo apt-get install camlidl-doc' (the real-PDF corpus test skips; under CI it fails)"; \
	fi

# Headless Chromium for tests/test_ui_browser.py, from Debian, where we may install packages.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver); \
	else echo "chromium missing: sudo apt-get install chromium chromium-driver (browser tests skip; under CI they fail)"; fi

# PgBouncer for the tests and benchmark of workers behind a pooler (tests/test_pooler_faults.py,
# bench/store_scale.py), from Debian, where we may install packages.
pooler:
	@if command -v pgbouncer >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -qq pgbouncer >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq pgbouncer); \
	else echo "pgbouncer missing: sudo apt-get install pgbouncer (pooler tests skip; under CI they fail)"; fi

lint: setup
	$(BIN)/ruff check hpo tests bench conftest.py mkdocs_hooks.py
	$(BIN)/ruff format --check hpo tests bench conftest.py mkdocs_hooks.py

typecheck: setup
	$(BIN)/mypy

# Two test processes: the suite mostly waits on servers and workers (see tests/conftest.py).
PYTEST_WORKERS ?= 2
test: dev data browser pooler lint typecheck
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=15

# Everyday work: lint, types and the tests not marked slow (those that train studies or start
# servers); `make test` runs everything.
test-fast: setup lint typecheck
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -m "not slow" --durations=10

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
