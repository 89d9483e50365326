# segscore: `make run` serves the shipped models on 127.0.0.1:50051
# (`make run ADDR=0.0.0.0:50051` to listen elsewhere);
# `make test` runs every test. Both install what is missing first, from the
# package registries only (PyPI for the venv, crates.io for cargo).

SHELL := /bin/bash
PYTHON ?= python3
CARGO ?= cargo
VENV := .venv
VENV_STAMP := $(VENV)/.installed
REQUIREMENTS := training/requirements.txt
DEPLOY_STAMP := $(VENV)/.deploy-installed
DEPLOY_REQUIREMENTS := deploy/requirements.txt
BIN := target/release/segscore
SEED ?= 20261123
CUSTOMERS ?= 50000
# Where `make run` listens: gRPC, and the REST front end (KServe V2 REST,
# segscore JSON, /openapi.json).
ADDR ?= 127.0.0.1:50051
HTTP_ADDR ?= 127.0.0.1:8080

.PHONY: run test test-stress build venv perf-analyzer chromium lint models validate bench bench-bulk bulk-data clean deploy-check monitoring-check

# The venv carries the pinned onnxruntime wheel, whose libonnxruntime.so the
# server loads (ort load-dynamic), plus the training pipeline's dependencies.
$(VENV_STAMP): $(REQUIREMENTS)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check --quiet -r $(REQUIREMENTS)
	touch $@

venv: $(VENV_STAMP)

# deploy/validate.py's checkers (kubernetes-validate, jsonschema, hadolint...),
# installed into the same venv; reinstalled when either requirements file changes.
$(DEPLOY_STAMP): $(DEPLOY_REQUIREMENTS) $(VENV_STAMP)
	$(VENV)/bin/pip install --disable-pip-version-check --quiet -r $(DEPLOY_REQUIREMENTS)
	touch $@

# Triton's perf_analyzer for tests/oip/test_perf_analyzer.py. tritonclient
# 2.73 (the venv's client) no longer ships the binary and the PyPI
# perf-analyzer project offers only a placeholder here, so it comes from the
# last tritonclient wheel that bundles it, kept apart in its own --target
# directory, with the libcudart.so.12 it is linked against (PyPI's CUDA
# runtime wheel; no GPU is used) and Debian's libb64-0d.
PERF_ANALYZER := $(VENV)/perf-analyzer/bin/perf_analyzer
PERF_ANALYZER_REQUIREMENTS := tests/oip/perf-analyzer-requirements.txt
LIBB64 := /usr/lib/x86_64-linux-gnu/libb64.so.0d
$(LIBB64):
	$(SUDO) apt-get install -y --no-install-recommends libb64-0d \
		|| { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends libb64-0d; }

$(PERF_ANALYZER): $(VENV_STAMP) $(PERF_ANALYZER_REQUIREMENTS) | $(LIBB64)
	rm -rf $(VENV)/perf-analyzer
	$(VENV)/bin/pip install --disable-pip-version-check --quiet --no-deps \
		--target $(VENV)/perf-analyzer -r $(PERF_ANALYZER_REQUIREMENTS)
	touch $@

perf-analyzer: $(PERF_ANALYZER)

# Headless Chromium (Debian's) for tests/api/browser.rs, which loads the
# segments page snippet of docs/api.md against a running segscore.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	$(SUDO) apt-get install -y --no-install-recommends chromium \
		|| { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium; }

chromium: $(CHROMIUM)

build: venv
	$(CARGO) build --release --locked

run: build
	$(BIN) serve --model-repository models --segments segments.toml --addr $(ADDR) --http-addr $(HTTP_ADDR)

test: venv perf-analyzer chromium lint
	$(VENV)/bin/python -m pytest training/tests -q
	$(CARGO) test --release --locked
	# An unmodified standard client (tritonclient) against the release binary
	# that `cargo test --release` just built.
	SEGSCORE_BIN=$(BIN) $(VENV)/bin/python -m pytest tests/oip -q
	# Last, so the flags in the deployment files are checked against the
	# binary just built.
	$(MAKE) --no-print-directory deploy-check

# The Rust suites while a CPU hog keeps every core busy: no test may depend
# on how fast this machine is. Not part of `make test`. stress-ng comes from
# Debian; it is stopped when the tests end, whatever their outcome.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STRESS_NG := /usr/bin/stress-ng
$(STRESS_NG):
	$(SUDO) apt-get install -y --no-install-recommends stress-ng \
		|| { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends stress-ng; }

test-stress: venv $(STRESS_NG)
	$(CARGO) test --release --locked --no-run
	$(STRESS_NG) --cpu $$(nproc) --cpu-method matrixprod --quiet & hog=$$!; \
		trap 'kill $$hog; wait $$hog 2>/dev/null' EXIT; \
		$(CARGO) test --release --locked

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings

# The benchmark suite (about a minute; loopback only); rewrites BENCHMARKS.md.
bench: build
	$(BIN) bench --seconds 2

# A ROWS-row Parquet feature file for bulk benchmarks, written chunk by chunk
# (bounded memory) from the generator's sample_users.csv distribution.
ROWS ?= 10000000
BULK_DATA := target/bulk/customers-$(ROWS).parquet
$(BULK_DATA): training/bulk_data.py $(VENV_STAMP)
	$(VENV)/bin/python training/bulk_data.py --rows $(ROWS) --out $@

bulk-data: $(BULK_DATA)

# The bulk scoring benchmark on that file: in-process ORT, embedded
# `segscore score` Parquet -> Parquet, and remote through one local server;
# adds its section to BENCHMARKS.md.
bench-bulk: build $(BULK_DATA)
	$(BIN) bench --bulk-input $(BULK_DATA)

# The Dockerfile and deploy/ manifests, offline (see deploy/README.md); flags
# are checked against $(BIN)'s --help when it exists.
deploy-check: $(DEPLOY_STAMP) monitoring-check
	$(VENV)/bin/python -m pytest deploy -q

# The Prometheus alert rules: syntax (promtool check rules) and their unit
# tests (promtool test rules). promtool comes from Debian's `prometheus`
# package (installing it starts no daemon in a container).
PROMTOOL := /usr/bin/promtool
$(PROMTOOL):
	$(SUDO) apt-get install -y --no-install-recommends prometheus \
		|| { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends prometheus; }

monitoring-check: $(PROMTOOL)
	$(PROMTOOL) check rules deploy/prometheus/alerts.yml
	$(PROMTOOL) test rules deploy/prometheus/alerts_test.yml

validate: build
	$(BIN) models validate models

# Regenerates data, features and every shipped model (same seed, same models).
models: build
	$(VENV)/bin/python training/pipeline.py synthetic --customers $(CUSTOMERS) --seed $(SEED) --workdir training/out --model-repository models
	# Reference distributions for drift (docs/monitoring.md) of the versions
	# the pipeline wrote; `segscore train` writes its own below.
	$(BIN) models reference --sample training/sample_users.csv models/churn/2 models/propensity/2 models/ltv/1
	$(BIN) train --train training/out/features_train.csv --valid training/out/features_valid.csv \
		--schema training/features.toml --label churned --name churn --version 1 --model-repository models --force
	$(BIN) train --train training/out/features_train.csv --valid training/out/features_valid.csv \
		--schema training/features.toml --label purchase_30d --name propensity --version 1 --model-repository models --force
	# Behavioural clusters: K-Means on the standardised RFM and engagement features.
	$(BIN) train --task clustering --clusters 5 --train training/out/features_train.csv \
		--valid training/out/features_valid.csv --schema training/features.toml \
		--features recency_days,frequency,monetary_mean,purchases_90d,sessions_7d,cart_adds_7d,checkout_visits_7d,email_engagement \
		--name clusters --version 1 --model-repository models --force
	$(BIN) models validate models

clean:
	rm -rf target $(VENV) training/out
