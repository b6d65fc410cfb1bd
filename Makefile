# electra_ray — the two set-up commands are `make demo` and `make test`.
# Both create .venv if needed and install everything (CPU torch first, then the project).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Torch first: the CPU wheel lies on disk; a plain `torch` requirement would pull a CUDA build.
# The installed modules must be byte-compiled (with PYTHONDONTWRITEBYTECODE=1, as on CI, nothing
# would cache them and every Ray worker would compile torch and Ray from source): compileall does
# it on every core (pip alone does it on one: 215 s against 173 s for the whole install, 2 cores).
# Like pip, it skips the few files that are not Python 3.11 (torch's py312 test helpers).
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q --no-compile torch==$(TORCH_VERSION)
	$(PIP) install -q --no-compile -e '.[dev]'
	$(PY) -m compileall -qq -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_corpus.py
	$(PY) benchmarks/bench_tokenize.py
	$(PY) benchmarks/bench_train.py

lint: $(STAMP)
	$(PY) -m ruff check electra_ray jobs tests benchmarks scripts
	$(PY) -m ruff format --check electra_ray jobs tests benchmarks scripts

clean:
	rm -rf build demo_output .pytest_cache
