# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # featx in a notebook
#
# The phantom chest X-ray demo through featx's Python API: stage one (`featx.extract`), stage two
# (`featx.classify`), the leaderboard as a pandas DataFrame, test AUC by backbone, and predictions for
# three new images with a saved model.
#
# This file is a [jupytext](https://jupytext.readthedocs.io) percent notebook: open it in Jupyter with
# jupytext installed (or `jupytext --to ipynb`), or run it as it is with `python examples/featx_in_a_notebook.py`.
# It runs offline in well under a minute: small phantoms, random-init weights, quick grids. For the full
# demo set `BACKBONES = ["mobilenetv3small", "resnet50"]`, `PATIENTS = 120`, `IMAGE_SIZE = 128`,
# `WEIGHTS = "auto"` and `QUICK = False` (minutes; ImageNet weights where Keras has them cached).

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt

import featx
from featx.data.synthetic import generate_phantoms

WORKDIR = Path(os.environ.get("FEATX_EXAMPLE_DIR", "featx-notebook"))
BACKBONES = ["tiny"]  # the raw-pixel floor ("pixels") is added by featx.extract unless pixels=False
CLASSIFIERS = ["logreg", "xgboost"]
PATIENTS, IMAGE_SIZE = 24, 32
WEIGHTS = "random"  # a pipeline check: random-init features say nothing about ImageNet features
QUICK = True

# %% [markdown]
# ## Data: generated phantoms (a manifest CSV and PNG files)

# %%
manifest = generate_phantoms(
    WORKDIR / "data", n_patients=PATIENTS, images_per_patient=(2, 4), image_size=IMAGE_SIZE, seed=0
)
data_root = manifest.parent
print(manifest)

# %% [markdown]
# ## Stage one: every image once through each frozen backbone, cached in HDF5

# %%
features_dir = featx.extract(
    manifest, data_root, BACKBONES, out=WORKDIR / "features", weights=WEIGHTS, image_size=IMAGE_SIZE
)
features = featx.load_features(features_dir / f"{BACKBONES[0]}.h5")
features

# %%
features.to_pandas().head()

# %% [markdown]
# ## Stage two: patient-grouped CV on the cached embeddings, test AUC with CIs

# %%
board = featx.classify(features_dir, out=WORKDIR / "results", classifiers=CLASSIFIERS, quick=QUICK, cv=3)
table = board.to_pandas()
table[["rank", "backbone", "classifier", "test_auc", "test_auc_ci_low", "test_auc_ci_high", "cv_auc_mean"]]

# %% [markdown]
# ## Test AUC by backbone (its best classifier, with the 95% CI)

# %%
best = table.sort_values("test_auc", ascending=False).groupby("backbone", sort=False).head(1)
figure, ax = plt.subplots(figsize=(5, 3))
ax.bar(best["backbone"], best["test_auc"], color="#1f77b4")
ax.errorbar(
    best["backbone"],
    best["test_auc"],
    yerr=[best["test_auc"] - best["test_auc_ci_low"], best["test_auc_ci_high"] - best["test_auc"]],
    fmt="none",
    color="black",
    capsize=4,
)
ax.axhline(0.5, linestyle="--", color="#999999")
ax.set_ylim(0, 1)
ax.set_ylabel("test ROC AUC")
ax.set_title("Best classifier per backbone" + (" (RANDOM-INIT WEIGHTS)" if WEIGHTS == "random" else ""))
figure.savefig(WORKDIR / "test_auc_by_backbone.png", dpi=100, bbox_inches="tight")
figure

# %% [markdown]
# ## The best image model's test predictions, and predictions for three new images
#
# The floors (raw pixels, manifest metadata) may top a random-weights leaderboard; a model that predicts
# from images is the best run outside the "floor" group.

# %%
best_image_run = table[table["group"] != "floor"].iloc[0]["run_id"]
board.test_predictions(best_image_run).head()

# %%
model = featx.load_model(board.bundle(best_image_run))
images = sorted((data_root / "test").rglob("*.png"))[:3]
predictions = model.predict(images)
predictions.to_csv(WORKDIR / "predictions.csv", index=False)
predictions
