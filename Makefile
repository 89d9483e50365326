# segscore: `make run` serves the shipped models on 127.0.0.1:50051;
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

.PHONY: run test build venv lint models validate bench clean deploy-check

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

build: venv
	$(CARGO) build --release --locked

run: build
	$(BIN) serve --models models --segments segments.toml --addr 127.0.0.1:50051

test: venv lint
	$(VENV)/bin/python -m pytest training/tests -q
	$(CARGO) test --release --locked
	# An unmodified standard client (tritonclient) against the release binary
	# that `cargo test --release` just built.
	SEGSCORE_BIN=$(BIN) $(VENV)/bin/python -m pytest tests/oip -q
	# Last, so the flags in the deployment files are checked against the
	# binary just built.
	$(MAKE) --no-print-directory deploy-check

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings

# The benchmark suite (about a minute; loopback only); rewrites BENCHMARKS.md.
bench: build
	$(BIN) bench --seconds 2

# The Dockerfile and deploy/ manifests, offline (see deploy/README.md); flags
# are checked against $(BIN)'s --help when it exists.
deploy-check: $(DEPLOY_STAMP)
	$(VENV)/bin/python -m pytest deploy -q

validate: build
	$(BIN) models validate models

# Regenerates data, features and every shipped model (same seed, same models).
models: build
	$(VENV)/bin/python training/pipeline.py --customers $(CUSTOMERS) --seed $(SEED) --workdir training/out --models models
	$(BIN) train --train training/out/features_train.csv --valid training/out/features_valid.csv \
		--schema training/features.toml --label churned --name churn --version 1 --models models --force
	$(BIN) train --train training/out/features_train.csv --valid training/out/features_valid.csv \
		--schema training/features.toml --label purchase_30d --name propensity --version 1 --models models --force
	$(BIN) models validate models

clean:
	rm -rf target $(VENV) training/out
