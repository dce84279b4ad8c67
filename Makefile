# keras-lossal: every target creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Label Studio is a Django app with its own pins: it lives in a venv of its own, started by tests on localhost.
LABEL_STUDIO_VERSION := 1.23.2
LS_VENV  := .venv-labelstudio
LS_STAMP := $(LS_VENV)/.installed-$(LABEL_STUDIO_VERSION)
export LOSSAL_LABEL_STUDIO ?= $(CURDIR)/$(LS_VENV)/bin/label-studio
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0
# The package `make structure` checks (a test points it at synthetic packages).
PACKAGE ?= keras_lossal

.PHONY: help venv labelstudio test test-all demo fashion-mnist lint structure format bench bench-all clean

help:
	@echo "make test      quick test suite (not slow)"
	@echo "make test-all  every test, slow ones included (CI); installs Label Studio in .venv-labelstudio for its tests"
	@echo "make demo      the main job on Fashion-MNIST (CPU, a few minutes)"
	@echo "make lint      make structure, then ruff"
	@echo "make structure no function in keras_lossal/ over 60 lines of code, no upward import or import cycle, no constant defined twice"
	@echo "make bench     speed benchmarks (ratios on stdout; see benchmarks/RESULTS.md)"
	@echo "make bench-all also Beam and the label-efficiency protocol (about an hour)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

$(LS_STAMP):
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LS_VENV)/bin/python -m pip install -q "label-studio==$(LABEL_STUDIO_VERSION)"
	touch $(LS_STAMP)

labelstudio: $(LS_STAMP)

test: $(STAMP)
	$(PY) -m pytest -q --durations=15 -m "not slow and not integration" tests
	$(PY) -m pytest -q -p no:cacheprovider --doctest-modules keras_lossal

test-all: $(STAMP) $(LS_STAMP)
	$(PY) -m pytest -q -m "not integration" tests
	$(PY) -m pytest -q -p no:cacheprovider --doctest-modules keras_lossal

demo: $(STAMP) fashion-mnist
	$(PY) examples/demo.py

fashion-mnist:
	@bash scripts/ensure_fashion_mnist.sh

lint: $(STAMP) structure
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The layers are defined once, in scripts/check_layers.py (docs/architecture.md draws them).
structure: $(STAMP)
	$(PY) scripts/check_function_length.py --max 60 $(PACKAGE)
	$(PY) scripts/check_layers.py $(PACKAGE)
	$(PY) scripts/check_constants.py $(PACKAGE)

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP) fashion-mnist
	$(PY) benchmarks/train_overhead.py
	$(PY) benchmarks/scoring.py
	$(PY) benchmarks/acquisition.py
	$(PY) benchmarks/serving.py

# Long: Beam vs triage (~10 min) and the 4-strategy x 3-seed Fashion-MNIST protocol (~1 h on 2 cores).
bench-all: bench
	$(PY) benchmarks/beam.py
	$(PY) benchmarks/label_efficiency.py

clean:
	rm -rf $(VENV) $(LS_VENV) build dist *.egg-info .pytest_cache .ruff_cache
