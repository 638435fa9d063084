# churn-stream command runner. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml setup.py | sha1sum | cut -c1-12)
# The modules setup.py compiles with mypyc, and when they were last compiled.
NATIVE_SOURCES := $(shell grep -o '"stream/[a-z_]*\.py"' setup.py | tr -d '"')
NATIVE_STAMP := $(VENV)/.native

.PHONY: help setup demo test unit integration lint schemas pure clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@ $(NATIVE_STAMP)

# pip compiled them at install; after an edit or a checkout, compile them again in place.
$(NATIVE_STAMP): $(STAMP) $(NATIVE_SOURCES)
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch $@

setup: $(STAMP) $(NATIVE_STAMP)  ## Create .venv, install churn-stream and its test tools, compile (mypyc)
	@sh scripts/install-system-deps.sh
	@[ -d tests/deploy/crd_validator/node_modules ] || npm ci --prefix tests/deploy/crd_validator \
		--no-audit --no-fund --loglevel=error

demo: setup  ## Embedded broker + worker + simulator + live metrics (ARGS="--duration 60")
	$(BIN)/churn-stream demo $(ARGS)

test: setup lint  ## The whole test suite: lint, unit and integration tests
	$(BIN)/pytest $(ARGS)

unit: setup  ## Unit tests only (no network)
	$(BIN)/pytest tests/unit $(ARGS)

integration: setup  ## Integration tests on the embedded broker
	$(BIN)/pytest tests/integration $(ARGS)

lint: setup  ## ruff check, ruff format --check and mypy (the package)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy stream

schemas: setup  ## Regenerate schemas/ from the pydantic models
	$(BIN)/python -m stream.schemas

pure:  ## Remove the mypyc builds: run the pure Python modules (CHURN_PURE_PYTHON=1 keeps them so)
	rm -rf build stream/*.so stream_native__mypyc*.so $(NATIVE_STAMP)

clean: pure  ## Remove the virtualenv, the mypyc builds and local data
	rm -rf $(VENV) data .pytest_cache .ruff_cache .hypothesis
