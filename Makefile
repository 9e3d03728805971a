# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
QSENN := $(VENV)/bin/qsenn
STAMP := $(VENV)/.installed

# The demo: the embedded synthetic dataset, generated under DEMO_DATA on first use.
DEMO_DATA ?= data
DEMO_OUT ?= runs/demo
DEMO_RUN := $(DEMO_OUT)/resnet18/synth/0
DEMO_TRAIN := $(QSENN) train --recipe demo --seed 0 --data-root $(DEMO_DATA) --out $(DEMO_OUT) --resume
# Four test images of the embedded dataset, from four classes.
TEST_IMAGES := $(QSENN) data examples --recipe demo --data-root $(DEMO_DATA) --count 4

# Real-data validation (docs/validation.md): Fashion-MNIST from the Debian package; dense,
# Q-SENN and SLDD with one seed; the Q-SENN model exported and run over the whole test set.
FASHION_MNIST := /usr/share/datasets/fashion-mnist
VALIDATE_OUT ?= runs/fashion-mnist
VALIDATE_SEED ?= 0
VALIDATE_RUN := $(VALIDATE_OUT)/resnet18s/fashion-mnist/$(VALIDATE_SEED)
VALIDATE_TRAIN := $(QSENN) train --dataset fashion-mnist --seed $(VALIDATE_SEED) \
	--data-root $(FASHION_MNIST) --out $(VALIDATE_OUT) --resume

.PHONY: install demo test test-fast lint validate clean

# Re-install only when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,export,serve,dev]'
	touch $(STAMP)

install: $(STAMP)

# Q-SENN and SLDD share the dense model of the run directory; each keeps its own final model.
# The atlas (what each feature means) goes into the exported models; the model card shows it.
demo: $(STAMP)
	$(DEMO_TRAIN) --model-type qsenn
	$(DEMO_TRAIN) --model-type sldd
	$(QSENN) atlas $(DEMO_RUN) --model-type qsenn
	$(QSENN) atlas $(DEMO_RUN) --model-type sldd
	$(QSENN) export $(DEMO_RUN) --model-type qsenn --format onnx
	$(QSENN) export $(DEMO_RUN) --model-type sldd --format onnx
	$(QSENN) predict $(DEMO_RUN)/qsenn.onnx $$($(TEST_IMAGES)) --top-k 3
	$(QSENN) explain $(DEMO_RUN)/qsenn.onnx $$($(TEST_IMAGES) | head -n 1) --out $(DEMO_RUN)/explain.png
	$(QSENN) report $(DEMO_RUN)/qsenn.onnx --out $(DEMO_RUN)/card.html $$($(TEST_IMAGES) | head -n 2 | sed 's/^/--image /')

validate: $(STAMP) $(FASHION_MNIST)
	$(VALIDATE_TRAIN) --model-type qsenn
	$(VALIDATE_TRAIN) --model-type sldd
	$(QSENN) validate-run $(VALIDATE_RUN) --results-dir benchmarks/results --sheet docs/fashion-mnist-features.png

$(FASHION_MNIST):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get install -y dataset-fashion-mnist || { apt-get update && apt-get install -y dataset-fashion-mnist; }; \
	else \
		echo "Fashion-MNIST is not installed; run: sudo apt-get install -y dataset-fashion-mnist" >&2; exit 1; \
	fi

# Lint (ruff: rules and format) and types (mypy), configured in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

# The fast lane: everything but the tests marked slow (training runs, kill chains).
test-fast: lint
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
