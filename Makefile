# trainrelay — the two commands: `make demo` and `make test`.
# Both create .venv from the pinned requirements in envs/ when it is missing or out of date.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
REQS := envs/requirements-cpu.txt
STAMP := $(VENV)/.trainrelay-installed
SNAKEMAKE := $(BIN)/snakemake
RUN := $(shell $(PYTHON) -c "import yaml,sys; print(yaml.safe_load(open('config/config.yaml'))['run'])" 2>/dev/null || echo demo)

.PHONY: setup setup-gpu demo test lint format dag clean-demo help

help:
	@echo "make demo      set up .venv if needed, run the whole workflow on the embedded demo (local profile)"
	@echo "make test      set up .venv if needed, run ruff, snakefmt --check, snakemake --lint, then pytest"
	@echo "make setup-gpu add the GPU extras (onnxruntime-gpu, nvidia-ml-py) from envs/requirements-gpu.txt"
	@echo "make dag       write the rule graph to results/rulegraph.dot"

$(STAMP): $(REQS) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	# torch first and alone: the exact pin selects the CPU wheel where one is provided locally.
	$(BIN)/python -m pip install --quiet torch==$$(grep -E '^torch==' $(REQS) | cut -d= -f3)
	$(BIN)/python -m pip install --quiet -r $(REQS)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

setup: $(STAMP)

# onnxruntime and onnxruntime-gpu install the same module, so the CPU build goes first; TensorRT's
# PyPI package downloads from NVIDIA's own index, so its failure does not stop the set-up.
setup-gpu: $(STAMP)
	$(BIN)/python -m pip uninstall --quiet --yes onnxruntime
	$(BIN)/python -m pip install --quiet $$(grep -vE '^(#|tensorrt|$$)' envs/requirements-gpu.txt)
	-$(BIN)/python -m pip install --quiet $$(grep -E '^tensorrt' envs/requirements-gpu.txt)

demo: $(STAMP)
	$(SNAKEMAKE) --profile local -j1
	@echo "trainrelay demo finished: results in results/$(RUN)/, report in reports/$(RUN)/"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile rules/
	$(SNAKEMAKE) --lint

# The suite on every core (pytest-xdist), each test file on one worker so that a module's shared
# workflow run is built once, files handed out in collection order (tests/conftest.py puts the
# longest first); TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, len(os.sched_getaffinity(0))))" 2>/dev/null || echo 2)

test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/snakefmt Snakefile rules/

dag: $(STAMP)
	mkdir -p results
	$(SNAKEMAKE) --rulegraph > results/rulegraph.dot
