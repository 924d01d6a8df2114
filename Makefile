# featx — `make help` lists every target.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FEATX  := $(BIN)/featx

# Variables (`make help` lists them from the "#:" lines); an empty variable leaves the CLI's default. Nothing but
# `make demo` and `make data` touches the demo dataset: extract needs manifest= and data= (or local.mk), so a
# forgotten manifest= can never write demo rows over a cache of your own images.
# Values you set once: put lines such as `manifest = my.csv` and `data = /path/to/images` in local.mk (git-ignored).
-include local.mk
#: backbone=vgg16           extract: backbone name(s), comma-separated (--backbone)
#: weights=auto             extract: imagenet, random, auto or a weights file (--weights)
#: manifest=CSV             extract: manifest CSV of your images, required (or in local.mk) (--manifest)
#: data=DIR                 extract: folder the manifest paths are relative to, required (or in local.mk) (--data-root)
#: features=features        extract: output folder; classify: the folder of caches it reads (--out / --features)
#: pooling=avg              extract: poolings, comma-separated (--pooling)
#: image_size=N             extract: square input size, default the backbone's native (--image-size)
#: resize_mode=stretch      extract: stretch, pad or crop (--resize-mode)
#: dicom_window=file        extract: DICOM grey levels: file (its window), minmax or percentile (--dicom-window)
#: batch_size=32            extract: images per forward batch (--batch-size)
#: mixed_precision=1        extract: float16 compute on a GPU (--mixed-precision)
#: workers=N                extract: decode threads, default one per core (--workers)
#: limit=N                  extract: only the first N manifest rows, for smoke runs (--limit)
#: force=1                  extract: rebuild a cache whose settings differ; classify: re-fit unchanged runs (--force)
#: no_pixels=1              extract: leave out the raw-pixel floor, the pixels backbone added by default (--no-pixels)
#: seed=0                   extract: seed of random weights; classify: CV and model seed (--seed)
#: results=results          classify, leaderboard, report: the results folder (--out / --results)
#: backbones=a,b            classify: caches to use by file stem, default every cache found (--backbone)
#: classifiers=logreg,...   classify: classifiers, comma-separated (--classifier)
#: poolings=avg,max         classify: poolings, default every pooling cached (--pooling)
#: cv=5                     classify: patient-grouped folds (--cv)
#: n_jobs=N                 classify: cores for the fits, default every usable core (--n-jobs)
#: threshold=youden         classify: youden, sens@0.95, spec@0.90 or f1 (--threshold-rule)
#: val_as_test=1            classify: evaluate val rows with test instead of merging them into train (--val-as-test)
#: quick=1                  classify: a small grid for smoke runs, not for reporting (--quick)
#: subgroups=sex,age_band   classify: metadata columns for subgroup AUCs (--subgroups)
#: age_bands=0,18,40,65     classify: age band edges in years for age_band (--age-bands)
#: subgroup_min=10          classify: positives and negatives a subgroup needs for its AUC (--subgroup-min)
#: train_fraction=0.01,0.1  classify: data-efficiency curve over these shares of training patients (--train-fraction)
#: efficiency_seeds=N       classify: patient subsamples per fraction, default 3 (--efficiency-seeds)
#: no_image_cv=1            classify: skip the patient- vs image-level CV audit (--no-image-cv)
#: image_cv_all=1           classify: that audit for every classifier, not only logreg's cheap fits (--image-cv-all)
#: near_duplicate_threshold=0.99  classify: cosine at which two images are near duplicates (--near-duplicate-threshold)
#: external=NAME=DIR        classify: score every run on another manifest's caches in DIR (--external)
#: external_split=test      classify: the external rows scored, test or all (--external-split)
#: label_map=EXT=INT,...    classify: rename the external set's classes to the model's (--label-map)
#: no_metadata_floor=1      classify: leave out the metadata-only floor (--no-metadata-floor)
#: null_permutations=K      classify: label-permutation null, K refits per run (--null-permutations)
#: mlflow=1                 classify: log each run to MLflow in ./mlruns; or mlflow=URI for another store (--mlflow)
#: engine=ray               extract, classify, predict: run on a Ray cluster instead of this process (--engine)
#: ray_address=auto         extract, classify, predict: the Ray cluster, auto or HOST:PORT (--ray-address)
#: ray_actors=N             extract, predict: Ray actors, default one per GPU, else one per CPU (--ray-actors)
#: ray_cpus_per_actor=N     extract, predict: CPU cores each Ray actor decodes with (--ray-cpus-per-actor)
#: ray_range_rows=N         extract, predict: rows per Ray work item, a multiple of batch_size (--ray-range-rows)
#: ray_shards=1             extract: Ray actors write range shards beside the caches, on shared storage (--ray-shards)
#: model=PATH               predict: results/models/<run>.joblib (--model)
#: images=PATHS             predict: image files, folders or a manifest CSV
#: out=FILE                 predict: CSV to write, default the terminal (--out)
backbone    ?= vgg16
weights     ?= auto
manifest    ?=
data        ?=
features    ?= features
results     ?= results
pooling     ?= avg
classifiers ?= logreg,xgboost,dense
backbones   ?=
poolings    ?=
cv          ?= 5
engine      ?=
ray_address ?=
ray_actors  ?=
ray_cpus_per_actor ?=
ray_range_rows ?=
ray_shards  ?=
n_jobs      ?=
seed        ?=
force       ?=
image_size  ?=
resize_mode ?=
dicom_window ?=
batch_size  ?=
mixed_precision ?=
workers     ?=
limit       ?=
threshold   ?=
val_as_test ?=
quick       ?=
subgroups   ?=
age_bands   ?=
subgroup_min ?=
no_pixels   ?=
train_fraction ?=
efficiency_seeds ?=
no_image_cv ?=
image_cv_all ?=
near_duplicate_threshold ?=
external    ?=
external_split ?=
label_map   ?=
no_metadata_floor ?=
null_permutations ?=
mlflow      ?=
model       ?=
images      ?=
out         ?=

yes = $(filter 1 yes true,$(1))
ENGINE_OPTIONS = $(if $(engine),--engine $(engine)) $(if $(ray_address),--ray-address $(ray_address))
ACTOR_OPTIONS = $(if $(ray_actors),--ray-actors $(ray_actors)) \
	$(if $(ray_cpus_per_actor),--ray-cpus-per-actor $(ray_cpus_per_actor)) \
	$(if $(ray_range_rows),--ray-range-rows $(ray_range_rows))
EXTRACT_OPTIONS = $(strip $(if $(image_size),--image-size $(image_size)) $(if $(resize_mode),--resize-mode $(resize_mode)) \
	$(if $(dicom_window),--dicom-window $(dicom_window)) $(if $(call yes,$(mixed_precision)),--mixed-precision) \
	$(if $(batch_size),--batch-size $(batch_size)) $(if $(workers),--workers $(workers)) $(if $(limit),--limit $(limit)) \
	$(if $(seed),--seed $(seed)) $(if $(call yes,$(force)),--force) $(if $(call yes,$(no_pixels)),--no-pixels) \
	$(ENGINE_OPTIONS) $(ACTOR_OPTIONS) $(if $(call yes,$(ray_shards)),--ray-shards))
PREDICT_OPTIONS = $(strip $(ENGINE_OPTIONS) $(ACTOR_OPTIONS))
CLASSIFY_OPTIONS = $(strip $(if $(backbones),--backbone $(backbones)) $(if $(poolings),--pooling $(poolings)) \
	$(if $(n_jobs),--n-jobs $(n_jobs)) $(if $(seed),--seed $(seed)) $(if $(threshold),--threshold-rule $(threshold)) \
	$(if $(call yes,$(val_as_test)),--val-as-test) $(if $(call yes,$(quick)),--quick) \
	$(if $(subgroups),--subgroups $(subgroups)) $(if $(age_bands),--age-bands $(age_bands)) \
	$(if $(subgroup_min),--subgroup-min $(subgroup_min)) $(if $(train_fraction),--train-fraction $(train_fraction)) \
	$(if $(efficiency_seeds),--efficiency-seeds $(efficiency_seeds)) $(if $(call yes,$(no_image_cv)),--no-image-cv) \
	$(if $(call yes,$(image_cv_all)),--image-cv-all) \
	$(if $(near_duplicate_threshold),--near-duplicate-threshold $(near_duplicate_threshold)) $(if $(call yes,$(force)),--force) $(ENGINE_OPTIONS) \
	$(if $(external),--external $(external)) $(if $(external_split),--external-split $(external_split)) \
	$(if $(label_map),--label-map $(label_map)) $(if $(call yes,$(no_metadata_floor)),--no-metadata-floor) \
	$(if $(null_permutations),--null-permutations $(null_permutations)) \
	$(if $(call yes,$(mlflow)),--mlflow,$(if $(mlflow),--mlflow $(mlflow))))
export TF_CPP_MIN_LOG_LEVEL ?= 2
# featx's error messages name these variables instead of the CLI flags they stand for (featx/config.py reads it).
export FEATX_VIA_MAKE := 1

.PHONY: help install lint format test test-slow test-all demo data extract classify leaderboard report predict bench clean

help:  ## list every target with its one-line description, then the variables
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'
	@echo "Variables (make TARGET name=value ...):"
	@grep -E '^#: ' $(MAKEFILE_LIST) | sed 's/^#: /  /'

$(BIN)/featx: setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lint,dicom,ray,parquet,mlflow,hub,onnx]'
	@touch $(BIN)/featx

install: $(BIN)/featx  ## create .venv and install featx with its test, lint, dicom, ray, parquet, mlflow, hub and onnx extras

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

demo: install  ## offline end-to-end demo: phantom data -> raw pixels + 2 backbones -> 3 classifiers -> leaderboard + report
	$(FEATX) demo

data: install  ## generate the phantom dataset only (demo/data): make extract manifest=demo/data/manifest.csv data=demo/data
	$(FEATX) demo --data-only

extract: install  ## stage one: make extract backbone=vgg16 [weights=... manifest=... data=... pooling=... force=1 engine=ray ray_address=auto ...]
	@missing="$(if $(manifest),,manifest=CSV )$(if $(data),,data=DIR )"; if [ -n "$$missing" ]; then \
	  echo "make extract: pass $${missing}(the manifest of your images and the folder its paths are relative to, or set them once in local.mk); nothing defaults to the demo data: for it run make data, then make extract manifest=demo/data/manifest.csv data=demo/data." >&2; exit 2; fi
	$(FEATX) extract --backbone $(backbone) --weights $(weights) --manifest $(manifest) --data-root $(data) --out $(features) --pooling $(pooling) $(EXTRACT_OPTIONS)

classify: install  ## stage two (unchanged runs reused): make classify [classifiers=... backbones=... cv=5 n_jobs=N force=1 poolings=... quick=1 engine=ray ...]
	$(FEATX) classify --features $(features) --out $(results) --classifier $(classifiers) --cv $(cv) $(CLASSIFY_OPTIONS)

leaderboard: install  ## print the backbone x classifier leaderboard from results/
	$(FEATX) leaderboard --results $(results)

report: install  ## write results/report.html with plots
	$(FEATX) report --results $(results)

predict: install  ## predict new images: make predict model=results/models/<run>.joblib images=DIR [out=predictions.csv]
	@missing="$(if $(model),,model=BUNDLE )$(if $(images),,images=PATHS )"; if [ -n "$$missing" ]; then \
	  echo "make predict: pass $${missing}(a model bundle from results/models/ and image files, folders or a manifest CSV)." >&2; exit 2; fi
	$(FEATX) predict --model $(model) $(images) $(if $(out),--out $(out)) $(if $(batch_size),--batch-size $(batch_size)) $(PREDICT_OPTIONS)

bench: install  ## benchmarks: extract (CNNs and ViTs), classify (default grids), analyses (audits, curve), scale (10^4-10^5 rows), compare (vs training on images)
	$(FEATX) bench extract
	$(FEATX) bench extract --models
	$(FEATX) bench classify
	$(FEATX) bench analyses
	$(FEATX) bench scale --rows 20000,100000 --dim 1024
	$(FEATX) bench compare --data-root ../shared/data/kermany224/train

clean:  ## remove generated demo data, features and results (keeps .venv)
	rm -rf demo features results
