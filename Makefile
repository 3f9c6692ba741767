# txstream — `make demo` runs the whole system, `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
READY  := $(VENV)/.installed

.PHONY: demo test install lint format init-db serve bench-ingest bench-api clean

demo: $(READY)            ## emitter + subscriber + web app; embedded Redis/SQLite unless configured
	$(BIN)/python -m txstream.demo

test: $(READY)            ## the whole test suite (integration tests need Redis and MariaDB)
	$(BIN)/pytest

install: $(READY)         ## create .venv and install requirements.txt

lint: $(READY)            ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(READY)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

init-db: $(READY)         ## create the database and tables named by DATABASE_URL
	$(BIN)/flask --app app init-db

serve: $(READY)           ## the web app under gunicorn (WEB_BIND, WEB_WORKERS, WEB_THREADS)
	$(BIN)/python -m gunicorn --config gunicorn.conf.py app:app

bench-ingest: $(READY)    ## ingest tx/s per mode (needs Redis, MariaDB); writes docs/ingest.png
	$(BIN)/pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/ingest.py

bench-api: $(READY)       ## API requests/s and p50/p99 at 10M rows under gunicorn (needs wrk)
	@command -v wrk >/dev/null || { echo "bench-api needs wrk: apt-get install wrk"; exit 1; }
	$(BIN)/python bench/api.py

$(READY): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
