# Two commands do all the set-up: `make demo` and `make test`. Each creates or updates
# .venv (idempotent: a stamp file records the pyproject.toml it was built from).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.r2ps-installed
TORCH_VERSION ?= 2.13.0
# CUDA machines get the GPU extra (CUDA faiss, the registry's CUDA torch); others the CPU set.
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
EXTRAS := $(if $(HAS_CUDA),gpu,cpu),dev
DEMO_OUT ?= runs/demo
COSQA ?= ../shared/data/cosqa
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: venv test lint format demo corpus bench clean browser ray-head ray-stop

venv: $(STAMP)

$(STAMP): pyproject.toml
	@echo "==> setting up $(VENV) (extras: $(EXTRAS))"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@if [ -z "$(HAS_CUDA)" ]; then \
		echo "==> no CUDA: installing the CPU torch==$(TORCH_VERSION) first"; \
		$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"; \
	fi
	@echo "==> installing r2ps[$(EXTRAS)] (editable)"
	@$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@echo "==> exporting the bundled retriever to ONNX Runtime (what \`r2ps index\` embeds with)"
	@R2PS_LOG_LEVEL=WARNING $(PY) jobs/export_onnx.py --models \
		"$$($(PY) -c 'from r2ps.models.light import model_or_default; print(model_or_default(""))')"
	@touch $(STAMP)
	@echo "==> $(VENV) ready"

lint: $(STAMP)
	@echo "==> ruff"
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

format: $(STAMP)
	@$(VENV)/bin/ruff format .
	@$(VENV)/bin/ruff check --fix .

# The search-page test drives a real headless Chromium (Debian's chromium + chromium-driver).
# Installed here when missing and apt-get runs as root; never fails the run: without a
# browser that one test skips and says why.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "==> installing Debian's chromium + chromium-driver (search-page test)"; \
		( apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null ) \
			|| echo "==> could not install chromium: the search-page test will skip"; \
	else \
		echo "==> no chromium and no root apt-get: the search-page test will skip"; \
	fi

test: lint browser
	@echo "==> pytest (slow tests excluded; 'make test PYTEST_ARGS=\"-m slow\"' runs them)"
	@$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	@echo "==> the whole pipeline (demo preset) into $(DEMO_OUT)/pipeline"
	@$(PY) jobs/pipeline.py --preset demo --out $(DEMO_OUT)/pipeline \
		$(if $(wildcard $(COSQA)/code_idx_map.txt),--cosqa $(COSQA),) $(DEMO_ARGS)

corpus: $(STAMP)
	@echo "==> building the corpus from this machine's Python sources into $(DEMO_OUT)/corpus"
	@$(PY) jobs/build_corpus.py --out $(DEMO_OUT)/corpus \
		$(if $(wildcard $(COSQA)/code_idx_map.txt),--exclude $(COSQA),)

# A local Ray head whose jobs run in .venv: `ray job submit -- python jobs/...` runs the
# `python` first on the PATH of the process that started the head.
ray-head: $(STAMP)
	@PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/ray start --head
	@echo "==> submit jobs with: $(VENV)/bin/ray job submit --working-dir . -- python jobs/<job>.py ..."

ray-stop: $(STAMP)
	@$(VENV)/bin/ray stop

bench: $(STAMP)
	@$(PY) benchmarks/corpus_extract.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache
