# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
QSENN := $(VENV)/bin/qsenn
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo

.PHONY: install demo test clean

# Re-install only when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,export,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(QSENN) train --recipe demo --out $(DEMO_OUT) --resume

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache
