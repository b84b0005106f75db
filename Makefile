# Two commands do all set-up on a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= workdir/demo
PYTEST_ARGS ?=
# A persistent XLA compilation cache: repeated runs (and the tests' many small jobs) skip
# recompiling the same programs.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS ?= 0

.PHONY: demo test test-fast lint bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is only needed by the PyTorch-weights tests and the side-by-side benchmark; the
	# CPU wheel is pinned so that no multi-GB CUDA build is pulled in.
	$(BIN)/python -m pip install --quiet -e '.[test,notebook]' 'torch==2.13.0'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/busgen demo --workdir=$(WORKDIR)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check busgen_jax tests configs benchmarks launch
	$(BIN)/ruff format --check busgen_jax tests configs benchmarks launch

bench: $(STAMP)
	for module in phantom_throughput pipeline_throughput sampler_quality; do \
		$(BIN)/python -m benchmarks.$$module || exit 1; done

clean:
	rm -rf $(VENV) workdir .pytest_cache
