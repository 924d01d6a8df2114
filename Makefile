# featx — `make help` lists every target.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FEATX  := $(BIN)/featx

# Defaults point at the generated demo dataset so `make extract && make classify` work out of the box.
backbone    ?= vgg16
weights     ?= auto
manifest    ?= demo/data/manifest.csv
data        ?= demo/data
features    ?= features
results     ?= results
pooling     ?= avg
classifiers ?= logreg,xgboost,dense
backbones   ?=
cv          ?= 5
engine      ?= local
ray_address ?=

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: help install lint format test test-slow test-all demo data extract classify leaderboard report bench clean

help:  ## list every target with its one-line description
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/featx: setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lint,dicom,ray]'
	@touch $(BIN)/featx

install: $(BIN)/featx  ## create .venv and install featx with its test, lint, dicom and ray extras

lint: install  ## ruff check, ruff format --check and mypy (CI runs this before the tests)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: install  ## run the fast test suite (offline, random weights)
	$(BIN)/pytest -m "not slow" -q

test-slow: install  ## run only the slow tests (full-size backbones, long fits)
	$(BIN)/pytest -m slow -q

test-all: install  ## run every test
	$(BIN)/pytest -q

demo: install  ## offline end-to-end demo: phantom data -> 2 backbones -> 3 classifiers -> leaderboard + report
	$(FEATX) demo

data: install  ## generate the phantom dataset only (demo/data), the default for extract/classify
	$(FEATX) demo --data-only

extract: install  ## stage one: make extract backbone=vgg16 [weights=auto|imagenet|random|PATH manifest=... data=... pooling=avg engine=local|ray ray_address=auto|HOST:PORT]
	@if [ "$(manifest)" = "demo/data/manifest.csv" ] && [ ! -f "$(manifest)" ]; then $(FEATX) demo --data-only; fi
	$(FEATX) extract --backbone $(backbone) --weights $(weights) --manifest $(manifest) --data-root $(data) --out $(features) --pooling $(pooling) --engine $(engine) $(if $(ray_address),--ray-address $(ray_address),)

classify: install  ## stage two: make classify [classifiers=logreg,xgboost,dense backbones=vgg16,resnet50 cv=5 engine=local|ray]
	$(FEATX) classify --features $(features) --out $(results) --classifier $(classifiers) --cv $(cv) $(if $(backbones),--backbone $(backbones),) --engine $(engine) $(if $(ray_address),--ray-address $(ray_address),)

leaderboard: install  ## print the backbone x classifier leaderboard from results/
	$(FEATX) leaderboard --results $(results)

report: install  ## write results/report.html with plots
	$(FEATX) report --results $(results)

bench: install  ## benchmarks: extract (bare forward vs full path, peak RSS) and classify (default grids)
	$(FEATX) bench extract
	$(FEATX) bench classify

clean:  ## remove generated demo data, features and results (keeps .venv)
	rm -rf demo features results
