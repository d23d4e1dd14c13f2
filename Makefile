# Two commands on a fresh machine: `make run` (the proof) and `make test` (the test suite).
# Both set up the virtualenv and the database themselves. With DATABASE_URL unset (in the
# environment and in .env) the database is a private PostgreSQL kept in .pgdata/.
SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
DATABASE := DATABASE_URL="$$(scripts/pg.sh url)" && export DATABASE_URL

.PHONY: run test serve reset chaos bench bench-smoke wrk db db-stop clean

run: $(VENV)/installed
	$(DATABASE) && scripts/with_server.sh $(PYTHON) proof_of_correctness.py

test: $(VENV)/installed
	$(DATABASE) && $(PYTHON) -m pytest

serve: $(VENV)/installed
	$(DATABASE) && $(PYTHON) reset_db.py && $(VENV)/bin/gunicorn -c gunicorn.conf.py

chaos: $(VENV)/installed
	$(DATABASE) && $(PYTHON) chaos.py

bench: $(VENV)/installed wrk
	$(DATABASE) && $(PYTHON) bench/bench.py

# A few seconds of every measurement, so that the benchmark keeps working; no figure is judged.
bench-smoke: $(VENV)/installed wrk
	$(DATABASE) && $(PYTHON) bench/bench.py --seconds 1 --rounds 1 --no-scaling --burst-stock 100 \
		--output bench/results/smoke.json

wrk:
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

reset: $(VENV)/installed
	$(DATABASE) && $(PYTHON) reset_db.py

db: $(VENV)/installed
	scripts/pg.sh start

db-stop:
	scripts/pg.sh stop

$(VENV)/installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

clean: db-stop
	rm -rf $(VENV) .pgdata .pytest_cache .gunicorn.log
