# The two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# torch and torchvision are pinned as a pair; override both together, e.g.
#   make test TORCH_SPEC="torch==2.9.1 torchvision==0.24.1"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH_SPEC)' | tr -c 'A-Za-z0-9.\n' '_')
PYTEST_ARGS ?=

SWEEPS := $(wildcard sweeps/*.yaml)

.PHONY: demo test unit integration smoke bench clean install cluster-up

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

# Every shipped sweep's offline smoke twin, end to end (run, analyze, report), under runs/smoke/.
smoke: $(STAMP)
	@set -e; for f in $(SWEEPS); do \
	  name=$$(basename $$f .yaml); echo "== $$name"; \
	  for verb in run analyze report; do \
	    $(VENV)/bin/impsweep $$verb $$f --smoke --set workdir=runs/smoke/$$name; \
	  done; \
	done

# Performance targets live here, never in `make test`; each writes benchmarks/results/*.json.
bench: $(STAMP)
	$(PY) benchmarks/similarity_bench.py
	$(PY) benchmarks/train_bench.py
	$(PY) benchmarks/fused_bench.py
	$(PY) benchmarks/orchestration_bench.py
	$(PY) benchmarks/analysis_bench.py
	$(PY) benchmarks/storage_bench.py
	$(PY) benchmarks/tracking_bench.py

# Starts or updates the Ray cluster of cluster.yaml (`ray` from PATH; e.g. RAY_UP_ARGS=-y). Its
# rsync leaves out .git, so the revision of the code it copies is recorded first in
# .impsweep-revision (HEAD's full sha, "-dirty" when tracked files differ from it), which the
# runs on the cluster record as their code revision.
CLUSTER ?= cluster.yaml
RAY ?= ray
RAY_UP_ARGS ?=
cluster-up:
	@rev=$$(git rev-parse HEAD) && { git diff --quiet HEAD -- || rev=$$rev-dirty; } \
	  && echo $$rev > .impsweep-revision && echo "code revision $$rev"
	$(RAY) up $(CLUSTER) $(RAY_UP_ARGS)

clean:
	rm -rf runs .pytest_cache
