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
SYNTH := $(DEMO_DATA)/synth/c16-tr100-te50-s64-seed0/CUB_200_2011
# Four test images of the embedded dataset, from four classes (50 test images per class, in
# class order; split flag 0 in train_test_split.txt).
TEST_IMAGES := awk 'NR==FNR {if ($$2 == 0) test[$$1]; next} ($$1 in test) {print "$(SYNTH)/images/" $$2}' \
	$(SYNTH)/train_test_split.txt $(SYNTH)/images.txt | awk 'NR % 50 == 1' | head -n 4

# Real-data validation (docs/validation.md): Fashion-MNIST from the Debian package; dense,
# Q-SENN and SLDD with one seed; the Q-SENN model exported and run over the whole test set.
FASHION_MNIST := /usr/share/datasets/fashion-mnist
VALIDATE_OUT ?= runs/fashion-mnist
VALIDATE_SEED ?= 0
VALIDATE_RUN := $(VALIDATE_OUT)/resnet18s/fashion-mnist/$(VALIDATE_SEED)
VALIDATE_TRAIN := $(QSENN) train --dataset fashion-mnist --seed $(VALIDATE_SEED) \
	--data-root $(FASHION_MNIST) --out $(VALIDATE_OUT) --resume

.PHONY: install demo test validate clean

# Re-install only when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,export,serve,dev]'
	touch $(STAMP)

install: $(STAMP)

# SLDD first, Q-SENN last: both share the dense model, and RUN/final.pt points at the last one.
demo: $(STAMP)
	$(DEMO_TRAIN) --model-type sldd
	$(DEMO_TRAIN) --model-type qsenn
	$(QSENN) export $(DEMO_RUN) --format onnx
	$(QSENN) predict $(DEMO_RUN)/model.onnx $$($(TEST_IMAGES)) --top-k 3
	$(QSENN) explain $(DEMO_RUN)/model.onnx $$($(TEST_IMAGES) | head -n 1) --out $(DEMO_RUN)/explain.png

# SLDD first, Q-SENN last, as in the demo.
validate: $(STAMP) $(FASHION_MNIST)
	$(VALIDATE_TRAIN) --model-type sldd
	$(VALIDATE_TRAIN) --model-type qsenn
	$(QSENN) validate-run $(VALIDATE_RUN) --results-dir benchmarks/results --sheet docs/fashion-mnist-features.png

$(FASHION_MNIST):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get install -y dataset-fashion-mnist || { apt-get update && apt-get install -y dataset-fashion-mnist; }; \
	else \
		echo "Fashion-MNIST is not installed; run: sudo apt-get install -y dataset-fashion-mnist" >&2; exit 1; \
	fi

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache
