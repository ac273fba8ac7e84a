# Two entry points for a fresh machine: `make demo` and `make test` (each installs first).
# TORCH picks the torch build: the default CPU wheel installs in seconds; on a CUDA machine use
# `make demo TORCH=torch` (PyPI's Linux torch wheels are CUDA builds).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test test-fast lint bench clean

$(BIN)/ablate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,cluster]'
	touch $@

# cross-check references used only by tests, installed without their dependencies because they
# would pull another torch build (dynamic-network-architectures -> timm -> torchvision)
TEST_REFERENCES := dynamic-network-architectures==0.4.4 monai==1.6.1 statsmodels==0.15.0
$(VENV)/.test-references: $(BIN)/ablate
	$(BIN)/pip install -q --disable-pip-version-check --no-deps $(TEST_REFERENCES)
	touch $@

install: $(BIN)/ablate

demo: install
	$(BIN)/ablate run studies/demo.yaml

test: install $(VENV)/.test-references
	$(BIN)/ruff check ablate tests bench
	OMP_NUM_THREADS=2 $(BIN)/pytest -q

test-fast: install $(VENV)/.test-references
	OMP_NUM_THREADS=2 $(BIN)/pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check ablate tests bench

bench: install
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf runs reports/demo .pytest_cache
