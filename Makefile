# make demo   - set everything up on a fresh machine and show a trigger end to end
# make test   - the whole test suite against the real local broker and PostgreSQL
# make lint   - ruff (lint + format check) and mypy --strict (also as on Windows, for agent/)
# make windows-bundle - dist/setevnt-windows-*.zip: an offline install for Windows clients
# make bench  - benchmarks that print their figures
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: all demo test lint format bench bench-machine broker postgres tools venv clean windows-bundle

all: lint test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

broker:
	bash scripts/ensure-broker.sh

postgres:
	bash scripts/ensure-postgres.sh

tools:
	bash scripts/ensure-tools.sh

demo: venv broker
	$(PY) scripts/demo.py

# The tests mostly wait on the broker and the processes they start, so they run on
# several workers, one module per worker at a time; the exclusive ones (they stop the
# broker or raise an alarm for everyone) then run alone. Both phases run whatever fails.
TEST_WORKERS ?= 3
test: venv broker postgres tools
	@$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m 'not exclusive' $(PYTEST_ARGS); \
	shared=$$?; \
	$(PY) -m pytest -m exclusive $(PYTEST_ARGS); \
	alone=$$?; \
	echo "make test: shared phase exit $$shared, exclusive phase exit $$alone"; \
	[ $$shared -eq 0 ] && [ $$alone -eq 0 ]

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	# The agent as it type-checks on Windows: its pywin32 service and the Windows branches.
	$(VENV)/bin/mypy --platform win32 -p agent

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Every benchmark runs, and each prints its figures; one that missed its target fails the
# target at the end instead of skipping the ones after it.
bench: venv broker postgres
	@missed=""; \
	for bench in ledger_write.py agent_footprint.py trigger_latency.py "storm.py --own-node" \
		cluster_storm.py; do \
		echo "$(PY) bench/$$bench"; \
		$(PY) bench/$$bench || missed="$$missed bench/$$bench;"; \
	done; \
	if [ -n "$$missed" ]; then echo "bench: missed a target or failed:$$missed" >&2; exit 1; fi

# The storm bench on the machine's shared broker: 10,000 queues there stall it for
# everything else (see docs/performance.md).
bench-machine: venv broker
	$(PY) bench/storm.py

# The wheels are downloaded from PyPI; the client installs with no network.
windows-bundle: venv
	$(PY) scripts/windows_bundle.py --out dist

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
