# The README's two commands: `make stream` and `make test`. Everything else is a building block.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

.PHONY: install up down status stream cluster-up cluster-down stream-cluster serve traffic test test-unit lint format clean-state bench optimize backfill reference training-set train evaluate promote models prometheus report quality-report notebooks e2e

install: $(VENV)/.installed  ## create the venv and install the project and its dev extras; apt: Java, Redis, PostgreSQL, Chromium, Prometheus

# apt-get install, refreshing the package lists first when they are missing or stale (a fresh machine has none)
APT_INSTALL = apt_install() { apt-get install -y -q "$$@" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "$$@" >/dev/null; }; }; apt_install

$(VENV)/.installed: pyproject.toml jvm/spark/pom.xml jvm/kafka/pom.xml
	@command -v java >/dev/null || { echo "installing Java 17 (apt)"; $(APT_INSTALL) openjdk-17-jdk-headless; }
	@command -v mvn >/dev/null || { echo "installing Maven (apt)"; $(APT_INSTALL) maven; }
	@command -v redis-server >/dev/null || { echo "installing redis-server (apt)"; $(APT_INSTALL) redis-server; }
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { echo "installing postgresql (apt), MLflow's backend store"; $(APT_INSTALL) postgresql; }
	@command -v chromedriver >/dev/null || { echo "installing chromium and chromium-driver (apt), for the console's browser test"; $(APT_INSTALL) chromium chromium-driver; }
	@command -v prometheus >/dev/null || { echo "installing prometheus (apt)"; $(APT_INSTALL) prometheus; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@echo "fetching the JVM parts from Maven Central (jvm/*/pom.xml): Spark's Delta, Kafka and S3A jars; the Kafka broker"
	@for part in spark kafka; do rm -rf .jars/$$part; \
		mvn -B -q -f jvm/$$part/pom.xml dependency:copy-dependencies -DoutputDirectory=$(abspath .jars)/$$part \
			-DincludeScope=runtime || exit 1; done
	@touch $@

up: install  ## start the local stack (event log, online Redis, PostgreSQL, S3, MLflow) and create the topics
	$(PY) -m tools.stack up

down:  ## stop the local stack
	$(PY) -m tools.stack down

status:  ## health of every service and the size of every topic
	$(PY) -m tools.stack status

stream: up  ## synthetic traffic + the streaming pipeline, until Ctrl-C
	$(PY) -m lakehouse.pipeline

cluster-up: up  ## a Spark standalone master and two workers on loopback, from the PySpark install (docs/local-stack.md)
	$(PY) -m tools.stack cluster-up

cluster-down:  ## stop the Spark standalone cluster
	$(PY) -m tools.stack cluster-down

stream-cluster: cluster-up  ## `make stream` with the pipeline submitted to the standalone cluster (checkpoints on S3)
	$(PY) -m tools.stack cluster-run $(PY) -m lakehouse.pipeline

traffic: up  ## only the synthetic traffic, until Ctrl-C
	$(PY) -m tools.traffic generate --with-market

optimize: up  ## compact small files, VACUUM past the retention window, checkpoint the log (every table)
	$(PY) -m lakehouse.maintenance all

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install lint  ## the whole suite against the real services (the test profile's own stack)
	LAKEHOUSE_PROFILE=test $(PY) -m pytest -ra --durations=15 $(PYTEST_ARGS)

test-unit: install  ## only the fast tests that need no service
	LAKEHOUSE_PROFILE=test $(PY) -m pytest -ra -m "not stack" $(PYTEST_ARGS)

backfill: up  ## re-run silver and gold from bronze for event dates FROM..TO (e.g. make backfill FROM=2026-03-01 TO=2026-03-07)
	@test -n "$(FROM)" -a -n "$(TO)" || { echo "usage: make backfill FROM=YYYY-MM-DD TO=YYYY-MM-DD"; exit 2; }
	$(PY) -m gold.backfill --from $(FROM) --to $(TO)

training-set: up  ## point-in-time training set for event dates FROM..TO (labels known by TO + 1 day + LABEL_DELAY)
	@test -n "$(FROM)" -a -n "$(TO)" || { echo "usage: make training-set FROM=YYYY-MM-DD TO=YYYY-MM-DD [LABEL_DELAY=7d]"; exit 2; }
	$(PY) -m features build-training-set --start $(FROM) --end $(TO) --label-delay $(or $(LABEL_DELAY),7d)

train: up  ## fit XGBoost + Isolation Forest on the newest days (or FROM..TO), evaluate on a later period, register in MLflow
	$(PY) -m training train $(if $(FROM),--start $(FROM) --end $(TO)) $(TRAIN_ARGS)

evaluate: up  ## re-evaluate a registered model on a period: make evaluate MODEL=fraud-xgboost@champion FROM=... TO=...
	@test -n "$(MODEL)" -a -n "$(FROM)" -a -n "$(TO)" || { echo "usage: make evaluate MODEL=NAME@ALIAS|NAME/VERSION FROM=YYYY-MM-DD TO=YYYY-MM-DD"; exit 2; }
	$(PY) -m training evaluate --model $(MODEL) --start $(FROM) --end $(TO)

promote: up  ## point a model's champion alias at its challenger (or VERSION): make promote MODEL=fraud-xgboost
	@test -n "$(MODEL)" || { echo "usage: make promote MODEL=NAME [VERSION=N]"; exit 2; }
	$(PY) -m training promote --model $(MODEL) $(if $(VERSION),--version $(VERSION))

models: up  ## registered model versions and their aliases
	$(PY) -m training models

notebooks: up  ## execute notebooks/*.ipynb in place against the stack (LAKEHOUSE_PROFILE, LAKEHOUSE__* select the lake)
	$(PY) -m ipykernel install --sys-prefix --name fraud-lakehouse --display-name "Python 3 (fraud-lakehouse)" >/dev/null
	cd notebooks && $(abspath $(VENV))/bin/jupyter-execute --inplace --timeout=600 --kernel_name=fraud-lakehouse \
		01_gold_tables.ipynb 02_time_travel_audit.ipynb 03_train_and_compare.ipynb

report: up  ## model and data monitoring report of event dates FROM..TO (default: the newest days of gold.decisions), HTML + PNG
	$(PY) -m monitoring report $(if $(FROM),--from $(FROM)) $(if $(TO),--to $(TO)) $(if $(OUT),--out $(OUT)) $(REPORT_ARGS)

quality-report: up  ## GX suites on the newest DAYS (default 7) of silver.transactions and the gold daily tables; Data Docs (HTML)
	$(PY) -m gold.quality_report report $(if $(DAYS),--days $(DAYS))

reference: up  ## load conf/reference/*.csv into the silver reference tables (upsert)
	$(PY) -m silver.reference load

clean-state: down  ## delete all local data (tables, checkpoints, event log, MLflow artifacts)
	rm -rf .state

e2e: up  ## the end-to-end acceptance run: traffic, crashes, outage, training, scoring, invariants (E2E_ARGS=--help)
	$(PY) -m tools.e2e $(E2E_ARGS)

bench: up  ## throughput, latency and memory figures, printed and written to bench/results/
	@command -v wrk >/dev/null || { echo "installing wrk (apt)"; apt-get install -y -q wrk >/dev/null; }
	$(PY) -m bench.run

prometheus: install  ## Prometheus on metrics.prometheus_port scraping `make stream` and `make serve` (docs/operations.md)
	$(PY) -m lakehouse.observability prometheus

serve: up  ## the API (FastAPI under uvicorn) on api.host:api.port; OpenAPI docs at /docs
	$(PY) -m serving
