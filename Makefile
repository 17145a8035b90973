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

bench: venv broker postgres
	$(PY) bench/ledger_write.py
	$(PY) bench/agent_footprint.py
	$(PY) bench/trigger_latency.py
	$(PY) bench/storm.py --own-node
	$(PY) bench/cluster_storm.py

# The storm bench on the machine's shared broker: 10,000 queues there stall it for
# everything else (see docs/performance.md).
bench-machine: venv broker
	$(PY) bench/storm.py

# The wheels are downloaded from PyPI; the client installs with no network.
windows-bundle: venv
	$(PY) scripts/windows_bundle.py --out dist

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
