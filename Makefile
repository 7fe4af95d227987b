# One way in: these targets are what people and CI run.
#   make demo   - set everything up and run the demo pipeline
#   make test   - set everything up and run the whole test suite (cargo test + pytest)
#   make lint   - clippy -D warnings, rustfmt, ruff, mypy --strict, import layers, size ceilings, stubtest
#   make bench  - the benchmarks in benches/ (bench-postgres: the PostgreSQL ones alone)
#   make stress - the reliability tests (tests/reliability) at their full sizes
#   make soak   - loop the reliability mix for SOAK_HOURS hours, checking resources stay flat

VENV    ?= .venv
PY      := $(VENV)/bin/python
DEPS    := $(VENV)/.deps-installed
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

# Python trees that are linted (benches/ may not exist in a stripped checkout).
PY_TREES := $(wildcard python tests benches examples)

.PHONY: demo test test-rust test-python lint build bench bench-postgres stress soak clean

$(PY):
	python3 -m venv $(VENV)

$(DEPS): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "maturin>=1.7,<2" "cloudpickle>=2.1" "psutil>=5.9" "rich>=13" \
	    pytest pytest-timeout hypothesis ruff mypy import-linter
	touch $@

# Builds the extension in release mode and installs the package in editable form.
build: $(DEPS)
	$(VENV)/bin/maturin develop --release --quiet

demo: build
	$(PY) examples/pipeline.py

# The tests that need PostgreSQL run against a throwaway server started in a
# temporary directory (scripts/pg-server) and stopped at the end, even when a
# test fails; STOKER_REQUIRE_PG=1 makes them fail rather than skip without it.
# A server given in STOKER_PG_URL is used as it is.
test: build
	@set -e; \
	if [ -n "$$STOKER_PG_URL" ]; then \
	    STOKER_REQUIRE_PG=1 $(MAKE) --no-print-directory test-rust test-python; \
	else \
	    pgdir=$$(mktemp -d /tmp/stoker-pg.XXXXXX); \
	    trap 'scripts/pg-server stop "'$$pgdir'"; rm -rf "'$$pgdir'"' EXIT; \
	    url=$$(scripts/pg-server start "$$pgdir"); \
	    STOKER_PG_URL=$$url STOKER_PG_DIR=$$pgdir STOKER_REQUIRE_PG=1 \
	        $(MAKE) --no-print-directory test-rust test-python; \
	fi

test-rust:
	cargo test --workspace --quiet

test-python: build
	$(PY) -m pytest -q

lint: build
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	$(VENV)/bin/ruff check $(PY_TREES)
	$(VENV)/bin/ruff format --check $(PY_TREES)
	$(VENV)/bin/mypy --strict python/stoker
	$(VENV)/bin/lint-imports --no-cache
	$(PY) scripts/check-layout
	$(PY) -m mypy.stubtest stoker._core --allowlist stubtest-allowlist.txt

# Full sizes: 10,000 jobs under 50 worker and 3 supervisor kills, 100,000 jobs
# over several supervisors, and so on (tests/reliability, --stress).
stress: build
	STOKER_STRESS=1 $(PY) -m pytest -q -s tests/reliability --stress -o timeout=7200

SOAK_HOURS ?= 1
soak: build
	$(PY) benches/soak.py --hours $(SOAK_HOURS)

# The PostgreSQL benchmarks run against a throwaway server with durable
# settings (fsync on), started and stopped here like the tests' one.
bench: build
	$(PY) -m pip install -q flexiq huey loky pebble matplotlib
	$(PY) benches/run.py
	$(PY) benches/wait_cost.py
	$(MAKE) --no-print-directory bench-postgres

bench-postgres: build
	@set -e; \
	pgdir=$$(mktemp -d /tmp/stoker-pg-bench.XXXXXX); \
	trap 'scripts/pg-server stop "'$$pgdir'"; rm -rf "'$$pgdir'"' EXIT; \
	url=$$(STOKER_PG_DURABLE=1 scripts/pg-server start "$$pgdir"); \
	STOKER_PG_URL=$$url cargo bench -p stoker-tests --bench pg_claim; \
	STOKER_PG_URL=$$url $(PY) benches/postgres.py

clean:
	rm -rf $(VENV) target
