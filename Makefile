# The two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# torch and torchvision are pinned as a pair; override both together, e.g.
#   make test TORCH_SPEC="torch==2.9.1 torchvision==0.24.1"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH_SPEC)' | tr -c 'A-Za-z0-9.\n' '_')
PYTEST_ARGS ?=

.PHONY: demo test unit integration smoke bench clean install

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Re-installs when pyproject.toml changes or the torch pair is overridden.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]" $(TORCH_SPEC)
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/impsweep demo

test: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m pytest tests -m "not integration" $(PYTEST_ARGS)

integration: $(STAMP)
	$(PY) -m pytest tests -m integration $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
