# Build Studio operator — developer entry points. Every target installs what it needs first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OPENCODE_VERSION := $(shell sed -n 's/^OPENCODE_VERSION = "\(.*\)"/\1/p' operator/buildstudio/pins.py)
OPENCODE := .tools/opencode/node_modules/.bin/opencode
export OPENCODE_BIN := $(abspath $(OPENCODE))
export PATH := $(abspath .tools/bin):$(abspath $(BIN)):$(PATH)

.PHONY: setup demo test lint crds e2e bench clean images images-full

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(OPENCODE): operator/buildstudio/pins.py
	mkdir -p .tools/opencode
	cd .tools/opencode && npm install --no-audit --no-fund --loglevel=error opencode-ai@$(OPENCODE_VERSION)
	test -x $(OPENCODE) && $(OPENCODE) --version
	touch $@

.tools/bin/kubectl:
	if [ -f .ci/install-kube-tools.sh ]; then bash .ci/install-kube-tools.sh; else mkdir -p .tools/bin; fi

setup: $(BIN)/.installed $(OPENCODE) .tools/bin/kubectl

## The embedded default: real opencode, real tools, real diff; the model's replies are a recorded replay.
demo: $(BIN)/.installed $(OPENCODE)
	$(BIN)/buildstudio run --local --model-server replay:examples/replays/add-subtract.json

test: setup
	$(BIN)/pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check operator tests $(wildcard bench hack)
	$(BIN)/mypy operator/buildstudio
	$(BIN)/buildstudio crds --check
	$(BIN)/lint-imports --no-cache

crds: $(BIN)/.installed
	$(BIN)/buildstudio crds

## End to end on a real cluster with kind (needs Docker); skipped with a reason elsewhere.
e2e: setup
	@if ! command -v kind >/dev/null || ! docker info >/dev/null 2>&1; then \
	  echo "e2e skipped: needs kind and a running Docker engine (none here)"; exit 0; fi; \
	bash hack/e2e-kind.sh

controlplane control-plane: ; bash hack/build-control-plane.sh  # etcd + kube-apiserver + kube-controller-manager, cached by version

## Both images with buildah (no Docker engine, no registry): OCI archives in .tools/images/; bases cached in ~/.cache.
images: ; bash hack/build-images.sh
## …and the full sandbox image (opencode, claude, codex, grok): .tools/images/buildstudio-sandbox-full.oci.tar.
images-full: ; BUILDSTUDIO_FULL_IMAGE=1 bash hack/build-images.sh

## Every bench once, with the arguments whose figures bench/README.md quotes (about 30 min on 2 cores).
BENCH = nice $(BIN)/python
bench: setup
	set -e; for b in \
	  "relay.py" "preflight.py" "parser.py --sizes 1MB,100MB" "sandbox_start.py" "runner_overhead.py" \
	  "emulator.py" "prepod.py" "reconcile.py --rounds 2 --queued 400" "burst.py --dispatches 200 --repeats 3" \
	  "kopf_floor.py --objects 200 --repeats 2" "operator_scale.py --running 50 --repeats 2" \
	  "operator_scale.py --running 200 --queued 50 --repeats 2" \
	  "operator_scale.py --running 500 --queued 50 --repeats 1 --timeout 300"; do \
	  echo "== bench/$$b"; $(BENCH) bench/$$b; done

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
