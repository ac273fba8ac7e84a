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

# cross-check references used only by tests (nnU-Net v2 itself is the oracle), installed without
# their dependencies because they would pull another torch build (nnunetv2 ->
# dynamic-network-architectures -> timm -> torchvision); REFERENCE_DEPS are the pure dependencies
# their imports need, none of which depends on torch
TEST_REFERENCES := nnunetv2==2.8.1 batchgeneratorsv2==0.3.6 batchgenerators==0.25.5 \
	acvl-utils==0.2.6 dynamic-network-architectures==0.4.4 monai==1.6.1 statsmodels==0.15.0
REFERENCE_DEPS := scikit-image==0.26.0 blosc2==4.14.1 connected-components-3d==4.1.1 tqdm==4.70.1 \
	nibabel==5.4.2 tifffile==2026.3.3 einops==0.8.2
$(VENV)/.test-references: $(BIN)/ablate Makefile
	$(BIN)/pip install -q --disable-pip-version-check --no-deps $(TEST_REFERENCES)
	$(BIN)/pip install -q --disable-pip-version-check $(REFERENCE_DEPS)
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('$(patsubst torch==%,%,$(TORCH))') or '$(TORCH)' == 'torch', torch.__version__"
	touch $@

install: $(BIN)/ablate

demo: install
	$(BIN)/ablate run studies/demo.yaml

test: install $(VENV)/.test-references
	$(BIN)/ruff check ablate tests bench
	$(BIN)/ruff format --check ablate tests bench
	OMP_NUM_THREADS=2 $(BIN)/pytest -q

test-fast: install $(VENV)/.test-references
	OMP_NUM_THREADS=2 $(BIN)/pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check ablate tests bench
	$(BIN)/ruff format --check ablate tests bench

bench: install
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf runs studies/runs studies/reports .pytest_cache
