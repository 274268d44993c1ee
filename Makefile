# fruitpipe — the two commands of the quick start are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED_BACKBONE := $(abspath ../shared/models/mobilenet_v2_1.0_224_int8)
# Offline machines (CI, this workplace) take the backbones from ../shared (MobileNetV2 and the model
# zoo of fruitpipe.backbone.SPECS); elsewhere MobileNetV2 is downloaded.
ifneq ($(wildcard $(SHARED_BACKBONE)),)
export FRUITPIPE_BACKBONE ?= $(SHARED_BACKBONE)
export FRUITPIPE_MODEL_ZOO ?= $(abspath ../shared/models)
endif
HOST ?= 127.0.0.1
PORT ?= 8000
STORE ?= var

.PHONY: setup run test test-fast synth layer bench report load-test cloud-demo train-default compare notebook clean

SERVE_STAMP := $(VENV)/.serve-installed

# `make run` installs what the local service needs: serving, plus the training job that its retrain
# button runs (TensorFlow); README.md quotes how long it takes (scripts/bench_quickstart.py). `make test` adds the infrastructure and
# test tools (CDK, cfn-lint, moto, Playwright, Locust). pip shows its progress.
$(SERVE_STAMP): pyproject.toml
	@echo "== setting up $(VENV) for the local service: serving + training (pip output follows)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar on --upgrade pip
	$(PY) -m pip install --progress-bar on -e '.[serve,train]'
	@echo "== provisioning the backbone into the package cache (checked against its sha256)"
	$(PY) -m fruitpipe.backbone
	touch $@

$(STAMP): $(SERVE_STAMP)
	@echo "== installing the infrastructure and test extras (CDK, cfn-lint, moto, Playwright, Locust)"
	$(PY) -m pip install --progress-bar on -e '.[serve,train,infra,dev]'
	touch $@

setup: $(STAMP)

run: $(SERVE_STAMP)  ## set up .venv (serving + training) and start the local service on http://127.0.0.1:8000
	$(VENV)/bin/fruitpipe serve --host $(HOST) --port $(PORT) --store $(STORE)

test: $(STAMP)  ## set up .venv and run every test
	bash scripts/ensure_test_tools.sh
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

load-test: $(STAMP)  ## our server vs a reference-style server under locust; writes results/load_test.md
	$(PY) scripts/load_test.py

bench: $(STAMP)  ## speed benchmarks (predict path, cold start, training, Lambda handler) → results/, docs/benchmarks.md
	$(PY) scripts/bench_predict.py
	$(PY) scripts/bench_cold_start.py
	$(PY) scripts/bench_training.py
	$(PY) scripts/bench_lambda.py
	$(PY) scripts/eval_second_look.py
	$(PY) scripts/cost_estimate.py > /dev/null
	$(PY) scripts/report.py --write

report: $(STAMP)  ## print the results tables from results/*.json and refresh docs/benchmarks.md
	$(PY) scripts/report.py --write

train-default: $(STAMP)  ## retrain the shipped model from ../shared/data/fruits
	$(PY) scripts/train_default.py

compare: $(STAMP)  ## train, score and time every model variant on the same splits → results/compare.json, compare.png (≤ 30 min)
	$(VENV)/bin/fruitpipe compare --out results
	$(PY) scripts/report.py --write

notebook: $(STAMP)  ## execute notebooks/fruit_classification.ipynb → results/notebook.html (rendered, with outputs)
	$(VENV)/bin/jupyter nbconvert --to html --execute notebooks/fruit_classification.ipynb --output-dir results --output notebook

clean:
	rm -rf $(VENV) cdk.out layers/build .pytest_cache

ARCH ?= x86_64
layer: $(STAMP)  ## build the Lambda layer and function assets into layers/build (no Docker)
	$(PY) scripts/build_layer.py --arch $(ARCH)

synth: $(STAMP)  ## synthesize the CDK app offline into cdk.out (cdk-nag checks included)
	JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20 CDK_OUTDIR=cdk.out $(PY) infra/app.py
	$(VENV)/bin/cfn-lint --non-zero-exit-code error cdk.out/fruitpipe-*.template.json

cloud-demo: $(STAMP)  ## the whole AWS flow (ingest → retrain → gate → publish → API) against a moto server on 127.0.0.1
	$(PY) scripts/cloud_demo.py --json results/cloud_demo.json
