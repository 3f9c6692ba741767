# txstream — `make demo` runs the whole system, `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
READY  := $(VENV)/.installed

.PHONY: demo cluster-demo test test-cluster install lint format lock init-db serve screenshots bench-ingest bench-cluster bench-api bench-heavy bench-scale clean

demo: $(READY)            ## emitter + subscriber + web app; embedded Redis/SQLite unless configured
	$(BIN)/python -m txstream.demo

cluster-demo: $(READY)    ## the same on a 3-master, 3-replica Redis Cluster it starts (var/cluster)
	$(BIN)/python -m txstream.cluster_demo

test: $(READY)            ## the test suite but the cluster tests (integration tests need Redis, MariaDB)
	$(BIN)/pytest -m "not cluster"

test-cluster: $(READY)    ## the tests on private Redis Clusters (need redis-server, redis-cli)
	$(BIN)/pytest -m cluster

install: $(READY)         ## create .venv and install requirements-dev.lock (runtime + tools)

lint: $(READY)            ## ruff lint and format check; bandit (settings in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/bandit --quiet --configfile pyproject.toml --recursive .

format: $(READY)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

init-db: $(READY)         ## create the database and tables named by DATABASE_URL
	$(BIN)/flask --app app init-db

serve: $(READY)           ## the web app: nginx on WEB_BIND, gunicorn behind it (WEB_WORKERS, WEB_THREADS)
	rm -rf var/prometheus && mkdir -p var/prometheus  # the workers' metrics: from zero
	PROMETHEUS_MULTIPROC_DIR=$(CURDIR)/var/prometheus \
	  $(BIN)/python -m txstream.serve  # nginx on WEB_BIND, gunicorn behind it

screenshots: $(READY)     ## docs/screenshot-*.png of the pages, with demo data (needs Redis, MariaDB, chromium)
	$(BIN)/python docs/screenshots.py

bench-ingest: $(READY)    ## ingest tx/s per mode (needs Redis, MariaDB); writes docs/ingest.png
	$(BIN)/pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/ingest.py

bench-cluster: $(READY)   ## tx/s vs partitions, subscribers; WAIT; failover, on a private Redis Cluster
	$(BIN)/python bench/cluster.py

bench-api: $(READY)       ## API requests/s and p50/p99 at 10M rows under gunicorn (needs wrk)
	@command -v wrk >/dev/null || { echo "bench-api needs wrk: apt-get install wrk"; exit 1; }
	$(BIN)/python bench/api.py

bench-heavy: $(READY)     ## one user with 1M transactions: their sums' p99 against light users' (needs wrk)
	@command -v wrk >/dev/null || { echo "bench-heavy needs wrk: apt-get install wrk"; exit 1; }
	$(BIN)/python bench/heavy_user.py

bench-scale: $(READY)     ## ingest as population and history grow (issue 21), private servers; docs/scale.png
	$(BIN)/pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/scale.py

# The lock files pin every package, indirect ones too, with hashes: every install gets the
# same files. Production: pip install --require-hashes -r requirements.lock
$(READY): requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.lock
	touch $@

# pip-tools in a venv of its own, so that .venv holds exactly what the lock says. It reads
# PyPI alone (--isolated: no local index or wheel folder), so the hashes are PyPI's.
LOCKER := $(VENV)/pip-tools
COMPILE = $(LOCKER)/bin/pip-compile --quiet --generate-hashes --strip-extras \
	--no-emit-index-url --no-emit-find-links --pip-args=--isolated

lock:                     ## after editing requirements*.txt: pin everything again into *.lock
	test -x $(LOCKER)/bin/pip-compile || { $(PYTHON) -m venv $(LOCKER) && \
	  $(LOCKER)/bin/pip install --quiet --isolated pip-tools==7.6.2; }
	$(COMPILE) --output-file requirements.lock requirements.txt
	$(COMPILE) --output-file requirements-dev.lock requirements-dev.txt

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
