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

FOUNDATION ?= workdir/foundation

.PHONY: demo test test-fast lint bench clean foundation oracle

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

# Rebuilds the shipped phantom foundation model (busgen_jax/assets/phantom_foundation) from
# scratch: corpus (cached), pretraining (resumable: rerun after an interruption), sampler
# measurements for the model card, then the copy into the package with checksums.
foundation: $(STAMP)
	start=$$(date +%s) && $(BIN)/busgen pretrain --config=configs/pretrain.py:phantom_foundation \
		--workdir=$(FOUNDATION)/pretrain && echo $$(( $$(date +%s) - start )) > $(FOUNDATION)/seconds
	$(BIN)/python -m benchmarks.foundation_quality --generator=$(FOUNDATION)/pretrain/export \
		--facts=$(FOUNDATION)/facts.json --grid=$(FOUNDATION)/samples.png
	$(BIN)/python -m busgen_jax.jobs.ship_foundation --export=$(FOUNDATION)/pretrain/export \
		--card_facts=$(FOUNDATION)/facts.json --grid=$(FOUNDATION)/samples.png \
		--sampling_preset=phantom_foundation --pretrain_workdir=$(FOUNDATION)/pretrain \
		--train_seconds=$$(cat $(FOUNDATION)/seconds)

# Rebuilds the shipped phantom oracle (busgen_jax/assets/phantom_oracle), the judge of the demo's
# quality gates: a CNN trained on the built-in benign_dcis phantom, scored once on its test split.
ORACLE ?= workdir/oracle
oracle: $(STAMP)
	mkdir -p $(ORACLE) && start=$$(date +%s) && $(BIN)/busgen train-classifier \
		--config=configs/classifier.py:oracle --workdir=$(ORACLE) \
		&& echo $$(( $$(date +%s) - start )) > $(ORACLE)/seconds
	$(BIN)/python -m busgen_jax.jobs.ship_oracle --workdir=$(ORACLE) \
		--train_seconds=$$(cat $(ORACLE)/seconds)

bench: $(STAMP)
	for module in phantom_throughput pipeline_throughput sampler_quality; do \
		$(BIN)/python -m benchmarks.$$module || exit 1; done

clean:
	rm -rf $(VENV) workdir .pytest_cache
