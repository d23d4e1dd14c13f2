# Two commands on a fresh machine: `make run` (the proof) and `make test` (the test suite).
# Both set up the virtualenv and the database themselves. With DATABASE_URL unset (in the
# environment and in .env) the database is a private PostgreSQL kept in .pgdata/.
SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
DATABASE := DATABASE_URL="$$(deploy/pg.sh url)" && export DATABASE_URL
# The tests read neither .env nor a DATABASE_URL written only there.
TEST_DATABASE := DATABASE_URL="$$(deploy/pg.sh test-url)" && export DATABASE_URL FLASK_SKIP_DOTENV=1
CHECK_SETTINGS := $(PYTHON) -m flashsale.settings
UPGRADE_SCHEMA := $(VENV)/bin/flask --app app db upgrade

.PHONY: run test serve reset chaos bench bench-full bench-smoke profile wrk strace nginx browser db db-stop clean \
	cluster-packages cluster-up cluster-down cluster-status cluster-chaos cluster-test cluster-diagram

# The proof runs in verified mode: a fresh HS256 secret for gunicorn and for the proof's tokens,
# and a fresh Stripe webhook signing secret, with which the proof pays a held sale as Stripe would.
FRESH_SECRET := export AUTH_JWT_SECRET="$$($(PYTHON) -c 'import secrets; print(secrets.token_hex(32))')" \
	AUTH_JWT_PUBLIC_KEY= AUTH_JWT_ALGORITHMS=HS256 \
	STRIPE_WEBHOOK_SECRET="whsec_$$($(PYTHON) -c 'import secrets; print(secrets.token_hex(24))')"

# PROOF_ARGS="--hold-seconds 3 --confirm-ratio 0.6" proves a sale that takes payment.
run: $(VENV)/installed
	$(DATABASE) && $(FRESH_SECRET) && $(CHECK_SETTINGS) && $(UPGRADE_SCHEMA) && \
		$(PYTHON) -m deploy.local_server $(PYTHON) proof_of_correctness.py $(PROOF_ARGS)

test: $(VENV)/installed nginx browser
	$(TEST_DATABASE) && $(PYTHON) -m pytest

# nginx on API_URL in front of gunicorn on a unix socket, both in the foreground; Ctrl-C stops both.
# A log line per request unless ACCESS_LOG says otherwise. Keeps the sales the database holds:
# `make reset` for a fresh item 1.
serve: $(VENV)/installed nginx
	$(DATABASE) && export ACCESS_LOG="$${ACCESS_LOG:-1}" && $(CHECK_SETTINGS) && $(UPGRADE_SCHEMA) && \
		$(PYTHON) -m deploy.nginx serve

# MODES="holds kill-worker" runs some only.
chaos: $(VENV)/installed
	$(DATABASE) && $(CHECK_SETTINGS) && $(UPGRADE_SCHEMA) && $(PYTHON) -m verify.chaos $(MODES)

# The headline table in about 8 minutes: ceilings, purchases, sold-out answers, the burst and the
# payment window's row. bench-full adds the other feature rows and the scaling runs (27 minutes).
bench: $(VENV)/installed wrk nginx
	$(DATABASE) && $(CHECK_SETTINGS) && $(UPGRADE_SCHEMA) && $(PYTHON) -m bench.bench

bench-full: $(VENV)/installed wrk nginx
	$(DATABASE) && $(CHECK_SETTINGS) && $(UPGRADE_SCHEMA) && $(PYTHON) -m bench.bench --full

# A few seconds of every measurement, so that the benchmark keeps working; no figure is judged.
bench-smoke: $(VENV)/installed wrk nginx
	$(DATABASE) && $(CHECK_SETTINGS) && $(UPGRADE_SCHEMA) && $(PYTHON) -m bench.bench --smoke

# Where a worker's CPU goes per answer: the ceiling, sold-out answers, purchases (bench/cpu_profile.py,
# py-spy from requirements-dev.txt); about 2 minutes. `bench/ab.py` compares two revisions.
profile: $(VENV)/installed wrk strace
	$(DATABASE) && $(CHECK_SETTINGS) && $(UPGRADE_SCHEMA) && $(PYTHON) -m bench.cpu_profile

wrk:
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

strace:
	@command -v strace >/dev/null || { apt-get update -qq && apt-get install -y -qq strace; }

# Debian puts nginx in /usr/sbin, which a user's PATH may lack.
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { apt-get update -qq && apt-get install -y -qq nginx; }

# Headless Chromium and its driver, for the status page's test (tests/test_status_page.py).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }

reset: $(VENV)/installed
	$(DATABASE) && $(CHECK_SETTINGS) && $(PYTHON) reset_db.py --yes

db: $(VENV)/installed
	deploy/pg.sh start

db-stop:
	deploy/pg.sh stop

$(VENV)/installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Everything the targets above create: the virtualenv, the private database (and its /tmp
# fallback folder), logs, caches and benchmark results.
clean: db-stop
	if [ -x $(PYTHON) ]; then $(CLUSTER) down; fi
	rm -rf .cluster
	rm -rf $(VENV) .pgdata .pgdata.log "$$(deploy/pg.sh data-dir)" "$$(deploy/pg.sh data-dir).log" \
		.pytest_cache .hypothesis bench/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# A local cluster: pg_auto_failover monitor, primary and synchronous standby, two app hosts,
# nginx in front (deploy/cluster.py; docs/cluster.md). Installs the Debian packages if missing.
CLUSTER := $(PYTHON) -m deploy.cluster

cluster-packages: nginx
	@command -v pg_autoctl >/dev/null || { apt-get update -qq && apt-get install -y -qq postgresql-15-auto-failover pg-auto-failover-cli; }

cluster-up: $(VENV)/installed cluster-packages
	$(CLUSTER) up

cluster-down: $(VENV)/installed
	$(CLUSTER) down

cluster-status: $(VENV)/installed
	$(CLUSTER) status

# Faults under a steady sale through nginx, then the proof's check (verify/cluster_chaos.py);
# MODES="kill-primary switchover" runs some only. Brings a cluster up (and down) if none runs.
cluster-chaos: $(VENV)/installed cluster-packages
	$(PYTHON) -m verify.cluster_chaos $(MODES)

# The cluster's tests (tests/test_cluster.py): up, a burst with the primary killed, down.
cluster-test: $(VENV)/installed cluster-packages
	$(TEST_DATABASE) && $(PYTHON) -m pytest -m cluster tests/test_cluster.py

# docs/topology.svg from its text source, deploy/topology.dot (Graphviz).
cluster-diagram:
	@command -v dot >/dev/null || { apt-get update -qq && apt-get install -y -qq graphviz; }
	dot -Tsvg deploy/topology.dot -o docs/topology.svg
